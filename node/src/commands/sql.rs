//! `detflow sql`: one SQL query over the cluster's tables, at one consistent epoch.

use crate::cli::SqlArgs;
use anyhow::{Context, Result};
use detflow_client::{At, Client, Tls};
use detflow_protocol::Epoch;
use detflow_query::{QueryError, Sql};
use std::io::Read;
use std::sync::Arc;
use std::time::Instant;

/// Runs the query and prints its rows; `Ok(false)` (and the reason on stderr) when the
/// query fails.
pub(crate) async fn run(args: &SqlArgs) -> Result<bool> {
    let query = match args.query.as_str() {
        "-" => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("reading the query from standard input")?;
            text
        }
        text => text.to_owned(),
    };
    let client = Client::connect(
        args.connect.connect.clone(),
        Tls::from_dir(&args.connect.certs, "client")?,
    )
    .await?;
    let client = Arc::new(client);
    let at = args.at.map_or(At::Latest, |e| At::Epoch(Epoch(e)));
    // The time the query took is for the person who ran it.
    #[allow(clippy::disallowed_methods)]
    let started = Instant::now();
    let result = async {
        let sql = Sql::connect(client.clone()).await?;
        let mut out = std::io::stdout().lock();
        sql.write(&query, at, args.format, &mut out).await
    }
    .await;
    client.close();
    match result {
        Ok((epoch, rows)) => {
            eprintln!(
                "{rows} row{} at epoch {} in {:.3} s",
                if rows == 1 { "" } else { "s" },
                epoch.0,
                started.elapsed().as_secs_f64()
            );
            Ok(true)
        }
        Err(QueryError::Plan(e)) => {
            eprintln!("detflow: the query is not valid here: {e}");
            Ok(false)
        }
        Err(e) => {
            eprintln!("detflow: {e}");
            Ok(false)
        }
    }
}
