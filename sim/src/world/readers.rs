//! Stream readers: consumers of the workload's egress streams, reading from the start
//! through any gateway while faults strike, as `Client::subscribe` does.

use super::*;
use detflow_protocol::stream::{Offset, StreamEvent, StreamReply};

/// How long a reader waits for an answer before it reads again through another gateway.
const READ_TIMEOUT_US: u64 = 3_000_000;

/// One consumer of one stream and what it read.
#[derive(Clone, Debug)]
pub(crate) struct Reader {
    pub(crate) stream: String,
    /// Where its next read starts.
    pub(crate) next: Offset,
    /// Every event read, in the order read.
    pub(crate) events: Vec<StreamEvent>,
    /// Answers that broke the contract as they came (an offset going back).
    pub(crate) failures: Vec<String>,
    /// When the read in flight started, if one is.
    in_flight: Option<Time>,
    /// When the last read that found no new event started.
    idle_since: Option<Time>,
}

impl Reader {
    pub(crate) fn new(stream: String) -> Reader {
        Reader {
            stream,
            next: Offset::START,
            events: Vec::new(),
            failures: Vec::new(),
            in_flight: None,
            idle_since: None,
        }
    }

    /// Whether a read started at or after `t` found nothing left.
    pub(crate) fn read_all_since(&self, t: Time) -> bool {
        self.idle_since.is_some_and(|idle| idle >= t)
    }
}

impl World {
    pub(super) fn on_reader_wake(&mut self, i: u32) {
        let reader = &self.readers[i as usize];
        if let Some(started) = reader.in_flight
            && self.now.since_us(started) < READ_TIMEOUT_US
        {
            return;
        }
        let g = self.rng.below(u64::from(self.config.gateways)) as u32;
        // Small reads as well as whole ones, so that merging a cut share is exercised.
        let max = *self.rng.pick(&[0, 1, 3]);
        let msg = Msg::ReadStream {
            stream: reader.stream.clone(),
            from: reader.next,
            max,
        };
        self.readers[i as usize].in_flight = Some(self.now);
        self.send(Addr::Reader(i), Addr::Gateway(g), msg);
        let at = self.now.plus_us(READ_TIMEOUT_US);
        self.schedule(at, Event::ReaderWake(i));
    }

    pub(super) fn on_stream_reply(&mut self, i: u32, reply: StreamReply) {
        let reader = &mut self.readers[i as usize];
        let Some(started) = reader.in_flight.take() else {
            return;
        };
        let mut found = false;
        match reply {
            StreamReply::Events { events, next } => {
                for event in events {
                    if event.offset < reader.next {
                        reader.failures.push(format!(
                            "stream {:?}: a read from {} returned the event at {}",
                            reader.stream, reader.next, event.offset
                        ));
                    }
                    reader.next = event.offset.next();
                    reader.events.push(event);
                    found = true;
                }
                if next < reader.next {
                    reader.failures.push(format!(
                        "stream {:?}: a read said to continue from {next}, before {}",
                        reader.stream, reader.next
                    ));
                }
                reader.next = reader.next.max(next);
            }
            StreamReply::Unavailable => {}
            StreamReply::Refused(why) => reader
                .failures
                .push(format!("stream {:?}: read refused: {why}", reader.stream)),
        }
        if !found {
            reader.idle_since = Some(started);
        }
        let pause = if found { 0 } else { self.rng.below(20_000) };
        self.schedule(self.now.plus_us(pause + 1), Event::ReaderWake(i));
    }
}
