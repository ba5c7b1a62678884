//! Long-running codec fuzzer (issue #9): frames and every `Message` variant, for as long as
//! asked, with every input reproducible from a seed and an iteration number.
//!
//! ```text
//! cargo run --release -p detflow-benches --bin fuzz-codec -- --duration 1h [--seed S]
//! cargo run --release -p detflow-benches --bin fuzz-codec -- --seed S --replay I
//! ```
//!
//! Each iteration seeds a fresh ChaCha8 generator ([`DetRng`]) from the run's seed and the
//! iteration number, draws one input of one kind and checks it:
//!
//! - **round trip**: messages encoded as frames must decode to equal values, whatever the
//!   read boundaries;
//! - **stream**: random bytes, length prefixes and valid frames pushed into a
//!   `FrameDecoder` (a tiny limit or the default);
//! - **mutated**: a real frame with bits flipped, bytes inserted, deleted or overwritten,
//!   runs copied, the length prefix changed or cut short;
//! - **body**: random bytes decoded directly as a `Message` (and the other wire types);
//! - **document**: well-formed MessagePack of the wrong shape, with variant and field names
//!   as strings so that it reaches the fields;
//! - **deep**: containers nested up to 200,000 deep in the places a decoder recurses
//!   without a type to bound it.
//!
//! Anything but `Ok` or `Err` is a crash: a panic is caught, printed with its seed,
//! iteration, input and stack, and counted, and the run goes on; the exit status is
//! non-zero if any occurred. Decoding runs on a thread with a tokio worker's stack (2 MiB),
//! and each deep input on a thread of its own named after its seed and iteration, so a
//! stack overflow (which aborts the process and cannot be caught) still names its input.
//!
//! The generators mirror the proptest strategies of `protocol/tests/fuzz_codec.rs`, which
//! CI runs for a bounded time; that file fails to build when a variant is added, and so
//! does [`message_variant`] here.

// Progress reports and the default seed need the wall clock, which the determinism lints
// ban elsewhere; every input still comes from the seed alone.
#![allow(clippy::disallowed_methods)]

use anyhow::{Context, Result};
use clap::Parser;
use detflow_protocol::Term;
use detflow_protocol::bin::Blob;
use detflow_protocol::codec;
use detflow_protocol::footprint::{Access, Footprint, KeySpec};
use detflow_protocol::frame::{self, DEFAULT_MAX_FRAME_BYTES, FrameDecoder, FrameError};
use detflow_protocol::mailbox::{Delivery, Letter};
use detflow_protocol::message::{
    Call, CheckpointAnswer, LogReply, Message, NodeStatus, Rejection, RemoteReads, Reply,
    SessionToken,
};
use detflow_protocol::plan::{Owner, Plan, RoutedTxn};
use detflow_protocol::replication::ClientWindow;
use detflow_protocol::replication::{LogEntry, PeerMessage};
use detflow_protocol::schema::{FieldType, Table};
use detflow_protocol::snapshot::{
    At, PartAt, PartOp, PartRows, ScanRange, SnapshotError, SnapshotOp, SnapshotPart, SnapshotRead,
    SnapshotReply,
};
use detflow_protocol::stream::{Offset, StreamEvent, StreamPart, StreamReply};
use detflow_protocol::transfer::{StateChunk, StateFetch};
use detflow_protocol::txn::{AbortReason, Batch, Outcome, Transaction, TxnResult};
use detflow_protocol::{
    ClientId, DetRng, Elem, Epoch, Key, NodeId, PartitionId, Position, RequestSeq, TableRule,
};
use std::collections::BTreeMap;
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[derive(Parser)]
#[command(
    name = "fuzz-codec",
    about = "Fuzz the frame decoder and the Message codec for a bounded time"
)]
struct Args {
    /// How long to run: 90s, 10m, 1h.
    #[arg(long, default_value = "1m", value_parser = parse_duration)]
    duration: Duration,
    /// The run's seed (default: from the clock; printed either way).
    #[arg(long)]
    seed: Option<u64>,
    /// Replay one iteration of --seed: print its input and check it without catching a
    /// panic (set RUST_BACKTRACE=1 for the stack).
    #[arg(long, requires = "seed")]
    replay: Option<u64>,
    /// How often to print progress.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    progress: Duration,
}

/// The stack of a tokio worker thread, where the node decodes frames.
const DECODE_STACK_BYTES: usize = 2 << 20;

/// Crashes printed in full; later ones get one line each.
const CRASHES_PRINTED_MAX: u64 = 5;

fn main() -> Result<()> {
    let args = Args::parse();
    let seed = args.seed.unwrap_or_else(clock_seed);
    if let Some(iteration) = args.replay {
        return replay(seed, iteration);
    }
    install_panic_hook();
    println!(
        "fuzz-codec: seed {seed}, duration {:?}, decoding on {} KiB stacks",
        args.duration,
        DECODE_STACK_BYTES >> 10
    );
    let worker = std::thread::Builder::new()
        .name(format!("fuzz-codec seed={seed}"))
        .stack_size(DECODE_STACK_BYTES)
        .spawn(move || run(seed, args.duration, args.progress))
        .context("starting the fuzz thread")?;
    let stats = worker
        .join()
        .map_err(|_| anyhow::anyhow!("the fuzz loop itself panicked"))?;
    stats.print_summary(seed);
    if stats.crashes > 0 {
        println!("replay one with --seed {seed} --replay <iteration>");
        std::process::exit(1);
    }
    Ok(())
}

fn clock_seed() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
}

/// A duration as the node's `--duration` takes it: `90s`, `10m`, `1h30m`, or bare seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    match s.parse::<u64>() {
        Ok(secs) => Ok(Duration::from_secs(secs)),
        Err(_) => humantime::parse_duration(s)
            .map_err(|e| format!("{s:?} is not a duration like 30s, 10m or 1h: {e}")),
    }
}

// ---------------------------------------------------------------------------------------
// The loop.

/// What a run did.
#[derive(Default)]
struct Stats {
    iterations: u64,
    /// Decode attempts: each direct decode and each frame taken from a decoder.
    inputs: u64,
    crashes: u64,
    by_kind: BTreeMap<&'static str, u64>,
    /// Messages that decoded from hostile (not round-trip) inputs.
    hostile_decoded: u64,
    variants: BTreeMap<&'static str, u64>,
    elapsed: Duration,
}

