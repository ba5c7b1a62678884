//! QUIC transport.
