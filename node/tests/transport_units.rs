//! Certificate roles and TLS material loading, against certificates `certs` makes.

#![allow(clippy::unwrap_used)] // a test helper may unwrap

use detflow_node::certs::{self, CertKind};
use detflow_node::transport::{
    CLIENT_DNS_NAME, NODE_DNS_NAME, PeerRole, RoleError, Tls, TransportError,
    install_default_crypto_provider,
};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use std::path::Path;

fn der(path: &Path) -> Vec<u8> {
    CertificateDer::from_pem_file(path).unwrap().to_vec()
}

#[test]
fn roles_come_from_the_san() {
    let dir = tempfile::tempdir().unwrap();
    let paths = certs::generate(dir.path(), 1).unwrap();
    assert_eq!(
        PeerRole::of_certificate(&der(&paths.nodes[0].cert)),
        Ok(PeerRole::Node)
    );
    assert_eq!(
        PeerRole::of_certificate(&der(&paths.client.cert)),
        Ok(PeerRole::Client)
    );
    let both = vec![NODE_DNS_NAME.to_string(), CLIENT_DNS_NAME.to_string()];
    let both = certs::issue(dir.path(), "both", CertKind::Custom(both)).unwrap();
    assert_eq!(
        PeerRole::of_certificate(&der(&both.cert)),
        Err(RoleError::Ambiguous)
    );
    let none = CertKind::Custom(vec!["stranger.example".into()]);
    let none = certs::issue(dir.path(), "stranger", none).unwrap();
    assert_eq!(
        PeerRole::of_certificate(&der(&none.cert)),
        Err(RoleError::NoRole)
    );
    assert_eq!(
        PeerRole::of_certificate(&der(&paths.ca.cert)),
        Err(RoleError::NoRole)
    );
    assert!(matches!(
        PeerRole::of_certificate(b"garbage"),
        Err(RoleError::Unparsable(_))
    ));
}

#[test]
fn tls_material_loads_and_bad_files_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let paths = certs::generate(dir.path(), 1).unwrap();
    assert!(
        Tls::from_dir(dir.path(), "node-1")
            .unwrap()
            .has_certificate()
    );
    assert!(
        Tls::from_dir(dir.path(), "client")
            .unwrap()
            .has_certificate()
    );
    assert!(
        !Tls::no_client_cert(&paths.ca.cert)
            .unwrap()
            .has_certificate()
    );
    assert!(matches!(
        Tls::from_dir(dir.path(), "node-7"),
        Err(TransportError::File { .. })
    ));
    // A key file where a certificate should be.
    assert!(matches!(
        Tls::load(&paths.ca.key, &paths.client.cert, &paths.client.key),
        Err(TransportError::Pem { .. })
    ));
    install_default_crypto_provider();
    install_default_crypto_provider();
}