impl Stats {
    fn print_progress(&self) {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        println!(
            "[{:>6.0}s] iterations {} ({:.0}/s), inputs {} ({:.0}/s), crashes {}",
            secs,
            self.iterations,
            self.iterations as f64 / secs,
            self.inputs,
            self.inputs as f64 / secs,
            self.crashes
        );
    }

    fn print_summary(&self, seed: u64) {
        println!("fuzz-codec summary (seed {seed}):");
        self.print_progress();
        let kinds: Vec<String> = self
            .by_kind
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        println!("  by kind: {}", kinds.join(", "));
        println!(
            "  Message variants generated: {}/{}",
            self.variants.len(),
            MESSAGE_VARIANTS
        );
        println!(
            "  messages decoded from hostile input: {}",
            self.hostile_decoded
        );
        if let Some(kib) = peak_rss_kib() {
            println!("  peak resident memory: {} MiB", kib >> 10);
        }
        println!("  crashes: {}", self.crashes);
    }
}

fn run(seed: u64, duration: Duration, progress: Duration) -> Stats {
    let start = Instant::now();
    let mut next_report = progress;
    let mut stats = Stats::default();
    loop {
        stats.elapsed = start.elapsed();
        if stats.elapsed >= duration {
            return stats;
        }
        if stats.elapsed >= next_report {
            stats.print_progress();
            next_report += progress;
        }
        let iteration = stats.iterations;
        let input = Input::generate(seed, iteration, &mut stats);
        *stats.by_kind.entry(input.kind.name()).or_default() += 1;
        let outcome = if input.kind == Kind::Deep {
            on_own_thread(seed, iteration, &input)
        } else {
            panic::catch_unwind(AssertUnwindSafe(|| input.check())).map_err(|_| take_panic_report())
        };
        match outcome {
            Ok(tally) => {
                stats.inputs += tally.inputs;
                stats.hostile_decoded += tally.hostile_decoded;
            }
            Err(report) => {
                stats.crashes += 1;
                print_crash(seed, iteration, &input, &report, stats.crashes);
            }
        }
        stats.iterations += 1;
    }
}

/// Checks a deep input on a thread named after it, so that a stack overflow, which aborts
/// the process, still says which input it was.
fn on_own_thread(seed: u64, iteration: u64, input: &Input) -> Result<Tally, String> {
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name(format!("fuzz-codec seed={seed} iteration={iteration}"))
            .stack_size(DECODE_STACK_BYTES)
            .spawn_scoped(scope, || input.check())
            .map_err(|e| format!("cannot start a thread: {e}"))?
            .join()
            .map_err(|_| take_panic_report())
    })
}

fn print_crash(seed: u64, iteration: u64, input: &Input, report: &str, nth: u64) {
    println!(
        "CRASH seed={seed} iteration={iteration} kind={} ({} bytes)",
        input.kind.name(),
        input.bytes.len()
    );
    if nth > CRASHES_PRINTED_MAX {
        return;
    }
    println!("{report}");
    println!("  input: {}", input.describe(512));
    println!(
        "  replay: cargo run --release -p detflow-benches --bin fuzz-codec -- --seed {seed} --replay {iteration}"
    );
}

fn replay(seed: u64, iteration: u64) -> Result<()> {
    let input = Input::generate(seed, iteration, &mut Stats::default());
    let chunks = if input.chunks == [usize::MAX] {
        "all at once".to_owned()
    } else {
        format!("in chunks of {:?} bytes", input.chunks)
    };
    println!(
        "seed {seed} iteration {iteration}: kind {}, pushed {chunks}",
        input.kind.name()
    );
    println!("input: {}", input.describe(usize::MAX));
    let tally = std::thread::Builder::new()
        .name(format!("fuzz-codec seed={seed} iteration={iteration}"))
        .stack_size(DECODE_STACK_BYTES)
        .spawn(move || input.check())
        .context("starting the replay thread")?
        .join()
        .map_err(|_| anyhow::anyhow!("the input crashed (the panic is printed above)"))?;
    println!(
        "no crash: {} decode attempts, {} messages decoded from hostile input",
        tally.inputs, tally.hostile_decoded
    );
    Ok(())
}

/// The last panic's message, place and stack, recorded by the hook for the loop to print
/// next to the input that caused it.
static PANIC_REPORT: Mutex<Option<String>> = Mutex::new(None);

fn install_panic_hook() {
    panic::set_hook(Box::new(|info| {
        let stack = std::backtrace::Backtrace::force_capture().to_string();
        let report = format!("  panic: {info}\n  stack:\n{}", trim_stack(&stack));
        if let Ok(mut slot) = PANIC_REPORT.lock() {
            *slot = Some(report);
        }
    }));
}

