//! CH-benCHmark's analytical queries against a running detflow TPC-C cluster, timed one
//! after another: either each query a number of times, or back to back for a duration
//! (the analytical stream of an HTAP run, beside `detflow bench tpcc --connect`).

// Timing a benchmark needs the wall clock, which the determinism lints ban elsewhere.
#![allow(clippy::disallowed_methods)]

use anyhow::{Context, Result, bail};
use clap::Parser;
use detflow_client::{At, Client, Tls};
use detflow_query::Sql;
use detflow_query::ch::{QUERIES, Query};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(
    name = "ch-queries",
    about = "Time CH-benCHmark's analytical queries on a detflow TPC-C cluster"
)]
struct Args {
    /// Gateway addresses, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        required_unless_present = "print_postgres"
    )]
    connect: Vec<SocketAddr>,
    /// The folder holding ca.pem, client.pem and client.key.
    #[arg(long, default_value = "certs")]
    certs: PathBuf,
    /// The queries, comma-separated (default: all of Q1, Q3, Q4, Q6, Q12).
    #[arg(long, value_delimiter = ',')]
    queries: Vec<String>,
    /// Runs of each query, one after another (ignored with --duration).
    #[arg(long, default_value_t = 3)]
    runs: u32,
    /// Run the queries in turn, back to back, for this long (e.g. 60s) instead.
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Print one line of JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Only print the PostgreSQL text of the queries, one per line after its name and a
    /// tab (for `benches/peer/htap.sh`), and exit.
    #[arg(long)]
    print_postgres: bool,
}

/// One query's timings.
struct Timings {
    query: &'static Query,
    seconds: Vec<f64>,
    rows: usize,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let queries: Vec<&'static Query> = if args.queries.is_empty() {
        QUERIES.iter().collect()
    } else {
        let mut picked = Vec::new();
        for name in &args.queries {
            match QUERIES.iter().find(|q| q.name.eq_ignore_ascii_case(name)) {
                Some(q) => picked.push(q),
                None => {
                    let known: Vec<&str> = QUERIES.iter().map(|q| q.name).collect();
                    bail!("unknown query {name:?}; known: {}", known.join(", "));
                }
            }
        }
        picked
    };
    if args.print_postgres {
        for q in &queries {
            let one_line: Vec<&str> = q.postgres.split_whitespace().collect();
            println!("{}\t{}", q.name, one_line.join(" "));
        }
        return Ok(());
    }
    let runtime = tokio::runtime::Runtime::new().context("start the runtime")?;
    runtime.block_on(run(args, queries))
}

async fn run(args: Args, queries: Vec<&'static Query>) -> Result<()> {
    let client = Client::connect(args.connect.clone(), Tls::from_dir(&args.certs, "client")?)
        .await
        .context("connect")?;
    let client = Arc::new(client);
    let sql = Sql::connect(client.clone()).await?;
    let mut timings: Vec<Timings> = queries
        .iter()
        .map(|&query| Timings {
            query,
            seconds: Vec::new(),
            rows: 0,
        })
        .collect();
    let started = Instant::now();
    let mut turn = 0usize;
    loop {
        match args.duration {
            Some(d) if started.elapsed() >= d => break,
            None if turn >= timings.len() * args.runs as usize => break,
            _ => {}
        }
        // With runs: each query's runs together; with a duration: the queries in turn.
        let i = match args.duration {
            Some(_) => turn % timings.len(),
            None => turn / args.runs as usize,
        };
        let t = &mut timings[i];
        let began = Instant::now();
        let answer = sql
            .query(t.query.detflow, At::Latest)
            .await
            .with_context(|| format!("{} failed", t.query.name))?;
        let took = began.elapsed().as_secs_f64();
        t.seconds.push(took);
        t.rows = answer.rows();
        if !args.json {
            eprintln!(
                "{}: {:.3} s, {} rows at epoch {}",
                t.query.name, took, t.rows, answer.epoch.0
            );
        }
        turn += 1;
    }
    client.close();
    let summary: Vec<serde_json::Value> = timings
        .iter_mut()
        .map(|t| {
            t.seconds.sort_by(f64::total_cmp);
            let n = t.seconds.len();
            let pick = |q: f64| {
                t.seconds
                    .get(((n as f64 - 1.0) * q).round() as usize)
                    .copied()
            };
            serde_json::json!({
                "query": t.query.name,
                "runs": n,
                "rows": t.rows,
                "min_s": pick(0.0),
                "p50_s": pick(0.5),
                "max_s": pick(1.0),
            })
        })
        .collect();
    if args.json {
        println!("{}", serde_json::json!({ "queries": summary }));
        return Ok(());
    }
    println!("| query | runs | rows | min s | p50 s | max s |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    for s in &summary {
        let f = |k: &str| s[k].as_f64().map_or("n/a".into(), |v| format!("{v:.3}"));
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            s["query"].as_str().unwrap_or_default(),
            s["runs"],
            s["rows"],
            f("min_s"),
            f("p50_s"),
            f("max_s")
        );
    }
    Ok(())
}
