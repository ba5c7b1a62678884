//! One module per command, plus what `demo` and `bench` share: starting a local cluster
//! and showing its loading progress ([`local`]).

pub(crate) mod audit;
pub(crate) mod bench;
pub(crate) mod call;
pub(crate) mod certs;
pub(crate) mod checkpoint;
mod cpu;
pub(crate) mod demo;
pub(crate) mod footprint;
pub(crate) mod history;
mod local;
pub(crate) mod nemesis;
pub(crate) mod node;
pub(crate) mod sql;
pub(crate) mod status;