/// Frames below the panic machinery (this hook, `panic_fmt`), at most 40 of them.
fn trim_stack(stack: &str) -> String {
    let lines: Vec<&str> = stack.lines().collect();
    let start = lines
        .iter()
        .rposition(|l| l.contains("panicking::panic"))
        .map_or(0, |i| i + 2);
    let mut frames = 0;
    let mut out = String::new();
    for line in lines.get(start..).unwrap_or_default() {
        if !line.trim_start().starts_with("at ") {
            frames += 1;
            if frames > 40 {
                out.push_str("      …\n");
                break;
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

fn take_panic_report() -> String {
    PANIC_REPORT
        .lock()
        .ok()
        .and_then(|mut slot| slot.take())
        .unwrap_or_else(|| "  panic: (no report)".to_owned())
}

/// Peak resident set size, from Linux's `/proc/self/status`.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

// ---------------------------------------------------------------------------------------
// Inputs and their checks.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    RoundTrip,
    Stream,
    Mutated,
    Body,
    Document,
    Deep,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::RoundTrip => "round-trip",
            Kind::Stream => "stream",
            Kind::Mutated => "mutated",
            Kind::Body => "body",
            Kind::Document => "document",
            Kind::Deep => "deep",
        }
    }
}

/// One input: bytes, how to feed them, and for a round trip the messages they must give.
struct Input {
    kind: Kind,
    bytes: Vec<u8>,
    /// The decoder's limit.
    max: u32,
    /// Sizes of the pushes into the decoder, cycled.
    chunks: Vec<usize>,
    /// For a round trip: what the frames must decode to.
    expected: Option<Vec<Message>>,
}

/// What checking one input did.
struct Tally {
    inputs: u64,
    hostile_decoded: u64,
}

impl Input {
    /// The input of `iteration` of the run seeded `seed`: a function of the two alone.
    fn generate(seed: u64, iteration: u64, stats: &mut Stats) -> Input {
        let rng = &mut DetRng::new(mix(seed, iteration));
        let max = if rng.chance(0.5) {
            rng.below(65) as u32
        } else {
            DEFAULT_MAX_FRAME_BYTES
        };
        let chunks = chunk_sizes(rng);
        let (kind, bytes, expected) = match rng.below(16) {
            0..=3 => {
                let msgs: Vec<Message> = (0..rng.range(1, 3)).map(|_| message(rng)).collect();
                for msg in &msgs {
                    *stats.variants.entry(message_variant(msg)).or_default() += 1;
                }
                let wire = msgs.iter().flat_map(frame_of).collect();
                (Kind::RoundTrip, wire, Some(msgs))
            }
            4..=6 => (Kind::Stream, stream(rng), None),
            7..=9 => (Kind::Mutated, mutated(rng), None),
            10..=11 => (Kind::Body, bytes(rng, 256), None),
            12..=14 => {
                let mut out = Vec::new();
                document(rng, 6, &mut out);
                (Kind::Document, out, None)
            }
            _ => {
                let shape = rng.below(SHAPES as u64) as usize;
                let depth = *rng.pick(&[1_000, 1_023, 1_024, 1_025, 5_000, 100_000, 200_000]);
                (Kind::Deep, nested(shape, depth), None)
            }
        };
        let max = if expected.is_some() {
            DEFAULT_MAX_FRAME_BYTES
        } else {
            max
        };
        Input {
            kind,
            bytes,
            max,
            chunks,
            expected,
        }
    }

    fn framed(&self) -> bool {
        matches!(self.kind, Kind::RoundTrip | Kind::Stream | Kind::Mutated)
    }

    /// Panics on a violated property; returns normally for any `Ok` or `Err` of the codec.
    fn check(&self) -> Tally {
        let mut tally = Tally {
            inputs: 0,
            hostile_decoded: 0,
        };
        if let Some(expected) = &self.expected {
            for msg in expected {
                assert_eq!(
                    &codec::decode::<Message>(&codec::encode(msg))
                        .unwrap_or_else(|e| panic!("{e}")),
                    msg
                );
                assert_eq!(
                    &codec::decode::<Message>(&codec::encode_named(msg))
                        .unwrap_or_else(|e| panic!("{e}")),
                    msg
                );
            }
            let mut decoder = FrameDecoder::new(self.max);
            let got = drive(
                &mut decoder,
                self.max,
                &self.bytes,
                &self.chunks,
                &mut tally,
            );
            assert_eq!(got.as_ref(), Ok(expected), "round trip");
            assert_eq!(decoder.buffered(), 0);
            return tally;
        }
        let (framed, body) = if self.framed() {
            (self.bytes.clone(), self.bytes.get(4..).unwrap_or_default())
        } else {
            let mut framed = (self.bytes.len() as u32).to_be_bytes().to_vec();
            framed.extend(&self.bytes);
            (framed, &self.bytes[..])
        };
        let mut decoder = FrameDecoder::new(self.max);
        if let Ok(msgs) = drive(&mut decoder, self.max, &framed, &self.chunks, &mut tally) {
            tally.hostile_decoded += msgs.len() as u64;
            msgs.iter().for_each(check_decoded);
        }
        decode_as_every_type(body, &mut tally);
        tally
    }

    /// Hex of the first `limit` bytes.
    fn describe(&self, limit: usize) -> String {
        let shown: String = self
            .bytes
            .iter()
            .take(limit)
            .map(|b| format!("{b:02x}"))
            .collect();
        let more = if self.bytes.len() > limit { "…" } else { "" };
        format!(
            "{} bytes, limit {}: {shown}{more}",
            self.bytes.len(),
            self.max
        )
    }
}

fn decode_as_every_type(body: &[u8], tally: &mut Tally) {
    tally.inputs += 6;
    if let Ok(msg) = codec::decode::<Message>(body) {
        tally.hostile_decoded += 1;
        check_decoded(&msg);
    }
    let _ = codec::decode::<PeerMessage>(body);
    let _ = codec::decode::<Batch>(body);
    let _ = codec::decode::<Plan>(body);
    let _ = codec::decode::<Transaction>(body);
    if let Ok(key) = codec::decode::<Key>(body) {
        poke_key(&key);
    }
}

/// Pushes `wire` into `decoder` in chunks (sizes cycled), taking every complete message
/// after each push as a reader does. Asserts that the decoder holds less than one maximal
/// frame while it waits, and that a failed stream stays failed.
fn drive(
    decoder: &mut FrameDecoder,
    max: u32,
    wire: &[u8],
    chunks: &[usize],
    tally: &mut Tally,
) -> Result<Vec<Message>, FrameError> {
    let mut got = Vec::new();
    let mut rest = wire;
    for chunk in chunks.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (now, later) = rest.split_at((*chunk).clamp(1, rest.len()));
        decoder.push(now);
        rest = later;
        loop {
            match decoder.next_frame::<Message>() {
                Ok(Some(msg)) => {
                    tally.inputs += 1;
                    got.push(msg);
                }
                Ok(None) => break,
                Err(e) => {
                    tally.inputs += 1;
                    assert!(
                        decoder.next_frame::<Message>().is_err(),
                        "failure is sticky"
                    );
                    return Err(e);
                }
            }
        }
        assert!(
            decoder.buffered() < 4 + max as usize,
            "{} bytes buffered with a limit of {max}",
            decoder.buffered()
        );
    }
    Ok(got)
}

