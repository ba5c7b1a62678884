//! Engine overhead: the in-process pipeline (sequencer replica → plan server → executors,
//! one thread) against executing the same transactions directly, one by one, on a single
//! map.
//!
//! The pipeline runs the production machines (a one-member `Replica` group, the
//! `PlanServer`, the `Executor`s) through `Machine::handle`, and is a pipe between them:
//! it routes each addressed output to its machine, answers `Persist` at once (memory is
//! the disk) and ticks a machine when its deadline comes.
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
use detflow_executor::{self as executor, Executor, MemStore, Registry, Store, is_system_key};
use detflow_protocol::{
    ClientId, DetRng, ExecutorId, Key, Machine, NodeId, Owner, PartitionId, RequestSeq, Time,
    Transaction, Value,
};
use detflow_scheduler::{PartitionMap, PlanServer, plan_server};
use detflow_sequencer::Config;
use detflow_sequencer::replica::{self, Durable, Replica, ReplicaConfig};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The one sequencer replica.
const REPLICA: NodeId = NodeId(1);
/// Deadlines the pipeline may run through after the last submission (the last epoch
/// closes at the first) before the run counts as stuck.
const TICKS_AT_END_MAX: usize = 1_000;

/// The node's allocator, so that both sides pay what they would pay in `detflow`.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    workload.register(&mut registry)?;
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

/// Where an input is on its way to: one machine of the pipeline.
enum To {
    Replica(replica::Input),
    PlanServer(plan_server::Input),
    Executor(PartitionId, executor::Input),
}

/// The in-process pipeline: one sequencer replica (a group of one), the plan server beside
/// it and the executors, on one thread. It is a driver like the node and the simulator,
/// with memory for a disk and a queue for a network: it routes each addressed output to
/// its machine and decides nothing about the protocol.
struct Pipeline {
    now: Time,
    replica: Replica,
    plans: PlanServer,
    executors: Vec<Executor<MemStore>>,
    queue: VecDeque<To>,
    results: u64,
    replica_out: Vec<replica::Output>,
    plan_out: Vec<plan_server::Output>,
    executor_out: Vec<executor::Output>,
}

