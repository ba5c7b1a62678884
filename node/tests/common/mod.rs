//! Helpers the process-level tests share: starting a node process, reading its metrics,
//! a whole cluster of them ([`cluster`]).

// Each test binary uses its own part of the helpers.
#[allow(dead_code)]
pub(crate) mod cluster;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Starts `detflow node --config CONFIG`, appending its output to `log`. The node exits when
/// its stdin pipe closes: when the test drops the child, or dies.
pub(crate) fn spawn_node(config: &Path, log: &Path) -> std::io::Result<Child> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    Command::new(env!("CARGO_BIN_EXE_detflow"))
        .arg("node")
        .arg("--config")
        .arg(config)
        .arg("--exit-on-stdin-eof")
        .env("NO_COLOR", "1")
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdin(Stdio::piped())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
}

/// [`spawn_node`] under a shell that caps the size of every file the node writes at
/// `file_bytes_max` and ignores SIGXFSZ, so writes past the cap fail with EFBIG.
pub(crate) fn spawn_node_limited(
    config: &Path,
    log: &Path,
    file_bytes_max: u64,
) -> std::io::Result<Child> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let blocks = file_bytes_max.div_ceil(1024);
    Command::new("bash")
        .arg("-c")
        .arg(format!(
            "ulimit -f {blocks} && trap '' XFSZ && exec \"$0\" node --config \"$1\" --exit-on-stdin-eof"
        ))
        .arg(env!("CARGO_BIN_EXE_detflow"))
        .arg(config)
        .env("NO_COLOR", "1")
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdin(Stdio::piped())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
}

/// A raw transport connection to `addr` with the certificate `name` found under `certs`
/// (the folder `detflow certs` wrote): for tests that speak the wire protocol themselves.
#[allow(dead_code)] // each test binary compiles this module; not all of them speak raw frames
pub(crate) async fn connect_as(
    certs: &Path,
    name: &str,
    addr: SocketAddr,
) -> (detflow_net::Endpoint, detflow_net::Connection) {
    let tls = detflow_net::Tls::from_dir(certs, name).expect("load a certificate");
    let endpoint = detflow_net::Endpoint::bind(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        &tls,
        detflow_net::Limits::default(),
    )
    .expect("bind a test endpoint");
    let conn = tokio::time::timeout(Duration::from_secs(5), endpoint.connect(addr))
        .await
        .expect("connect within 5 s")
        .expect("connect to the node");
    (endpoint, conn)
}

/// Reads one counter from a node's Prometheus endpoint (plain HTTP over a TcpStream).
pub(crate) async fn metric(addr: SocketAddr, name: &str) -> Result<u64, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fetch = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .await?;
        let mut text = String::new();
        stream.read_to_string(&mut text).await?;
        Ok::<_, std::io::Error>(text)
    };
    let text = tokio::time::timeout(Duration::from_secs(2), fetch)
        .await
        .map_err(|_| format!("GET http://{addr}/metrics timed out"))?
        .map_err(|e| format!("GET http://{addr}/metrics: {e}"))?;
    let prefix = format!("{name} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .ok_or_else(|| format!("no {name} in the metrics of {addr}: {text}"))?
        .trim()
        .parse()
        .map_err(|e| format!("{name}: {e}"))
}