/// A value decoded from untrusted bytes prints (walking every key through the tuple
/// decoder) and survives another trip through the codec unchanged.
fn check_decoded(msg: &Message) {
    let _ = format!("{msg:?}");
    let again: Message = codec::decode(&codec::encode(msg)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(&again, msg, "decode(encode(m)) != m for a decoded m");
}

/// Exercises the key API on a key that may not be well-formed (keys decode unchecked).
fn poke_key(key: &Key) {
    let _ = (
        key.elems(),
        key.validate(),
        key.table_name(),
        key.is_system(),
    );
    let _ = key.to_string();
    for n in 0..4 {
        let _ = key.prefix_len(n);
    }
    let _ = key.starts_with(&Key::table("t"));
}

/// SplitMix64 of the seed and the iteration: independent streams for neighbouring
/// iterations, so any one can be replayed alone.
fn mix(seed: u64, iteration: u64) -> u64 {
    let mut z = seed ^ iteration.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn frame_of(msg: &Message) -> Vec<u8> {
    frame::encode(msg, DEFAULT_MAX_FRAME_BYTES).unwrap_or_else(|e| panic!("{e}"))
}

/// Sizes of successive pushes: everything at once (the input's length), a few bytes at a
/// time, or a few hundred.
fn chunk_sizes(rng: &mut DetRng) -> Vec<usize> {
    match rng.below(3) {
        0 => vec![usize::MAX],
        1 => (0..rng.range(1, 5))
            .map(|_| rng.range(1, 8) as usize)
            .collect(),
        _ => (0..rng.range(1, 5))
            .map(|_| rng.range(1, 300) as usize)
            .collect(),
    }
}

// ---------------------------------------------------------------------------------------
// Hostile bytes.

/// Noise, length prefixes with bodies of about that length, bare prefixes and valid
/// frames, concatenated.
fn stream(rng: &mut DetRng) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..rng.below(6) {
        match rng.below(6) {
            0 | 1 => out.extend(bytes(rng, 64)),
            2 | 3 => {
                let body = bytes(rng, 48);
                let len = (body.len() as u64 + rng.below(5)).saturating_sub(2) as u32;
                out.extend(len.to_be_bytes());
                out.extend(body);
            }
            4 => out.extend((rng.next_u64() as u32).to_be_bytes()),
            _ => out.extend(frame_of(&message(rng))),
        }
    }
    out
}

/// MessagePack markers, the likely bytes to break a structure with.
const MARKERS: &[u8] = &[
    0x80, 0x81, 0x90, 0x91, 0x9f, 0xa0, 0xc0, 0xc1, 0xc2, 0xc3, 0xc4, 0xc5, 0xc6, 0xcc, 0xcd, 0xce,
    0xcf, 0xd9, 0xda, 0xdb, 0xdc, 0xdd, 0xde, 0xdf, 0xff, 0x7f,
];

fn marker(rng: &mut DetRng) -> u8 {
    if rng.chance(0.5) {
        *rng.pick(MARKERS)
    } else {
        rng.next_u64() as u8
    }
}

/// A real frame with one to four edits.
fn mutated(rng: &mut DetRng) -> Vec<u8> {
    let mut wire = frame_of(&message(rng));
    for _ in 0..rng.range(1, 4) {
        let n = wire.len();
        let at = rng.next_u64() as usize;
        match rng.below(8) {
            0 if n > 0 => wire[at % n] ^= 1 << rng.below(8),
            1 if n > 0 => wire[at % n] = marker(rng),
            2 => {
                let byte = marker(rng);
                wire.insert(at % (n + 1), byte);
            }
            3 if n > 0 => {
                wire.remove(at % n);
            }
            4 => wire.truncate(at % (n + 1)),
            5 if n >= 4 => {
                let len = if rng.chance(0.5) {
                    rng.next_u64() as u32
                } else {
                    rng.below(512) as u32
                };
                wire[..4].copy_from_slice(&len.to_be_bytes());
            }
            6 if n >= 4 => {
                let len = u32::from_be_bytes([wire[0], wire[1], wire[2], wire[3]]);
                let len = len.wrapping_add(rng.below(7) as u32).wrapping_sub(3);
                wire[..4].copy_from_slice(&len.to_be_bytes());
            }
            7 if n > 0 => {
                let from = at % n;
                let run = wire[from..(from + rng.range(1, 16) as usize).min(n)].to_vec();
                let to = rng.below(n as u64) as usize;
                let end = (to + run.len()).min(n);
                wire[to..end].copy_from_slice(&run[..end - to]);
            }
            _ => {}
        }
    }
    wire
}

/// Names the decoder looks for: variant tags and field names.
const NAMES: &str = "Ack Call Duplicate Hello NotLeader OpenSession Peer Plan Query RemoteReads Reply \
    Result ResultUnknown SessionCall SessionOpened Status StatusReply Submit Subscribe Tables \
    TablesReply \
    AppendEntries AppendReply RequestVote Vote Done Rejected Unavailable Aborted \
    Committed BadArgs BadValue ValueTooLarge Exact Prefix Read Write Insert Partition \
    Replicated client seq procedure args from to durable txn leader msg term entries \
    batch txns epoch footprint gateway reads exact prefixes position outcome reply \
    result recovered replica partitions owners participants active rejected version \
    partition key group index token call chunk chunks";

static NAME_LIST: LazyLock<Vec<&str>> = LazyLock::new(|| NAMES.split_whitespace().collect());

fn put_str(out: &mut Vec<u8>, s: &str) {
    match s.len() {
        len @ 0..32 => out.push(0xa0 | len as u8),
        len @ 32..256 => out.extend([0xd9, len as u8]),
        len => {
            out.push(0xda);
            out.extend((len as u16).to_be_bytes());
        }
    }
    out.extend_from_slice(s.as_bytes());
}

/// Appends one well-formed MessagePack value, containers at most `depth` deep.
fn document(rng: &mut DetRng, depth: u32, out: &mut Vec<u8>) {
    let container = depth > 0 && rng.chance(0.5);
    if !container {
        match rng.below(8) {
            0 => out.push(0xc0),
            1 => out.push(0xc2 | rng.below(2) as u8),
            2 => out.push(rng.below(128) as u8),
            3 => {
                out.push(*rng.pick(&[0xcc, 0xcd, 0xce, 0xcf, 0xd0, 0xd1, 0xd2, 0xd3]));
                let width = 1 << (out[out.len() - 1] & 3);
                out.extend(&rng.next_u64().to_be_bytes()[8 - width..]);
            }
            4 => {
                out.push(0xcb);
                out.extend(rng.next_u64().to_be_bytes());
            }
            5 => {
                let raw = bytes(rng, 12);
                out.extend([0xc4, raw.len() as u8]);
                out.extend(raw);
            }
            _ => {
                let name = if rng.chance(0.75) {
                    (*rng.pick(&NAME_LIST)).to_owned()
                } else {
                    text(rng)
                };
                put_str(out, &name);
            }
        }
        return;
    }
    match rng.below(7) {
        0..=2 => {
            let len = rng.below(6) as u8;
            out.push(0x90 | len);
            (0..len).for_each(|_| document(rng, depth - 1, out));
        }
        3 => {
            let len = rng.below(4) as u8;
            out.push(0x80 | len);
            (0..2 * len).for_each(|_| document(rng, depth - 1, out));
        }
        _ => {
            // A one-entry map is how an enum variant travels.
            out.push(0x81);
            let name = *rng.pick(&NAME_LIST);
            put_str(out, name);
            document(rng, depth - 1, out);
        }
    }
}

/// How many places `nested` can bury a deep value.
const SHAPES: usize = 8;

/// A document that nests `depth` containers in one of `SHAPES` places where a `Message`
/// decoder meets it (the same shapes as `protocol/tests/fuzz_codec.rs`).
fn nested(shape: usize, depth: usize) -> Vec<u8> {
    let mut out = Vec::new();
    // `{name: ...}` for each name: a variant tag or a field name in map form.
    let path = |out: &mut Vec<u8>, names: &[&str]| {
        for name in names {
            out.push(0x81);
            put_str(out, name);
        }
    };
    let mut array_of_one: &[u8] = &[0x91];
    match shape {
        // The message itself.
        0 => {}
        // An unknown field of a struct variant in map form: skipped with `IgnoredAny`.
        1 => path(&mut out, &["Call", "zz"]),
        // The same with `{nil: {nil: ...}}` and with 16-bit array markers.
        2 => {
            path(&mut out, &["Ack", "zz"]);
            array_of_one = &[0x81, 0xc0];
        }
        3 => {
            path(&mut out, &["Hello", "zz"]);
            array_of_one = &[0xdc, 0x00, 0x01];
        }
        // Two levels down: a plan's routed transaction, in map form.
        4 => {
            path(&mut out, &["Plan", "txns"]);
            out.push(0x91);
            path(&mut out, &["zz"]);
        }
        // A peer message's unknown field.
        5 => path(&mut out, &["Peer", "msg", "Vote", "zz"]),
        // The variant tag position, and the payload of a unit variant.
        6 => out.push(0x81),
        _ => path(&mut out, &["Status"]),
    }
    for _ in 0..depth {
        out.extend_from_slice(array_of_one);
    }
    out.push(0xc0);
    out
}

// ---------------------------------------------------------------------------------------
// Values of every type, every field drawn.

fn bytes(rng: &mut DetRng, max: u64) -> Vec<u8> {
    (0..rng.below(max + 1))
        .map(|_| rng.next_u64() as u8)
        .collect()
}

/// Mostly short names, sometimes arbitrary Unicode scalar values.
/// A table schema with random fields, partitioned by any rule.
fn table(rng: &mut DetRng) -> Table {
    const TYPES: [FieldType; 7] = [
        FieldType::U64,
        FieldType::I64,
        FieldType::Str,
        FieldType::Bytes,
        FieldType::Bool,
        FieldType::F64,
        FieldType::Any,
    ];
    let rule = match rng.below(3) {
        0 => TableRule::Hash {
            fields: rng.next_u64() as u32,
        },
        1 => TableRule::Range {
            splits: (0..rng.below(3)).map(|_| key(rng)).collect(),
        },
        _ => TableRule::Replicated,
    };
    let mut table = Table::new(&text(rng)).rule(rule);
    for _ in 0..rng.below(4) {
        table = table.key(&text(rng), TYPES[rng.below(7) as usize]);
    }
    for _ in 0..rng.below(6) {
        table = table.column(&text(rng), TYPES[rng.below(7) as usize]);
    }
    table
}

fn text(rng: &mut DetRng) -> String {
    let len = rng.below(13);
    if rng.chance(0.75) {
        const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz_.";
        (0..len).map(|_| *rng.pick(ALPHABET) as char).collect()
    } else {
        (0..len)
            .filter_map(|_| char::from_u32(rng.below(0x11_0000) as u32))
            .collect()
    }
}

fn epoch(rng: &mut DetRng) -> Epoch {
    Epoch(rng.next_u64())
}

fn partition(rng: &mut DetRng) -> PartitionId {
    PartitionId(rng.next_u64() as u32)
}

fn node(rng: &mut DetRng) -> NodeId {
    NodeId(rng.next_u64() as u32)
}

fn client(rng: &mut DetRng) -> ClientId {
    ClientId(rng.next_u64())
}

fn request_seq(rng: &mut DetRng) -> RequestSeq {
    RequestSeq(rng.next_u64())
}

fn position(rng: &mut DetRng) -> Position {
    Position {
        epoch: epoch(rng),
        group: rng.next_u64() as u16,
        index: rng.next_u64() as u32,
    }
}

fn option<T>(rng: &mut DetRng, f: impl FnOnce(&mut DetRng) -> T) -> Option<T> {
    rng.chance(0.5).then(|| f(rng))
}

fn list<T>(rng: &mut DetRng, max: u64, mut f: impl FnMut(&mut DetRng) -> T) -> Vec<T> {
    (0..rng.below(max + 1)).map(|_| f(rng)).collect()
}

fn elem(rng: &mut DetRng) -> Elem {
    match rng.below(4) {
        0 => Elem::Bytes(bytes(rng, 6)),
        1 => Elem::Str(text(rng)),
        2 => Elem::I64(rng.next_u64() as i64),
        _ => Elem::U64(rng.next_u64()),
    }
}

/// A key from the `Key` API, or raw bytes (what a peer can put on the wire).
fn key(rng: &mut DetRng) -> Key {
    match rng.below(5) {
        0..=2 => {
            let table = text(rng);
            list(rng, 3, elem)
                .iter()
                .fold(Key::table(&table), Key::elem)
        }
        3 => Key::from_elems(&list(rng, 3, elem)),
        _ => codec::decode(&codec::encode(&Blob(&bytes(rng, 16))))
            .unwrap_or_else(|e| panic!("a key decodes from any bin: {e}")),
    }
}

fn footprint(rng: &mut DetRng) -> Footprint {
    let entries = list(rng, 3, |rng| {
        let key = key(rng);
        let spec = if rng.chance(0.5) {
            KeySpec::Exact(key)
        } else {
            KeySpec::Prefix(key)
        };
        (
            spec,
            *rng.pick(&[Access::Read, Access::Write, Access::Insert]),
        )
    });
    Footprint {
        entries,
        calls: Vec::new(),
    }
}

fn transaction(rng: &mut DetRng) -> Transaction {
    Transaction {
        client: client(rng),
        seq: request_seq(rng),
        gateway: node(rng),
        procedure: text(rng),
        args: bytes(rng, 24),
        footprint: footprint(rng),
    }
}

fn batch(rng: &mut DetRng) -> Batch {
    Batch {
        version: rng.next_u64() as u16,
        epoch: epoch(rng),
        txns: list(rng, 2, |rng| Arc::new(transaction(rng))),
    }
}

fn peer_message(rng: &mut DetRng) -> PeerMessage {
    match rng.below(8) {
        6 => PeerMessage::InstallSnapshot {
            term: Term(rng.next_u64()),
            leader: node(rng),
            epoch: epoch(rng),
            last_term: Term(rng.next_u64()),
            offset: rng.next_u64(),
            total: rng.next_u64(),
            windows: list(rng, 2, |rng| ClientWindow {
                client: client(rng),
                contiguous: rng.next_u64(),
                above: list(rng, 3, |rng| rng.next_u64()),
            }),
        },
        7 => PeerMessage::SnapshotReply {
            term: Term(rng.next_u64()),
            epoch: epoch(rng),
            received: rng.next_u64(),
            installed: rng.chance(0.5),
        },
        4 => PeerMessage::PreVote {
            term: Term(rng.next_u64()),
            candidate: node(rng),
            last_epoch: epoch(rng),
            last_term: Term(rng.next_u64()),
        },
        5 => PeerMessage::PreVoteReply {
            term: Term(rng.next_u64()),
            granted: rng.chance(0.5),
        },
        0 => PeerMessage::AppendEntries {
            term: Term(rng.next_u64()),
            leader: node(rng),
            prev_epoch: epoch(rng),
            prev_term: Term(rng.next_u64()),
            entries: list(rng, 2, |rng| LogEntry {
                term: Term(rng.next_u64()),
                batch: Arc::new(batch(rng)),
            }),
            leader_commit: epoch(rng),
        },
        1 => PeerMessage::AppendReply {
            term: Term(rng.next_u64()),
            success: rng.chance(0.5),
            match_epoch: epoch(rng),
            conflict_term: option(rng, |rng| Term(rng.next_u64())),
        },
        2 => PeerMessage::RequestVote {
            term: Term(rng.next_u64()),
            candidate: node(rng),
            last_epoch: epoch(rng),
            last_term: Term(rng.next_u64()),
        },
        _ => PeerMessage::Vote {
            term: Term(rng.next_u64()),
            granted: rng.chance(0.5),
        },
    }
}

fn abort_reason(rng: &mut DetRng) -> AbortReason {
    match rng.below(13) {
        0 => AbortReason::BadArgs(text(rng)),
        11 => AbortReason::BadLetter {
            procedure: text(rng),
            reason: text(rng),
        },
        1 => AbortReason::BadValue {
            key: key(rng),
            error: text(rng),
        },
        2 => AbortReason::OutsideFootprint {
            key: key(rng),
            write: rng.chance(0.5),
        },
        3 => AbortReason::ReplicatedWrite { key: key(rng) },
        4 => AbortReason::UnknownProcedure(text(rng)),
        5 => AbortReason::Unroutable(text(rng)),
        6 => AbortReason::User(text(rng)),
        7 => AbortReason::FootprintChanged(text(rng)),
        8 => AbortReason::Panicked(text(rng)),
        9 => AbortReason::Overflow(text(rng)),
        10 => AbortReason::BadKey(text(rng)),
        _ => AbortReason::ValueTooLarge {
            key: key(rng),
            bytes: rng.next_u64() as usize,
            max: rng.next_u64() as usize,
        },
    }
}

fn outcome(rng: &mut DetRng) -> Outcome {
    if rng.chance(0.5) {
        Outcome::Aborted(abort_reason(rng))
    } else {
        Outcome::Committed(bytes(rng, 16))
    }
}

fn rejection(rng: &mut DetRng) -> Rejection {
    match rng.below(9) {
        0 => Rejection::BadArgs(text(rng)),
        1 => Rejection::FootprintTooLarge {
            entries: rng.next_u64() as usize,
            max: rng.next_u64() as usize,
        },
        2 => Rejection::UnknownProcedure(text(rng)),
        3 => Rejection::BadKey(text(rng)),
        4 => Rejection::CallTooLarge {
            bytes: rng.next_u64() as usize,
            max: rng.next_u64() as usize,
        },
        5 => Rejection::Unauthorized(text(rng)),
        6 => Rejection::ForeignSession(rng.next_u64()),
        7 => Rejection::Overloaded(text(rng)),
        _ => Rejection::ForeignTable {
            procedure: text(rng),
            table: text(rng),
            owner: rng.chance(0.5).then(|| text(rng)),
        },
    }
}

fn reply(rng: &mut DetRng) -> Reply {
    match rng.below(3) {
        0 => Reply::Done {
            position: position(rng),
            outcome: outcome(rng),
        },
        1 => Reply::Rejected(rejection(rng)),
        _ => Reply::Unavailable,
    }
}

fn remote_reads(rng: &mut DetRng) -> RemoteReads {
    RemoteReads {
        position: position(rng),
        from: partition(rng),
        exact: list(rng, 2, |rng| (key(rng), option(rng, |rng| bytes(rng, 8)))),
        prefixes: list(rng, 1, |rng| {
            (key(rng), list(rng, 2, |rng| (key(rng), bytes(rng, 8))))
        }),
        chunk: rng.next_u64() as u32,
        chunks: rng.next_u64() as u32,
    }
}

fn node_status(rng: &mut DetRng) -> NodeStatus {
    NodeStatus {
        node: node(rng),
        replica: option(rng, |rng| (rng.next_u64(), option(rng, node), epoch(rng))),
        partitions: list(rng, 3, |rng| (partition(rng), epoch(rng), epoch(rng))),
        calls_answered: rng.next_u64(),
        uptime_us: rng.next_u64(),
        rows_loaded: rng.next_u64(),
        warehouses_loaded: rng.next_u64() as u32,
        determinism_failures: rng.next_u64(),
        last_divergence: option(rng, |rng| format!("{}", rng.next_u64())),
        digests: list(rng, 3, |rng| {
            (partition(rng), epoch(rng), format!("{:x}", rng.next_u64()))
        }),
        log_start: epoch(rng),
    }
}

fn plan(rng: &mut DetRng) -> Plan {
    let routed = |rng: &mut DetRng| RoutedTxn {
        position: position(rng),
        txn: Arc::new(transaction(rng)),
        owners: list(rng, 3, |rng| {
            if rng.chance(0.5) {
                Owner::Partition(partition(rng))
            } else {
                Owner::Replicated
            }
        }),
        participants: list(rng, 2, partition),
        active: list(rng, 2, partition),
        rejected: option(rng, abort_reason),
    };
    Plan {
        version: rng.next_u64() as u16,
        epoch: epoch(rng),
        partition: partition(rng),
        txns: list(rng, 2, |rng| Arc::new(routed(rng))),
    }
}

fn call(rng: &mut DetRng) -> Call {
    Call {
        client: client(rng),
        seq: request_seq(rng),
        procedure: text(rng),
        args: bytes(rng, 32),
    }
}

fn token(rng: &mut DetRng) -> SessionToken {
    let mut raw = [0u8; 16];
    raw.iter_mut().for_each(|b| *b = rng.next_u64() as u8);
    SessionToken(raw)
}

/// How many variants `Message` has; [`message`] draws each with equal chance.
const MESSAGE_VARIANTS: usize = 39;

fn offset(rng: &mut DetRng) -> Offset {
    Offset {
        position: position(rng),
        index: rng.next_u64() as u32,
    }
}

fn stream_events(rng: &mut DetRng) -> Vec<StreamEvent> {
    (0..rng.below(3))
        .map(|_| StreamEvent {
            offset: offset(rng),
            data: text(rng).into_bytes(),
        })
        .collect()
}

fn stream_reply(rng: &mut DetRng) -> StreamReply {
    match rng.below(3) {
        0 => StreamReply::Events {
            events: stream_events(rng),
            next: offset(rng),
        },
        1 => StreamReply::Unavailable,
        _ => StreamReply::Refused(text(rng)),
    }
}

fn delivery(rng: &mut DetRng) -> Delivery {
    let letters = (0..rng.below(3))
        .map(|_| Letter {
            procedure: text(rng),
            args: text(rng).into_bytes(),
        })
        .collect();
    let refused = (0..rng.below(2))
        .map(|_| (rng.next_u64() as u32, text(rng)))
        .collect();
    Delivery {
        from: partition(rng),
        batch: rng.next_u64(),
        first: rng.next_u64(),
        letters,
        refused,
    }
}

fn message(rng: &mut DetRng) -> Message {
    match rng.below(MESSAGE_VARIANTS as u64) {
        0 => Message::Ack {
            from: partition(rng),
            node: node(rng),
            to: partition(rng),
            durable: epoch(rng),
        },
        1 => Message::Call(call(rng)),
        2 => Message::Duplicate {
            client: client(rng),
            seq: request_seq(rng),
        },
        3 => Message::Hello {
            from: partition(rng),
            node: node(rng),
            to: partition(rng),
            durable: epoch(rng),
        },
        4 => Message::NotLeader {
            from: node(rng),
            txn: Arc::new(transaction(rng)),
            leader: option(rng, node),
        },
        5 => Message::OpenSession,
        6 => Message::Peer {
            from: node(rng),
            msg: peer_message(rng),
        },
        7 => Message::Plan(Arc::new(plan(rng))),
        8 => Message::Query {
            client: client(rng),
            seq: request_seq(rng),
            partition: partition(rng),
            gateway: node(rng),
        },
        9 => Message::RemoteReads {
            to: partition(rng),
            reads: Arc::new(remote_reads(rng)),
        },
        10 => Message::Reply {
            client: client(rng),
            seq: request_seq(rng),
            reply: reply(rng),
        },
        11 => Message::Result {
            from: partition(rng),
            result: TxnResult {
                client: client(rng),
                seq: request_seq(rng),
                position: position(rng),
                outcome: outcome(rng),
            },
            recovered: rng.chance(0.5),
        },
        12 => Message::ResultUnknown {
            client: client(rng),
            seq: request_seq(rng),
        },
        13 => Message::SessionCall {
            token: token(rng),
            call: call(rng),
        },
        14 => Message::SessionOpened {
            client: client(rng),
            token: token(rng),
        },
        15 => Message::Status,
        16 => Message::StatusReply(node_status(rng)),
        17 => Message::Submit(Arc::new(transaction(rng))),
        18 => Message::Deliver(delivery(rng)),
        19 => Message::Events(stream_reply(rng)),
        20 => Message::ReadStream {
            stream: text(rng),
            from: offset(rng),
            max: rng.next_u64() as u32,
        },
        21 => Message::StreamPart {
            read: rng.next_u64(),
            part: StreamPart {
                partition: partition(rng),
                events: stream_events(rng),
                applied: epoch(rng),
                complete: rng.chance(0.5),
            },
        },
        22 => Message::StreamQuery {
            partition: partition(rng),
            read: rng.next_u64(),
            gateway: node(rng),
            stream: text(rng),
            from: offset(rng),
            max: rng.next_u64() as u32,
        },
        23 => Message::Snapshot(match rng.below(4) {
            0 => SnapshotReply::Values {
                epoch: epoch(rng),
                values: snapshot_values(rng),
            },
            1 => SnapshotReply::Rows {
                epoch: epoch(rng),
                rows: snapshot_rows(rng),
                more: rng.chance(0.5),
            },
            2 => SnapshotReply::Epoch {
                epoch: epoch(rng),
                partitions: rng.next_u64() as u32,
            },
            _ => SnapshotReply::Failed(snapshot_error(rng)),
        }),
        24 => Message::SnapshotPart {
            read: rng.next_u64(),
            part: SnapshotPart {
                partition: partition(rng),
                applied: epoch(rng),
                oldest: epoch(rng),
                answer: match rng.below(4) {
                    0 => Ok(PartRows::Values {
                        epoch: epoch(rng),
                        values: snapshot_values(rng),
                    }),
                    1 => Ok(PartRows::Rows {
                        epoch: epoch(rng),
                        rows: snapshot_rows(rng),
                        more: rng.chance(0.5),
                    }),
                    2 => Ok(PartRows::Nothing),
                    _ => Err(snapshot_error(rng)),
                },
            },
        },
        25 => Message::SnapshotQuery {
            partition: partition(rng),
            read: rng.next_u64(),
            gateway: node(rng),
            at: match rng.chance(0.5) {
                true => PartAt::Latest {
                    not_before: epoch(rng),
                },
                false => PartAt::Epoch(epoch(rng)),
            },
            op: match rng.below(3) {
                0 => PartOp::Get(snapshot_keys(rng)),
                1 => PartOp::Scan {
                    range: scan_range(rng),
                    after: rng.chance(0.5).then(|| key(rng)),
                    limit: rng.next_u64() as u32,
                },
                _ => PartOp::Epoch,
            },
        },
        26 => Message::SnapshotRead(SnapshotRead {
            at: match rng.chance(0.5) {
                true => At::Latest {
                    not_before: epoch(rng),
                },
                false => At::Epoch(epoch(rng)),
            },
            op: match rng.below(3) {
                0 => SnapshotOp::Get(snapshot_keys(rng)),
                1 => SnapshotOp::Scan {
                    partition: partition(rng),
                    range: scan_range(rng),
                    after: rng.chance(0.5).then(|| key(rng)),
                    limit: rng.next_u64() as u32,
                },
                _ => SnapshotOp::Epoch,
            },
        }),
        27 => Message::Tables,
        28 => Message::TablesReply((0..rng.below(4)).map(|_| table(rng)).collect()),
        30 => Message::LogRead { from: epoch(rng) },
        31 => Message::LogReply(match rng.below(4) {
            0 => LogReply::Batches {
                commit: epoch(rng),
                batches: (0..rng.below(3)).map(|_| Arc::new(batch(rng))).collect(),
            },
            1 => LogReply::Compacted {
                log_start: epoch(rng),
            },
            2 => LogReply::Denied("reading the log takes an operator's certificate".into()),
            _ => LogReply::NoLog,
        }),
        29 => Message::Applied {
            partition: partition(rng),
            node: node(rng),
            durable: epoch(rng),
        },
        32 => Message::PlansCompacted {
            from: node(rng),
            partition: partition(rng),
            log_start: epoch(rng),
        },
        33 => Message::ReadsGone {
            from: partition(rng),
            node: node(rng),
            to: partition(rng),
            through: epoch(rng),
        },
        34 => Message::StateFetch {
            partition: partition(rng),
            node: node(rng),
            fetch: StateFetch {
                image: rng.chance(0.5).then(|| (epoch(rng), key(rng))),
            },
        },
        35 => Message::StateChunk {
            partition: partition(rng),
            node: node(rng),
            chunk: match rng.chance(0.8) {
                true => StateChunk::Rows {
                    epoch: epoch(rng),
                    after: rng.chance(0.5).then(|| key(rng)),
                    rows: (0..rng.below(4))
                        .map(|_| (key(rng), bytes(rng, 64)))
                        .collect(),
                    done: rng.chance(0.5),
                },
                false => StateChunk::Unavailable,
            },
        },
        36 => Message::Checkpoint { at: epoch(rng) },
        37 => Message::CheckpointReply(
            (0..rng.below(4))
                .map(|_| {
                    let answer = match rng.below(3) {
                        0 => CheckpointAnswer::Scheduled,
                        1 => CheckpointAnswer::TooLate {
                            applied: epoch(rng),
                        },
                        _ => CheckpointAnswer::Refused(text(rng)),
                    };
                    (partition(rng), answer)
                })
                .collect(),
        ),
        _ => Message::Subscribe {
            partition: partition(rng),
            node: node(rng),
            from: epoch(rng),
        },
    }
}

fn snapshot_keys(rng: &mut DetRng) -> Vec<Key> {
    (0..rng.below(3)).map(|_| key(rng)).collect()
}

fn snapshot_values(rng: &mut DetRng) -> Vec<Option<Vec<u8>>> {
    (0..rng.below(3))
        .map(|_| rng.chance(0.5).then(|| bytes(rng, 8)))
        .collect()
}

fn snapshot_rows(rng: &mut DetRng) -> Vec<(Key, Vec<u8>)> {
    (0..rng.below(3))
        .map(|_| (key(rng), bytes(rng, 8)))
        .collect()
}

fn scan_range(rng: &mut DetRng) -> ScanRange {
    ScanRange {
        prefix: key(rng),
        from: rng.chance(0.5).then(|| key(rng)),
        to: rng.chance(0.5).then(|| key(rng)),
    }
}

fn snapshot_error(rng: &mut DetRng) -> SnapshotError {
    match rng.below(4) {
        0 => SnapshotError::TooOld {
            asked: epoch(rng),
            oldest: epoch(rng),
        },
        1 => SnapshotError::NotYet {
            asked: epoch(rng),
            partition: partition(rng),
            applied: epoch(rng),
        },
        2 => SnapshotError::Unavailable,
        _ => SnapshotError::Refused(text(rng)),
    }
}

/// The variant's name. Matched exhaustively: a new variant fails to build here until
/// [`message`] draws it (and [`MESSAGE_VARIANTS`] counts it).
fn message_variant(msg: &Message) -> &'static str {
    match msg {
        Message::Ack { .. } => "Ack",
        Message::Call(_) => "Call",
        Message::Deliver(_) => "Deliver",
        Message::Events(_) => "Events",
        Message::ReadStream { .. } => "ReadStream",
        Message::StreamPart { .. } => "StreamPart",
        Message::StreamQuery { .. } => "StreamQuery",
        Message::Duplicate { .. } => "Duplicate",
        Message::Hello { .. } => "Hello",
        Message::NotLeader { .. } => "NotLeader",
        Message::OpenSession => "OpenSession",
        Message::Peer { .. } => "Peer",
        Message::Plan(_) => "Plan",
        Message::Query { .. } => "Query",
        Message::RemoteReads { .. } => "RemoteReads",
        Message::Reply { .. } => "Reply",
        Message::Result { .. } => "Result",
        Message::ResultUnknown { .. } => "ResultUnknown",
        Message::SessionCall { .. } => "SessionCall",
        Message::SessionOpened { .. } => "SessionOpened",
        Message::Snapshot(_) => "Snapshot",
        Message::SnapshotPart { .. } => "SnapshotPart",
        Message::SnapshotQuery { .. } => "SnapshotQuery",
        Message::SnapshotRead(_) => "SnapshotRead",
        Message::Status => "Status",
        Message::StatusReply(_) => "StatusReply",
        Message::Submit(_) => "Submit",
        Message::Subscribe { .. } => "Subscribe",
        Message::Applied { .. } => "Applied",
        Message::Tables => "Tables",
        Message::TablesReply(_) => "TablesReply",
        Message::LogRead { .. } => "LogRead",
        Message::LogReply(_) => "LogReply",
        Message::PlansCompacted { .. } => "PlansCompacted",
        Message::ReadsGone { .. } => "ReadsGone",
        Message::StateFetch { .. } => "StateFetch",
        Message::StateChunk { .. } => "StateChunk",
        Message::Checkpoint { .. } => "Checkpoint",
        Message::CheckpointReply(_) => "CheckpointReply",
    }
}
