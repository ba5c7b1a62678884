//! The simulated cluster: every component on one thread, in virtual time.
//!
//! One seed derives the whole run: the network's latency profile, every message delay,
//! fsync delays, the clients' think times and the workload's calls. Channels are FIFO
//! (a message never overtakes an earlier one on the same (sender, receiver) channel) while
//! messages on different channels interleave freely.

use crate::gateway::{Gateway, GatewayOutput};
use detflow_executor::{Bugs, Executor, MemStore, Registry, Store};
use detflow_protocol::message::{Call, RemoteReads, Reply};
use detflow_protocol::{
    Batch, ClientId, DetRng, Epoch, Key, Machine, NodeId, Owner, PartitionId, Plan, RequestSeq,
    Time, Transaction, TxnResult, Value,
};
use detflow_scheduler::PartitionMap;
use detflow_sequencer::{self as sequencer, Sequencer};
use detflow_workloads::Workload;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::sync::Arc;

/// A simulated component's address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Addr {
    Client(u32),
    Executor(u32),
    Gateway,
    Sequencer,
}

#[derive(Debug)]
enum Msg {
    Ack {
        from: PartitionId,
        durable: Epoch,
    },
    Call(Call),
    Plan(Plan),
    Reads(Arc<RemoteReads>),
    Reply {
        client: ClientId,
        seq: RequestSeq,
        reply: Reply,
    },
    Result(TxnResult),
    Submit(Arc<Transaction>),
}

#[derive(Debug)]
enum Event {
    ClientWake(u32),
    Deliver { to: Addr, msg: Msg },
    Persisted(Epoch),
    SequencerTimer,
}

struct Scheduled {
    at: Time,
    seq: u64,
    event: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// Settings of one simulated run.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Workload name (`bank`, `ycsb`, `kv`).
    pub workload: String,
    /// The seed every random choice derives from.
    pub seed: u64,
    /// Executor partitions.
    pub partitions: u32,
    /// Calls the clients make in total.
    pub txns: u64,
    /// Concurrent clients, each with one call in flight.
    pub clients: u32,
    /// The sequencer's epoch length.
    pub epoch_duration_us: u64,
    /// The sequencer's batch size cap.
    pub batch_txns_max: usize,
    /// Planted executor bugs (checker tests only).
    pub bugs: Bugs,
}

impl SimConfig {
    /// Defaults for `workload` and `seed`.
    pub fn new(workload: &str, seed: u64) -> SimConfig {
        SimConfig {
            workload: workload.to_owned(),
            seed,
            partitions: 4,
            txns: 400,
            clients: 16,
            epoch_duration_us: 5_000,
            batch_txns_max: 10_000,
            bugs: Bugs::default(),
        }
    }
}

/// What a client asked and what it was told.
#[derive(Clone, Debug)]
pub struct CallRecord {
    /// The procedure name.
    pub procedure: String,
    /// The encoded arguments.
    pub args: Vec<u8>,
    /// Every reply received, in order (exactly one is correct).
    pub replies: Vec<Reply>,
    /// When it was sent.
    pub sent_at: Time,
}

/// Seeded network and disk timing, chosen per seed (swarm testing).
#[derive(Clone, Copy, Debug)]
struct Timing {
    latency_max_us: u64,
    spike_chance: f64,
    fsync_max_us: u64,
    think_max_us: u64,
    malformed_chance: f64,
}

/// Everything a finished run leaves for the checkers.
pub(crate) struct Outcome {
    /// The committed log, in order.
    pub log: Vec<Arc<Batch>>,
    /// Every call by `(client, seq)`.
    pub calls: BTreeMap<(ClientId, RequestSeq), CallRecord>,
    /// Each executor's final store, by partition.
    pub stores: Vec<MemStore>,
    /// Each executor's next epoch to apply.
    pub executor_epochs: Vec<Epoch>,
    /// Whether every machine drained its work.
    pub quiescent: bool,
    /// The registry the run used.
    pub registry: Arc<Registry>,
    /// The partition map the run used.
    pub map: PartitionMap,
    /// The workload, for its invariant checker.
    pub workload: Box<dyn Workload>,
    /// The initial rows.
    pub initial: Vec<(Key, Value)>,
    /// Virtual time at the end.
    pub end: Time,
    /// Events processed.
    pub events: u64,
}

