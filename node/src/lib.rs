//! detflow's production runtime: the same state machines as the simulator, driven by
//! tokio, talking QUIC with mutual TLS, storing their logs and state in fjall.

pub mod certs;
pub mod storage;
pub mod transport;
