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

/// The operator's TLS material under `certs` (`operator.pem`, `operator.key`, `ca.pem`):
/// what reading the whole log and asking for checkpoints take.
fn operator_tls(certs: &std::path::Path) -> anyhow::Result<detflow_client::Tls> {
    use anyhow::Context;
    detflow_client::Tls::from_dir(certs, crate::certs::OPERATOR_NAME).with_context(|| {
        format!(
            "reading the log and asking for checkpoints take an operator's certificate, \
             operator.pem, which `detflow certs` writes beside client.pem (looked under {})",
            certs.display()
        )
    })
}