/// Why a run could not start.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The workload cannot be built as asked.
    #[error(transparent)]
    Workload(#[from] detflow_workloads::WorkloadError),
    /// The workload's partition scheme is invalid.
    #[error("invalid partition scheme: {0}")]
    Scheme(#[from] detflow_scheduler::SchemeError),
    /// A nonsensical setting.
    #[error("{0}")]
    Config(String),
}

/// Stops a run that does not quiesce: far beyond any healthy run's virtual time.
const VIRTUAL_TIME_MAX_US: u64 = 3_600_000_000;

const GATEWAY_ID: NodeId = NodeId(1);
const FOOTPRINT_ENTRIES_MAX: usize = 4096;

pub(crate) struct World {
    now: Time,
    queue: BinaryHeap<Reverse<Scheduled>>,
    next_seq: u64,
    channels: BTreeMap<(Addr, Addr), Time>,
    rng: DetRng,
    workload_rng: DetRng,
    timing: Timing,
    sequencer: Sequencer,
    sequencer_timer: Option<Time>,
    last_persist: Time,
    gateway: Gateway,
    executors: Vec<Executor<MemStore>>,
    map: PartitionMap,
    workload: Box<dyn Workload>,
    log: Vec<Arc<Batch>>,
    calls: BTreeMap<(ClientId, RequestSeq), CallRecord>,
    client_next_seq: Vec<u64>,
    issued: u64,
    config: SimConfig,
    events: u64,
    registry: Arc<Registry>,
    initial: Vec<(Key, Value)>,
}

impl World {
    pub(crate) fn new(config: SimConfig) -> Result<World, SetupError> {
        if config.partitions == 0 || config.clients == 0 || config.batch_txns_max == 0 {
            return Err(SetupError::Config(
                "--partitions, --clients and the batch size must be at least 1".into(),
            ));
        }
        let workload = detflow_workloads::by_name(&config.workload, config.partitions)?;
        let mut scheme = workload.scheme();
        scheme.partitions = config.partitions;
        let map = PartitionMap::new(scheme)?;
        let mut registry = Registry::new();
        workload.register(&mut registry);
        let registry = Arc::new(registry);

        let mut rng = DetRng::new(config.seed);
        let workload_rng = rng.fork(1);
        let timing = Timing {
            latency_max_us: *rng.pick(&[20, 200, 1_000, 5_000]),
            spike_chance: *rng.pick(&[0.0, 0.01, 0.05]),
            fsync_max_us: *rng.pick(&[100, 1_000, 10_000]),
            think_max_us: *rng.pick(&[0, 500, 5_000]),
            malformed_chance: *rng.pick(&[0.0, 0.0, 0.01]),
        };

        let initial = workload.load();
        let mut executors: Vec<_> = (0..config.partitions)
            .map(|p| {
                let mut e = Executor::new(
                    PartitionId(p),
                    config.partitions,
                    registry.clone(),
                    MemStore::new(),
                );
                e.set_bugs(config.bugs);
                e
            })
            .collect();
        for (key, value) in &initial {
            match map.owner(key) {
                Ok(Owner::Partition(p)) => executors[p.0 as usize]
                    .store_mut()
                    .put(key.clone(), value.clone()),
                Ok(Owner::Replicated) => {
                    for e in &mut executors {
                        e.store_mut().put(key.clone(), value.clone());
                    }
                }
                Err(e) => {
                    return Err(SetupError::Config(format!(
                        "initial row cannot be placed: {e}"
                    )));
                }
            }
        }

        let sequencer = Sequencer::new(sequencer::Config {
            epoch_duration_us: config.epoch_duration_us,
            batch_txns_max: config.batch_txns_max,
        });
        let world = World {
            now: Time::ZERO,
            queue: BinaryHeap::new(),
            next_seq: 0,
            channels: BTreeMap::new(),
            rng,
            workload_rng,
            timing,
            sequencer,
            sequencer_timer: None,
            last_persist: Time::ZERO,
            gateway: Gateway::new(GATEWAY_ID, registry.clone(), FOOTPRINT_ENTRIES_MAX),
            registry,
            initial,
            executors,
            map,
            workload,
            log: Vec::new(),
            calls: BTreeMap::new(),
            client_next_seq: vec![1; config.clients as usize],
            issued: 0,
            config,
            events: 0,
        };
        Ok(world)
    }

    pub(crate) fn run(mut self) -> Outcome {
        for c in 0..self.config.clients {
            let start = self.rng.below(1_000);
            self.schedule(Time(start), Event::ClientWake(c));
        }
        while let Some(Reverse(next)) = self.queue.pop() {
            if next.at.0 > VIRTUAL_TIME_MAX_US {
                break;
            }
            self.now = next.at;
            self.events += 1;
            self.dispatch(next.event);
        }
        let quiescent = self.queue.is_empty()
            && self.sequencer.is_idle()
            && self.executors.iter().all(|e| e.is_idle());
        Outcome {
            log: self.log,
            calls: self.calls,
            executor_epochs: self.executors.iter().map(|e| e.next_epoch()).collect(),
            stores: self
                .executors
                .into_iter()
                .map(|e| e.store().clone())
                .collect(),
            quiescent,
            registry: self.registry,
            map: self.map,
            workload: self.workload,
            initial: self.initial,
            end: self.now,
            events: self.events,
        }
    }

    fn schedule(&mut self, at: Time, event: Event) {
        self.next_seq += 1;
        self.queue.push(Reverse(Scheduled {
            at,
            seq: self.next_seq,
            event,
        }));
    }

    /// Sends over the FIFO channel `from → to` with a seeded delay.
    fn send(&mut self, from: Addr, to: Addr, msg: Msg) {
        let mut delay = 1 + self.rng.below(self.timing.latency_max_us);
        if self.rng.chance(self.timing.spike_chance) {
            delay += self.rng.range(1_000, 20_000);
        }
        let last = self.channels.entry((from, to)).or_insert(Time::ZERO);
        let at = (*last).max(self.now.plus_us(delay));
        *last = at;
        self.schedule(at, Event::Deliver { to, msg });
    }

    fn dispatch(&mut self, event: Event) {
        match event {
            Event::ClientWake(c) => self.on_client_wake(c),
            Event::Deliver { to, msg } => self.deliver(to, msg),
            Event::Persisted(epoch) => {
                self.sequencer_input(sequencer::Input::Persisted { up_to: epoch })
            }
            Event::SequencerTimer => {
                self.sequencer_timer = None;
                self.sequencer_input(sequencer::Input::Tick);
            }
        }
    }

    fn deliver(&mut self, to: Addr, msg: Msg) {
        match (to, msg) {
            (Addr::Client(c), Msg::Reply { client, seq, reply }) => {
                self.on_reply(c, client, seq, reply)
            }
            (Addr::Gateway, Msg::Call(call)) => {
                let mut out = Vec::new();
                self.gateway.on_call(call, &mut out);
                self.gateway_effects(out);
            }
            (Addr::Gateway, Msg::Result(result)) => {
                let mut out = Vec::new();
                self.gateway.on_result(result, &mut out);
                self.gateway_effects(out);
            }
            (Addr::Sequencer, Msg::Submit(txn)) => {
                self.sequencer_input(sequencer::Input::Submit(txn))
            }
            (Addr::Executor(p), Msg::Plan(plan)) => {
                self.executor_input(p, detflow_executor::Input::Plan(plan))
            }
            (Addr::Executor(p), Msg::Ack { from, durable }) => {
                self.executor_input(p, detflow_executor::Input::Ack { from, durable })
            }
            (Addr::Executor(p), Msg::Reads(reads)) => {
                self.executor_input(p, detflow_executor::Input::RemoteReads(reads))
            }
            (to, msg) => panic!("simulator routed {msg:?} to {to:?}"),
        }
    }

    fn on_client_wake(&mut self, c: u32) {
        if self.issued >= self.config.txns {
            return;
        }
        self.issued += 1;
        let client = ClientId(u64::from(c));
        let seq = RequestSeq(self.client_next_seq[c as usize]);
        self.client_next_seq[c as usize] += 1;
        let request = self.workload.next_call(&mut self.workload_rng);
        let (procedure, args) = if self.rng.chance(self.timing.malformed_chance) {
            // Bad input a real client may send: it must be refused, never ordered.
            if self.rng.chance(0.5) {
                ("no.such.procedure".to_owned(), request.args)
            } else {
                (request.procedure.to_owned(), vec![0xc1])
            }
        } else {
            (request.procedure.to_owned(), request.args)
        };
        self.calls.insert(
            (client, seq),
            CallRecord {
                procedure: procedure.clone(),
                args: args.clone(),
                replies: Vec::new(),
                sent_at: self.now,
            },
        );
        let call = Call {
            client,
            seq,
            procedure,
            args,
        };
        self.send(Addr::Client(c), Addr::Gateway, Msg::Call(call));
    }

    fn on_reply(&mut self, c: u32, client: ClientId, seq: RequestSeq, reply: Reply) {
        assert_eq!(
            client,
            ClientId(u64::from(c)),
            "reply delivered to the wrong client"
        );
        let first = match self.calls.get_mut(&(client, seq)) {
            Some(record) => {
                record.replies.push(reply);
                record.replies.len() == 1
            }
            // A reply to a call never made is recorded so the checker reports it.
            None => {
                self.calls.insert(
                    (client, seq),
                    CallRecord {
                        procedure: String::new(),
                        args: Vec::new(),
                        replies: vec![reply],
                        sent_at: self.now,
                    },
                );
                false
            }
        };
        if first {
            let think = if self.timing.think_max_us == 0 {
                0
            } else {
                self.rng.below(self.timing.think_max_us)
            };
            self.schedule(self.now.plus_us(think), Event::ClientWake(c));
        }
    }

    fn gateway_effects(&mut self, out: Vec<GatewayOutput>) {
        for effect in out {
            match effect {
                GatewayOutput::Reply { client, seq, reply } => {
                    let to = Addr::Client(client.0 as u32);
                    self.send(Addr::Gateway, to, Msg::Reply { client, seq, reply });
                }
                GatewayOutput::Submit(txn) => {
                    self.send(Addr::Gateway, Addr::Sequencer, Msg::Submit(txn))
                }
            }
        }
    }

    fn sequencer_input(&mut self, input: sequencer::Input) {
        let mut out = Vec::new();
        self.sequencer.handle(self.now, input, &mut out);
        for effect in out {
            match effect {
                sequencer::Output::Persist(batch) => {
                    let at = self
                        .last_persist
                        .max(self.now.plus_us(self.rng.below(self.timing.fsync_max_us)));
                    self.last_persist = at;
                    self.schedule(at, Event::Persisted(batch.epoch));
                }
                sequencer::Output::Committed(batch) => self.on_committed(batch),
                // Counted by the sequencer; the call's missing reply is what the checker sees.
                sequencer::Output::Duplicate { .. } => {}
            }
        }
        let deadline = self.sequencer.next_deadline();
        if deadline.is_some() && deadline != self.sequencer_timer {
            self.sequencer_timer = deadline;
            self.schedule(deadline.unwrap_or(self.now), Event::SequencerTimer);
        }
    }

    fn on_committed(&mut self, batch: Arc<Batch>) {
        self.log.push(batch.clone());
        let plans = detflow_scheduler::schedule(&batch, &self.map)
            .unwrap_or_else(|e| panic!("the sequencer wrote a batch the scheduler refuses: {e}"));
        for plan in plans {
            let to = Addr::Executor(plan.partition.0);
            self.send(Addr::Sequencer, to, Msg::Plan(plan));
        }
    }

    fn executor_input(&mut self, p: u32, input: detflow_executor::Input) {
        let mut out = Vec::new();
        self.executors[p as usize].handle(self.now, input, &mut out);
        for effect in out {
            match effect {
                detflow_executor::Output::SendReads { to, reads } => {
                    self.send(Addr::Executor(p), Addr::Executor(to.0), Msg::Reads(reads));
                }
                detflow_executor::Output::Result { gateway, result } => {
                    assert_eq!(gateway, GATEWAY_ID, "result for an unknown gateway");
                    self.send(Addr::Executor(p), Addr::Gateway, Msg::Result(result));
                }
                // The in-memory store is durable as soon as an epoch is applied.
                detflow_executor::Output::EpochApplied(epoch) => {
                    self.executor_input(p, detflow_executor::Input::Durable { up_to: epoch })
                }
                detflow_executor::Output::SendAck { to, durable } => {
                    let ack = Msg::Ack {
                        from: PartitionId(p),
                        durable,
                    };
                    self.send(Addr::Executor(p), Addr::Executor(to.0), ack);
                }
                detflow_executor::Output::SendHello { .. }
                | detflow_executor::Output::ResultUnknown { .. } => {}
            }
        }
    }
}
