//! Helpers the process-level tests share: a cluster of node processes ([`cluster`]),
//! reading a node's metrics, speaking the wire protocol as a given certificate.

// Each test binary uses its own part of the helpers.
#[allow(dead_code)]
pub(crate) mod cluster;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

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
