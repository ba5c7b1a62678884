//! Certificate roles and node ids, and TLS material loading, against certificates `certs`
//! makes in the layout it writes (CA, node and client folders).

#![allow(clippy::unwrap_used)] // a test helper may unwrap

use detflow_node::certs::{self, CertKind};
use detflow_node::transport::{
    CLIENT_DNS_NAME, NODE_DNS_NAME, PeerIdentity, PeerRole, RoleError, Tls, TransportError,
    install_default_crypto_provider, node_dns_name,
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
fn node_certificates_name_their_node() {
    let dir = tempfile::tempdir().unwrap();
    let paths = certs::generate(dir.path(), 2).unwrap();
    let second = der(&paths.node(2).unwrap().cert);
    let identity = PeerIdentity::of_certificate(&second).unwrap();
    assert_eq!(identity.node_id, Some(2));
    let client = PeerIdentity::of_certificate(&der(&paths.client.cert)).unwrap();
    assert_eq!(client.node_id, None);
    // The fingerprint is the certificate's: stable, and its own.
    let again = PeerIdentity::of_certificate(&second).unwrap();
    assert_eq!(identity.fingerprint, again.fingerprint);
    assert_ne!(identity.fingerprint, client.fingerprint);

    // The role marker without an id, or with two: refused.
    let anonymous = CertKind::Custom(vec![NODE_DNS_NAME.into()]);
    let anonymous = certs::issue(dir.path(), "anonymous", anonymous).unwrap();
    assert_eq!(
        PeerRole::of_certificate(&der(&anonymous.cert)),
        Err(RoleError::NodeId { names: 0 })
    );
    let two = CertKind::Custom(vec![
        NODE_DNS_NAME.into(),
        node_dns_name(1),
        node_dns_name(2),
    ]);
    let two = certs::issue(dir.path(), "two", two).unwrap();
    assert_eq!(
        PeerRole::of_certificate(&der(&two.cert)),
        Err(RoleError::NodeId { names: 2 })
    );
    // Our own certificate's id, for a node to check against its configuration.
    assert_eq!(
        Tls::from_dir(dir.path(), "node-2").unwrap().node_id(),
        Some(2)
    );
    assert_eq!(Tls::from_dir(dir.path(), "client").unwrap().node_id(), None);
}

#[test]
fn tls_material_loads_from_the_whole_folder_or_from_a_part() {
    let dir = tempfile::tempdir().unwrap();
    let paths = certs::generate(dir.path(), 1).unwrap();
    // What a client machine gets, on its own: the client folder, and nothing else.
    let client_machine = tempfile::tempdir().unwrap();
    for file in ["ca.pem", "client.pem", "client.key"] {
        std::fs::copy(
            paths.client_dir.join(file),
            client_machine.path().join(file),
        )
        .unwrap();
    }
    assert!(
        Tls::from_dir(client_machine.path(), "client")
            .unwrap()
            .has_certificate()
    );
    assert!(Tls::from_dir(&paths.client_dir, "client").is_ok());
    assert_eq!(
        Tls::from_dir(&paths.node_dir, "node-1").unwrap().node_id(),
        Some(1)
    );
    // A client machine without the node folder cannot pose as a node.
    assert!(matches!(
        Tls::from_dir(client_machine.path(), "node-1"),
        Err(TransportError::File { .. })
    ));
    // A certificate issued later into the top folder finds the CA too.
    certs::issue(dir.path(), "client-2", CertKind::Client).unwrap();
    assert!(Tls::from_dir(dir.path(), "client-2").is_ok());
    let odd = CertKind::Custom(vec!["odd.example".into()]);
    certs::issue(dir.path(), "odd", odd).unwrap();
    assert!(Tls::from_dir(dir.path(), "odd").is_ok());
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
