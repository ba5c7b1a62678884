//! Engine overhead: the in-process pipeline (sequencer → scheduler → executors, one thread)
//! against executing the same transactions directly, one by one, on a single map.
//!
//! Both sides run the same procedures through the same registry on the same generated
//! transactions, in the same process and run, alternating rounds; the ratio is what the
//! engine costs (batching, routing, plans, footprint enforcement, remote-read exchange).
//! After timing, the pipeline's final state is compared with the direct one.

// Timing a benchmark needs the wall clock, which the determinism lints ban elsewhere.
#![allow(clippy::disallowed_methods)]

use anyhow::{Result, bail};
use clap::Parser;
use detflow_executor::serial::SerialExecutor;
use detflow_executor::{Executor, Input, MemStore, Output, Registry, Store, is_system_key};
use detflow_protocol::{
    ClientId, DetRng, Key, Machine, NodeId, Owner, PartitionId, RequestSeq, Time, Transaction,
    Value,
};
use detflow_scheduler::PartitionMap;
use detflow_sequencer::{self as sequencer, Sequencer};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(
    name = "engine-overhead",
    about = "Throughput of the in-process pipeline against direct serial execution (same run)"
)]
struct Args {
    /// Workload (ycsb or bank or kv).
    #[arg(long, default_value = "ycsb")]
    workload: String,
    /// Transactions per round.
    #[arg(long, default_value_t = 200_000)]
    txns: usize,
    /// Executor partitions.
    #[arg(long, default_value_t = 4)]
    partitions: u32,
    /// Transactions per epoch (the sequencer's batch cap).
    #[arg(long, default_value_t = 1_000)]
    batch: usize,
    /// Alternating rounds of each; the best round of each counts.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Seed of the generated transactions.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

struct Setup {
    registry: Arc<Registry>,
    map: PartitionMap,
    initial: Vec<(Key, Value)>,
    txns: Vec<Arc<Transaction>>,
}

fn setup(args: &Args) -> Result<Setup> {
    let mut workload = detflow_workloads::by_name(&args.workload, args.partitions)?;
    let mut registry = Registry::new();
    workload.register(&mut registry);
    let mut scheme = workload.scheme();
    scheme.partitions = args.partitions;
    let map = PartitionMap::new(scheme)?;
    let mut rng = DetRng::new(args.seed);
    let mut txns = Vec::with_capacity(args.txns);
    for i in 0..args.txns {
        let request = workload.next_call(&mut rng);
        let footprint = registry
            .footprint(request.procedure, &request.args)
            .map_err(|e| anyhow::anyhow!("generator produced a bad call: {e}"))?;
        txns.push(Arc::new(Transaction {
            client: ClientId(0),
            seq: RequestSeq(i as u64 + 1),
            gateway: NodeId(0),
            procedure: request.procedure.to_owned(),
            args: request.args,
            footprint,
        }));
    }
    Ok(Setup {
        registry: Arc::new(registry),
        map,
        initial: workload.load(),
        txns,
    })
}

/// Direct execution: one map, one transaction at a time.
fn direct(s: &Setup) -> (Duration, BTreeMap<Key, Value>) {
    let mut serial = SerialExecutor::new(&s.registry, s.initial.iter().cloned().collect());
    let start = Instant::now();
    for txn in &s.txns {
        std::hint::black_box(serial.execute(txn, None));
    }
    (start.elapsed(), serial.into_state())
}

/// The pipeline: sequencer batches, scheduler plans, executors run them, one thread.
fn pipeline(s: &Setup, batch: usize) -> Result<(Duration, BTreeMap<Key, Value>, u64)> {
    let mut executors: Vec<Executor<MemStore>> = (0..s.map.partitions())
        .map(|p| {
            let partitions = s.map.partitions();
            Executor::new(
                PartitionId(p),
                partitions,
                s.registry.clone(),
                MemStore::new(),
            )
        })
        .collect();
    for (key, value) in &s.initial {
        match s.map.owner(key)? {
            Owner::Partition(p) => executors[p.0 as usize]
                .store_mut()
                .put(key.clone(), value.clone()),
            Owner::Replicated => executors
                .iter_mut()
                .for_each(|e| e.store_mut().put(key.clone(), value.clone())),
        }
    }
    let mut sequencer = Sequencer::new(sequencer::Config {
        epoch_duration_us: 5_000,
        batch_txns_max: batch,
        ..sequencer::Config::default()
    });
    let mut effects = Vec::new();
    let mut queue: VecDeque<(usize, Input)> = VecDeque::new();
    let mut exec_out = Vec::new();
    let mut results = 0u64;
    let now = Time(0);
    let start = Instant::now();
    for (i, txn) in s.txns.iter().enumerate() {
        sequencer.handle(now, sequencer::Input::Submit(txn.clone()), &mut effects);
        if i + 1 == s.txns.len() {
            sequencer.handle(Time(u64::MAX), sequencer::Input::Tick, &mut effects);
        }
        while !effects.is_empty() {
            for effect in std::mem::take(&mut effects) {
                match effect {
                    // No disk here: the append is durable at once.
                    sequencer::Output::Persist(b) => sequencer.handle(
                        now,
                        sequencer::Input::Persisted { up_to: b.epoch },
                        &mut effects,
                    ),
                    sequencer::Output::Committed(b) => {
                        for plan in detflow_scheduler::schedule(&b, &s.map)? {
                            queue.push_back((plan.partition.0 as usize, Input::Plan(plan)));
                        }
                        while let Some((p, input)) = queue.pop_front() {
                            executors[p].handle(now, input, &mut exec_out);
                            for out in exec_out.drain(..) {
                                match out {
                                    Output::SendReads { to, reads } => {
                                        queue.push_back((to.0 as usize, Input::RemoteReads(reads)))
                                    }
                                    Output::Result { .. } => results += 1,
                                    // The in-memory store is durable once the epoch is applied;
                                    // peers' acknowledgements free the read outboxes.
                                    Output::EpochApplied(epoch) => {
                                        queue.push_back((p, Input::Durable { up_to: epoch }))
                                    }
                                    Output::SendAck { to, durable } => queue.push_back((
                                        to.0 as usize,
                                        Input::Ack {
                                            from: PartitionId(p as u32),
                                            durable,
                                        },
                                    )),
                                    // Plans are handed in directly: no subscriptions.
                                    Output::SendHello { .. }
                                    | Output::ResultUnknown { .. }
                                    | Output::Subscribe { .. } => {}
                                }
                            }
                        }
                    }
                    sequencer::Output::Duplicate { client, seq } => {
                        bail!("duplicate ({client}, {seq}) in generated transactions")
                    }
                }
            }
        }
    }
    let elapsed = start.elapsed();
    let mut state = BTreeMap::new();
    for e in &executors {
        let user = e.store().iter().filter(|(k, _)| !is_system_key(k));
        state.extend(user.map(|(k, v)| (k.clone(), v.clone())));
    }
    Ok((elapsed, state, results))
}

fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

fn main() -> Result<()> {
    let args = Args::parse();
    let s = setup(&args)?;
    let multi = s
        .txns
        .iter()
        .filter(|t| {
            let r = detflow_scheduler::route(Default::default(), (*t).clone(), &s.map);
            !r.is_single_partition()
        })
        .count();
    println!(
        "workload {} | {} txns/round | {} partitions | {:.1}% multi-partition | batch {} | {} rounds",
        args.workload,
        args.txns,
        args.partitions,
        100.0 * multi as f64 / args.txns as f64,
        args.batch,
        args.rounds
    );
    let (mut best_direct, mut best_pipeline) = (Duration::MAX, Duration::MAX);
    let (mut direct_state, mut pipeline_state) = (BTreeMap::new(), BTreeMap::new());
    for round in 1..=args.rounds {
        let (d, state) = direct(&s);
        direct_state = state;
        let (p, state, results) = pipeline(&s, args.batch)?;
        pipeline_state = state;
        if results != args.txns as u64 {
            bail!(
                "pipeline reported {results} results for {} transactions",
                args.txns
            );
        }
        println!(
            "round {round}: direct {:>10.0} txn/s   pipeline {:>10.0} txn/s",
            rate(args.txns, d),
            rate(args.txns, p)
        );
        best_direct = best_direct.min(d);
        best_pipeline = best_pipeline.min(p);
    }
    if direct_state != pipeline_state {
        bail!("the pipeline's final state differs from direct execution");
    }
    let (d, p) = (rate(args.txns, best_direct), rate(args.txns, best_pipeline));
    println!("direct   (best): {d:>10.0} txn/s");
    println!("pipeline (best): {p:>10.0} txn/s");
    println!(
        "ratio pipeline/direct: {:.2} (target >= 0.50); final states equal",
        p / d
    );
    Ok(())
}