impl Pipeline {
    fn new(s: &Setup, batch: usize, seed: u64) -> Result<Pipeline> {
        let partitions = s.map.partitions();
        let mut executors: Vec<Executor<MemStore>> = (0..partitions)
            .map(|p| {
                let store = MemStore::new();
                let mut e = Executor::new(PartitionId(p), partitions, s.registry.clone(), store);
                e.set_plan_sources(vec![REPLICA]);
                e
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
        let mut config = ReplicaConfig::new(REPLICA, vec![REPLICA]);
        config.batching = Config {
            epoch_us: 5_000,
            batch_txns_max: batch,
            ..Config::default()
        };
        let mut pipeline = Pipeline {
            now: Time::ZERO,
            replica: Replica::new(config, Durable::default(), DetRng::new(seed)),
            // Every partition on node 0, the executors' default: the log is compacted
            // as they apply it, as in a running node.
            plans: PlanServer::new(
                s.map.clone(),
                (0..partitions).map(|p| ExecutorId {
                    partition: PartitionId(p),
                    node: NodeId(0),
                }),
            ),
            executors,
            queue: VecDeque::new(),
            results: 0,
            replica_out: Vec::new(),
            plan_out: Vec::new(),
            executor_out: Vec::new(),
        };
        for p in 0..partitions {
            pipeline
                .queue
                .push_back(To::Executor(PartitionId(p), executor::Input::Start));
        }
        // The replica asks for its first tick at once; a group of one then elects itself.
        pipeline.tick_due()?;
        if !pipeline.replica.is_leader() {
            bail!("the one replica did not become leader");
        }
        Ok(pipeline)
    }

    /// Delivers everything on its way, and what that produces, until nothing is left.
    fn drain(&mut self) -> Result<()> {
        while let Some(to) = self.queue.pop_front() {
            match to {
                To::Replica(input) => self.replica_input(input)?,
                To::PlanServer(input) => self.plan_server_input(input),
                To::Executor(p, input) => self.executor_input(p, input)?,
            }
        }
        Ok(())
    }

    /// Moves the clock to the earliest deadline any machine asked for, ticks the machines
    /// that are due, and drains.
    fn tick_due(&mut self) -> Result<()> {
        let deadlines = std::iter::once(self.replica.next_deadline())
            .chain(self.executors.iter().map(|e| e.next_deadline()));
        let Some(next) = deadlines.flatten().min() else {
            bail!("nothing left to do, and no machine waits for a deadline");
        };
        self.now = self.now.max(next);
        if self.replica.next_deadline().is_some_and(|d| d <= self.now) {
            self.queue.push_back(To::Replica(replica::Input::Tick));
        }
        for (p, e) in self.executors.iter().enumerate() {
            if e.next_deadline().is_some_and(|d| d <= self.now) {
                let p = PartitionId(p as u32);
                self.queue.push_back(To::Executor(p, executor::Input::Tick));
            }
        }
        self.drain()
    }

    fn replica_input(&mut self, input: replica::Input) -> Result<()> {
        let mut out = std::mem::take(&mut self.replica_out);
        self.replica.handle(self.now, input, &mut out);
        for effect in out.drain(..) {
            match effect {
                // No disk here: the write is durable at once, and nothing is archived.
                replica::Output::Archive(_) => {}
                replica::Output::ArchiveAhead(_) => {
                    self.queue.push_back(To::Replica(replica::Input::Archived))
                }
                replica::Output::Persist(write) => self
                    .queue
                    .push_back(To::Replica(replica::Input::Persisted { write: write.id })),
                replica::Output::Committed(batch) => self
                    .queue
                    .push_back(To::PlanServer(plan_server::Input::Committed(batch))),
                replica::Output::Duplicate { client, seq, .. } => {
                    bail!("duplicate ({client}, {seq}) in generated transactions")
                }
                replica::Output::NotLeader { txn, .. } => {
                    bail!("the one replica refused ({}, {})", txn.client, txn.seq)
                }
                replica::Output::Send { to, .. } => bail!("a group of one sent to {to}"),
                // There is no gateway here: submissions go to the one replica.
                replica::Output::LeaderKnown(_) => {}
                replica::Output::Compacted { through } => self
                    .queue
                    .push_back(To::PlanServer(plan_server::Input::Compacted { through })),
            }
        }
        self.replica_out = out;
        Ok(())
    }

    fn plan_server_input(&mut self, input: plan_server::Input) {
        let mut out = std::mem::take(&mut self.plan_out);
        self.plans.handle(self.now, input, &mut out);
        for output in out.drain(..) {
            match output {
                plan_server::Output::Plan { to, plan, .. } => {
                    // The server keeps the plans it sent for late subscribers: a copy
                    // travels, as it would over a connection.
                    let plan = Arc::try_unwrap(plan).unwrap_or_else(|shared| (*shared).clone());
                    self.queue
                        .push_back(To::Executor(to, executor::Input::Plan(plan)));
                }
                plan_server::Output::Compacted { .. } => {}
                plan_server::Output::Compact { through } => self
                    .queue
                    .push_back(To::Replica(replica::Input::Compact { through })),
            }
        }
        self.plan_out = out;
    }

    fn executor_input(&mut self, p: PartitionId, input: executor::Input) -> Result<()> {
        use executor::{Input, Output};
        let mut out = std::mem::take(&mut self.executor_out);
        self.executors[p.0 as usize].handle(self.now, input, &mut out);
        for effect in out.drain(..) {
            let to = match effect {
                // The in-memory store is durable once the epoch is applied.
                Output::EpochApplied(epoch) => To::Executor(p, Input::Durable { up_to: epoch }),
                Output::Result { .. } => {
                    self.results += 1;
                    continue;
                }
                Output::ResultUnknown { .. } => bail!("a result query nobody made"),
                Output::Deliver { .. } => bail!("a delivery of letters, but no gateway is set"),
                Output::StreamPart { .. } => bail!("a stream read nobody made"),
                Output::SnapshotPart { .. } => bail!("a snapshot read nobody made"),
                Output::Checkpoint(_) => bail!("a checkpoint, but none is configured"),
                Output::SendReadsGone { .. }
                | Output::FetchState { .. }
                | Output::SendState { .. }
                | Output::StateRestored { .. } => {
                    bail!("a state transfer, but no replica lost its state")
                }
                // One replica per partition, on node 0 (the default placement).
                Output::SendAck { to, durable } => To::Executor(
                    to.partition,
                    Input::Ack {
                        from: p,
                        node: to.node,
                        durable,
                    },
                ),
                Output::SendHello { to, durable } => To::Executor(
                    to.partition,
                    Input::Hello {
                        from: p,
                        node: to.node,
                        durable,
                    },
                ),
                Output::SendReads { to, reads } => {
                    To::Executor(to.partition, Input::RemoteReads(reads))
                }
                Output::ReportApplied { durable, .. } => {
                    To::PlanServer(plan_server::Input::Applied {
                        partition: p,
                        node: NodeId(0),
                        durable,
                    })
                }
                Output::Subscribe { to, from } => {
                    if to != REPLICA {
                        bail!("partition {p} subscribed to {to}, which does not exist");
                    }
                    To::PlanServer(plan_server::Input::Subscribe {
                        partition: p,
                        node: NodeId(0),
                        from,
                    })
                }
            };
            self.queue.push_back(to);
        }
        self.executor_out = out;
        Ok(())
    }
}

/// The pipeline: the replica batches, the plan server plans, executors run the plans.
fn pipeline(s: &Setup, batch: usize, seed: u64) -> Result<(Duration, BTreeMap<Key, Value>, u64)> {
    let mut pipeline = Pipeline::new(s, batch, seed)?;
    let results_before = pipeline.results;
    let start = Instant::now();
    for txn in &s.txns {
        pipeline
            .queue
            .push_back(To::Replica(replica::Input::Submit(txn.clone())));
        pipeline.drain()?;
    }
    // The last epoch closes at its deadline; the bound only guards against a stuck run.
    for _ in 0..TICKS_AT_END_MAX {
        if pipeline.results - results_before >= s.txns.len() as u64 {
            break;
        }
        pipeline.tick_due()?;
    }
    let elapsed = start.elapsed();
    let mut state = BTreeMap::new();
    for e in &pipeline.executors {
        let user = e.store().iter().filter(|(k, _)| !is_system_key(k));
        state.extend(user.map(|(k, v)| (k.clone(), v.clone())));
    }
    Ok((elapsed, state, pipeline.results - results_before))
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
        let (p, state, results) = pipeline(&s, args.batch, args.seed)?;
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
