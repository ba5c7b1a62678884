//! The serial bound of TPC-C: the same transactions the cluster runs, executed one by one in
//! one thread on an in-memory map, with no sequencing, no network and no durability — what
//! one core can do with this work, the yardstick for `detflow bench tpcc` (issue 5).
//!
//! Sessions are simulated exactly as the load driver runs them: each logical transaction is
//! its first call plus its follow-ups (a by-last-name Payment or Order-Status is its
//! reconnaissance read and then the call), and throughput counts logical transactions.

// Timing a benchmark needs the wall clock, which the determinism lints ban elsewhere.
#![allow(clippy::disallowed_methods)]

use anyhow::{Result, bail};
use clap::Parser;
use detflow_executor::Registry;
use detflow_executor::serial::SerialExecutor;
use detflow_protocol::{ClientId, DetRng, NodeId, Outcome, RequestSeq, Transaction};
use detflow_workloads::tpcc::{Mix, Shape, Tpcc, TpccConfig};
use detflow_workloads::{Answer, Request, Workload};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(
    name = "tpcc-serial",
    about = "TPC-C executed one transaction at a time on one core, in memory: the serial bound"
)]
struct Args {
    /// Warehouses (full population each unless --scale-down).
    #[arg(long, default_value_t = 8)]
    warehouses: u32,
    /// The mix: standard (45/43/4/4/4) or new-order-payment (50/50).
    #[arg(long, default_value = "standard")]
    mix: String,
    /// Divide items, customers and orders by this factor.
    #[arg(long, default_value_t = 1)]
    scale_down: u32,
    /// Measure for this many seconds (after one second of warm-up).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Generator seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let Some(mix) = Mix::parse(&args.mix) else {
        bail!(
            "unknown mix {:?}: use standard or new-order-payment",
            args.mix
        );
    };
    if args.warehouses == 0 {
        bail!("at least one warehouse");
    }
    let mut tpcc = Tpcc::new(TpccConfig {
        warehouses: args.warehouses,
        partitions: 1,
        shape: Shape::scaled_down(args.scale_down),
        mix,
    });
    let mut registry = Registry::new();
    tpcc.register(&mut registry)?;

    let began = Instant::now();
    eprintln!("loading {} warehouses…", args.warehouses);
    let state: BTreeMap<_, _> = tpcc.load().into_iter().collect();
    let rows = state.len();
    eprintln!(
        "loaded {rows} rows in {:.1} s",
        began.elapsed().as_secs_f64()
    );
    let mut serial = SerialExecutor::new(&registry, state);

    let mut rng = DetRng::new(args.seed);
    let mut seq = 0u64;
    let mut by_type: BTreeMap<&'static str, (u64, u64)> = BTreeMap::new();
    let warm_up = Duration::from_secs(1);
    let measure = Duration::from_secs(args.seconds.max(1));
    let start = Instant::now();
    let mut measured_from = None;
    let mut done = 0u64;
    let mut calls = 0u64;
    loop {
        let now = start.elapsed();
        if measured_from.is_none() && now >= warm_up {
            measured_from = Some((Instant::now(), done, calls));
            by_type.clear();
        }
        if now >= warm_up + measure {
            break;
        }
        // Check the clock once per 64 transactions: it is not free.
        for _ in 0..64 {
            let mut request = tpcc.next_call(&mut rng);
            loop {
                seq += 1;
                calls += 1;
                let outcome = execute(&registry, &mut serial, seq, &request)?;
                let answer = match &outcome {
                    Outcome::Committed(out) => Answer::Committed(out),
                    Outcome::Aborted(reason) => Answer::Aborted(reason),
                };
                match tpcc.follow_up(&request, answer) {
                    Some(next) => request = next,
                    None => {
                        let entry = by_type.entry(request.procedure).or_default();
                        match outcome {
                            Outcome::Committed(_) => entry.0 += 1,
                            Outcome::Aborted(_) => entry.1 += 1,
                        }
                        break;
                    }
                }
            }
            done += 1;
        }
    }
    let (from, done_before, calls_before) = measured_from.unwrap_or((start, 0, 0));
    let seconds = from.elapsed().as_secs_f64();
    let txns = done - done_before;
    let throughput = txns as f64 / seconds;
    let new_orders = by_type.get("tpcc.new_order").map_or(0, |c| c.0);
    let tpmc = new_orders as f64 * 60.0 / seconds;

    let consistency = {
        let began = Instant::now();
        let result = tpcc.check(serial.state(), &[]);
        eprintln!(
            "consistency checked in {:.1} s",
            began.elapsed().as_secs_f64()
        );
        result
    };
    if args.json {
        let types: BTreeMap<&str, serde_json::Value> = by_type
            .iter()
            .map(|(name, (c, a))| (*name, serde_json::json!({"committed": c, "aborted": a})))
            .collect();
        let report = serde_json::json!({
            "warehouses": args.warehouses,
            "mix": mix.name(),
            "scale_down": args.scale_down,
            "seconds": seconds,
            "throughput": throughput,
            "tpmc": tpmc,
            "calls_per_second": (calls - calls_before) as f64 / seconds,
            "types": types,
            "consistency": match &consistency {
                Ok(()) => "ok".to_owned(),
                Err(v) => v.to_string(),
            },
        });
        println!("{report}");
    } else {
        println!(
            "serial bound, {} warehouses, {} mix: {throughput:.0} txn/s on one core ({tpmc:.0} tpmC), {:.0} calls/s",
            args.warehouses,
            mix.name(),
            (calls - calls_before) as f64 / seconds
        );
        for (name, (c, a)) in &by_type {
            println!("  {name:<20} committed {c:>9}  aborted {a:>6}");
        }
        match &consistency {
            Ok(()) => println!("consistency conditions hold"),
            Err(v) => println!("CONSISTENCY BROKEN: {v}"),
        }
    }
    if consistency.is_err() {
        bail!("consistency conditions broken");
    }
    Ok(())
}

fn execute(
    registry: &Registry,
    serial: &mut SerialExecutor<'_>,
    seq: u64,
    request: &Request,
) -> Result<Outcome> {
    let footprint = registry
        .footprint(request.procedure, &request.args)
        .map_err(|e| anyhow::anyhow!("generator produced a bad call: {e}"))?;
    let txn = Transaction {
        client: ClientId(0),
        seq: RequestSeq(seq),
        gateway: NodeId(0),
        procedure: request.procedure.to_owned(),
        args: request.args.clone(),
        footprint,
    };
    Ok(serial.execute(&txn, None))
}
