//! Reading an egress stream: [`Client::subscribe`] and [`Subscription`].

use crate::Client;
use detflow_protocol::message::Message;
pub use detflow_protocol::stream::{Offset, StreamEvent};
use detflow_protocol::stream::{StreamReply, check_stream_name};
use std::time::Duration;

/// How long a subscription waits before reading again when a read found no new event.
const POLL_IDLE: Duration = Duration::from_millis(20);

/// Why a stream cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum SubscribeError {
    /// The read is malformed (a stream name of 0 or more than 256 bytes).
    #[error("stream read refused: {0}")]
    Refused(String),
    /// No gateway answered the read within the client's attempts.
    #[error("no gateway answered the read after {attempts} attempts; last: {last}")]
    Unavailable {
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        last: String,
    },
}

/// A consumer's position in a stream: each [`Subscription::next`] returns the events after
/// the previous ones, in offset order, waiting while there are none.
///
/// Delivery is at least once: a consumer that stores [`Subscription::offset`] with what it
/// made of the events (atomically, in its own store) and subscribes from it after a restart
/// processes every event exactly once.
pub struct Subscription<'c> {
    client: &'c Client,
    stream: String,
    next: Offset,
    gateway: usize,
}

impl Client {
    /// Reads stream `stream` from offset `from` ([`Offset::START`] for the beginning, or
    /// the offset after the last event processed).
    pub fn subscribe(&self, stream: &str, from: Offset) -> Subscription<'_> {
        Subscription {
            client: self,
            stream: stream.to_owned(),
            next: from,
            gateway: 0,
        }
    }
}

impl Subscription<'_> {
    /// Where the next events start: the offset after the last event returned.
    pub fn offset(&self) -> Offset {
        self.next
    }

    /// The next events, at least one, in offset order; waits while there are none.
    pub async fn next(&mut self) -> Result<Vec<StreamEvent>, SubscribeError> {
        loop {
            let events = self.poll().await?;
            if !events.is_empty() {
                return Ok(events);
            }
            tokio::time::sleep(POLL_IDLE).await;
        }
    }

    /// The events available now after the offset (perhaps none), without waiting for more.
    pub async fn poll(&mut self) -> Result<Vec<StreamEvent>, SubscribeError> {
        check_stream_name(&self.stream).map_err(SubscribeError::Refused)?;
        let policy = self.client.policy;
        let mut backoff = policy.backoff;
        let mut last = String::new();
        let gateways = self.client.links.gateways.len();
        for attempt in 1..=policy.attempts_max {
            let read = Message::ReadStream {
                stream: self.stream.clone(),
                from: self.next,
                max: 0,
            };
            let answer = tokio::time::timeout(
                policy.attempt_timeout,
                self.client.request(self.gateway, &read),
            )
            .await;
            match answer {
                Ok(Ok(Message::Events(StreamReply::Events { events, next }))) => {
                    if next > self.next {
                        self.next = next;
                    }
                    return Ok(events);
                }
                Ok(Ok(Message::Events(StreamReply::Refused(why)))) => {
                    return Err(SubscribeError::Refused(why));
                }
                Ok(Ok(Message::Events(StreamReply::Unavailable))) => {
                    last = "not every partition answered".into();
                }
                Ok(Ok(other)) => last = format!("unexpected answer {other:?}"),
                Ok(Err((e, conn))) => {
                    self.client.forget(self.gateway, conn).await;
                    last = e.to_string();
                }
                Err(_) => last = "timed out".into(),
            }
            if attempt == policy.attempts_max {
                break;
            }
            self.gateway = (self.gateway + 1) % gateways;
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(policy.backoff_max);
        }
        Err(SubscribeError::Unavailable {
            attempts: policy.attempts_max,
            last,
        })
    }
}
