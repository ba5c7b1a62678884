//! Streams: what a consumer reads from the start, through any gateway and under faults, is
//! exactly the events the log's committed transactions published, in offset order, with no
//! gap and no repeat, up to where it got; and by the end it got to every event.
//!
//! The events come from the reference's replay of the log (serial equivalence ties the
//! system to it), so a stream derived from anything but the log shows here.

use crate::check::serial::Reference;
use crate::world::Outcome;

pub(crate) fn check(run: &Outcome, reference: &Reference) -> Vec<String> {
    let mut failures = Vec::new();
    for reader in &run.readers {
        failures.extend(reader.failures.iter().cloned());
        let published = reference
            .events
            .get(&reader.stream)
            .map_or(&[][..], Vec::as_slice);
        let expected = published.iter().filter(|e| e.offset < reader.next);
        let mut read = reader.events.iter();
        for want in expected {
            match read.next() {
                Some(got) if got == want => {}
                Some(got) => {
                    failures.push(format!(
                        "stream {:?}: read the event at {} where the log has the event at {}",
                        reader.stream, got.offset, want.offset
                    ));
                    break;
                }
                None => {
                    failures.push(format!(
                        "stream {:?}: the reader passed the event at {} without reading it",
                        reader.stream, want.offset
                    ));
                    break;
                }
            }
        }
        if let Some(extra) = read.next() {
            failures.push(format!(
                "stream {:?}: read an event at {} that the log does not hold",
                reader.stream, extra.offset
            ));
        }
        if let Some(last) = published.last()
            && reader.next <= last.offset
        {
            failures.push(format!(
                "stream {:?}: the reader stopped at {}, before the last event at {}",
                reader.stream, reader.next, last.offset
            ));
        }
    }
    failures
}
