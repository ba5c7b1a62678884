//! The detflow client library.
