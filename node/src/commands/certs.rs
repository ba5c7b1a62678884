//! `detflow certs`: a development CA with node and client certificates.

use crate::certs;
use crate::cli::CertsArgs;
use anyhow::Result;

/// Writes the certificates and says where each kind went.
pub(crate) fn run(args: &CertsArgs) -> Result<bool> {
    let paths = if args.force {
        certs::regenerate(&args.out, args.nodes)?
    } else {
        certs::generate(&args.out, args.nodes)?
    };
    let ca_dir = paths.ca.cert.parent().unwrap_or(&paths.dir);
    println!(
        "wrote a development cluster's certificates to {}:\n  \
         {}  the CA certificate and key: keep it offline, it signs every identity\n  \
         {}  for the nodes: {} node certificates and keys, and the session key\n  \
         {}  for clients: the client certificate and key (all a client machine needs)",
        paths.dir.display(),
        ca_dir.display(),
        paths.node_dir.display(),
        paths.nodes.len(),
        paths.client_dir.display(),
    );
    Ok(true)
}
