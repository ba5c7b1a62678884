//! `detflow sql`: one SQL query over the cluster's tables, at one consistent epoch, or
//! over a state `detflow replay` rebuilt.

use crate::builder::NodeBuilder;
use crate::cli::SqlArgs;
use crate::config::Config;
use crate::storage::FjallStore;
use anyhow::{Context, Result, bail};
use detflow_client::{At, Client, Tls};
use detflow_executor::Store;
use detflow_protocol::Epoch;
use detflow_query::{QueryError, Sql};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

/// The partition stores `detflow replay` wrote in `dir`, read into memory, with the tables
/// of the workload `config` names.
fn replayed(dir: &Path, config: &Path, builder: &NodeBuilder) -> Result<Sql> {
    let config = Config::load(config).with_context(|| format!("reading {}", config.display()))?;
    let tables = builder.registry(&config)?.tables();
    let mut partitions = Vec::new();
    let mut epoch = None;
    for p in 0..config.partitions() {
        let path = dir.join(format!("partition-{p}"));
        if !path.is_dir() {
            bail!(
                "{} holds no partition {p} ({} has {} partitions): point --data at a \
                 directory `detflow replay --out` wrote",
                dir.display(),
                config.id,
                config.partitions()
            );
        }
        let store = FjallStore::open(&path)
            .with_context(|| format!("opening {} (is a node using it?)", path.display()))?;
        let applied = store.applied_epoch();
        if epoch.is_some_and(|e| e != applied) {
            bail!(
                "{} holds the state after epoch {applied}, the other partitions after epoch {}",
                path.display(),
                epoch.unwrap_or(applied)
            );
        }
        epoch = Some(applied);
        let rows: BTreeMap<_, _> = store.user_rows()?.into_iter().collect();
        partitions.push(rows);
    }
    Ok(Sql::over_rows(
        tables,
        epoch.unwrap_or(Epoch(0)),
        partitions,
    ))
}

/// Runs the query and prints its rows; `Ok(false)` (and the reason on stderr) when the
/// query fails.
pub(crate) async fn run(args: &SqlArgs, builder: &NodeBuilder) -> Result<bool> {
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
    let at = args.at.map_or(At::Latest, |e| At::Epoch(Epoch(e)));
    // The time the query took is for the person who ran it.
    #[allow(clippy::disallowed_methods)]
    let started = Instant::now();
    let result = match (&args.data, &args.config) {
        (Some(dir), Some(config)) => {
            let sql = replayed(dir, config, builder)?;
            let mut out = std::io::stdout().lock();
            sql.write(&query, at, args.format, &mut out).await
        }
        _ => {
            let client =
                Client::connect(args.connect.clone(), Tls::from_dir(&args.certs, "client")?)
                    .await?;
            let client = Arc::new(client);
            let result = async {
                let sql = Sql::connect(client.clone()).await?;
                let mut out = std::io::stdout().lock();
                sql.write(&query, at, args.format, &mut out).await
            }
            .await;
            client.close();
            result
        }
    };
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
