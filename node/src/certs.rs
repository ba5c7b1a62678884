//! Development certificates: a cluster CA, one certificate per node and one client
//! certificate, all signed by the CA (DESIGN.md §10).
//!
//! [`generate`] writes, into one folder:
//!
//! | file | what |
//! | --- | --- |
//! | `ca.pem`, `ca.key` | the cluster CA |
//! | `node-1.pem`, `node-1.key` … `node-N.*` | node certificates: SAN DNS `localhost`, [`NODE_DNS_NAME`], IP 127.0.0.1 |
//! | `client.pem`, `client.key` | a client certificate: SAN DNS [`CLIENT_DNS_NAME`] |
//!
//! The SAN is how a server tells a node from a client (`transport::PeerRole`). Keys are
//! ECDSA P-256 and written with mode 0600. An existing CA is never replaced by accident:
//! [`generate`] refuses, [`regenerate`] replaces it (which invalidates every certificate it
//! issued). [`issue`] adds one more certificate signed by an existing CA, e.g. for a new
//! node, or a certificate of neither role for tests.

pub use detflow_net::{CLIENT_DNS_NAME, NODE_DNS_NAME, SERVER_NAME};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

/// The file stem of the CA inside a certificate folder.
const CA_NAME: &str = "ca";
/// The file stem of the client certificate inside a certificate folder.
const CLIENT_NAME: &str = "client";

/// Why certificates could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// A CA already exists and replacing it was not asked for.
    #[error(
        "a CA already exists at {path}; refusing to replace it (regenerating invalidates every \
         certificate it issued; ask for an overwrite explicitly)"
    )]
    CaExists {
        /// The existing CA file.
        path: PathBuf,
    },
    /// The CA files to sign with are missing.
    #[error("no CA at {path}: generate one first")]
    CaMissing {
        /// The missing CA file.
        path: PathBuf,
    },
    /// rcgen refused the parameters, or an existing CA file does not parse.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A certificate name that is not a plain file stem.
    #[error("{0:?} is not a valid certificate name (use letters, digits, '-', '_' or '.')")]
    Name(String),
    /// A cluster needs at least one node.
    #[error("a cluster needs at least one node certificate")]
    NoNodes,
}

/// Where one certificate and its private key were written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The PEM certificate.
    pub cert: PathBuf,
    /// The PEM private key (mode 0600).
    pub key: PathBuf,
}

/// Everything [`generate`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertPaths {
    /// The folder holding every file.
    pub dir: PathBuf,
    /// The CA.
    pub ca: Identity,
    /// Node certificates; `nodes[0]` is `node-1`.
    pub nodes: Vec<Identity>,
    /// The client certificate.
    pub client: Identity,
}

impl CertPaths {
    /// The certificate of node `id`, counting from 1 like the file names.
    pub fn node(&self, id: u32) -> Option<&Identity> {
        let index = usize::try_from(id.checked_sub(1)?).ok()?;
        self.nodes.get(index)
    }
}

/// What a certificate made by [`issue`] is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CertKind {
    /// A client: SAN DNS [`CLIENT_DNS_NAME`], client authentication only.
    Client,
    /// Neither role, with exactly these SAN DNS names, for both server and client
    /// authentication. A detflow endpoint refuses such a peer; useful in tests.
    Custom(Vec<String>),
    /// A node: SAN DNS `localhost` and [`NODE_DNS_NAME`], IP 127.0.0.1, server and client
    /// authentication.
    Node,
}

/// Makes a CA, `nodes` node certificates and one client certificate in `out` (created if
/// needed). Refuses if `out` already holds a CA.
pub fn generate(out: &Path, nodes: u32) -> Result<CertPaths, CertError> {
    generate_all(out, nodes, false)
}

/// Like [`generate`], but replaces an existing CA and every certificate in `out`.
pub fn regenerate(out: &Path, nodes: u32) -> Result<CertPaths, CertError> {
    generate_all(out, nodes, true)
}

/// Makes only a CA (`ca.pem`, `ca.key`) in `out`, replacing any CA there if `overwrite`.
/// With [`issue`] this gives tests "a certificate from another CA".
pub fn generate_ca_only(out: &Path, overwrite: bool) -> Result<Identity, CertError> {
    let ca = Ca::new()?;
    ca.write(out, overwrite)
}

/// Signs one more certificate, `name.pem`/`name.key`, with the CA found in `dir`
/// (`ca.pem`, `ca.key`), replacing any certificate of that name.
pub fn issue(dir: &Path, name: &str, kind: CertKind) -> Result<Identity, CertError> {
    let ca = Ca::load(dir)?;
    ca.issue(dir, name, &kind)
}

fn generate_all(out: &Path, nodes: u32, overwrite: bool) -> Result<CertPaths, CertError> {
    if nodes == 0 {
        return Err(CertError::NoNodes);
    }
    let ca = Ca::new()?;
    let ca_paths = ca.write(out, overwrite)?;
    let nodes = (1..=nodes)
        .map(|id| ca.issue(out, &format!("node-{id}"), &CertKind::Node))
        .collect::<Result<Vec<_>, _>>()?;
    let client = ca.issue(out, CLIENT_NAME, &CertKind::Client)?;
    Ok(CertPaths {
        dir: out.to_path_buf(),
        ca: ca_paths,
        nodes,
        client,
    })
}

/// A CA held in memory: its certificate and the issuer that signs with its key.
struct Ca {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    fn new() -> Result<Ca, CertError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "detflow development CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
        ];
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(Ca {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    fn load(dir: &Path) -> Result<Ca, CertError> {
        let (cert_path, key_path) = file_pair(dir, CA_NAME);
        if !cert_path.exists() {
            return Err(CertError::CaMissing { path: cert_path });
        }
        let cert_pem = read(&cert_path)?;
        let key = KeyPair::from_pem(&read(&key_path)?)?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key)?;
        Ok(Ca { cert_pem, issuer })
    }

    fn write(&self, out: &Path, overwrite: bool) -> Result<Identity, CertError> {
        let (cert, key) = file_pair(out, CA_NAME);
        if !overwrite && let Some(existing) = [&cert, &key].into_iter().find(|p| p.exists()) {
            return Err(CertError::CaExists {
                path: existing.clone(),
            });
        }
        std::fs::create_dir_all(out).map_err(|source| CertError::Io {
            path: out.to_path_buf(),
            source,
        })?;
        write_file(&key, self.issuer.key().serialize_pem().as_bytes(), true)?;
        write_file(&cert, self.cert_pem.as_bytes(), false)?;
        Ok(Identity { cert, key })
    }

    fn issue(&self, dir: &Path, name: &str, kind: &CertKind) -> Result<Identity, CertError> {
        check_name(name)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("detflow {name}"));
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let (dns_names, server): (Vec<String>, bool) = match kind {
            CertKind::Client => (vec![CLIENT_DNS_NAME.into()], false),
            CertKind::Custom(names) => (names.clone(), true),
            CertKind::Node => (vec![SERVER_NAME.into(), NODE_DNS_NAME.into()], true),
        };
        for dns in dns_names {
            params
                .subject_alt_names
                .push(SanType::DnsName(dns.try_into()?));
        }
        if *kind == CertKind::Node {
            params
                .subject_alt_names
                .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        if server {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ServerAuth);
        }
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        let (cert_path, key_path) = file_pair(dir, name);
        write_file(&key_path, key.serialize_pem().as_bytes(), true)?;
        write_file(&cert_path, cert.pem().as_bytes(), false)?;
        Ok(Identity {
            cert: cert_path,
            key: key_path,
        })
    }
}

fn file_pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    )
}

fn check_name(name: &str) -> Result<(), CertError> {
    let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if name.is_empty() || name.starts_with('.') || !name.chars().all(plain) || name == CA_NAME {
        return Err(CertError::Name(name.to_string()));
    }
    Ok(())
}

fn read(path: &Path) -> Result<String, CertError> {
    std::fs::read_to_string(path).map_err(|source| CertError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes `bytes` to `path`, replacing it; a `secret` file is readable by its owner only,
/// even if it existed before with wider permissions.
fn write_file(path: &Path, bytes: &[u8], secret: bool) -> Result<(), CertError> {
    let io = |source| CertError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        if secret {
            options.mode(0o600);
            // A pre-existing file keeps its mode on open: tighten it before writing.
            if path.exists() {
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                    .map_err(io)?;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut file = options.open(path).map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.sync_all().map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_a_cluster_and_refuses_to_replace_its_ca() {
        let dir = tempfile::tempdir().unwrap();
        let paths = generate(dir.path(), 3).unwrap();
        assert_eq!(paths.nodes.len(), 3);
        assert_eq!(paths.node(1).unwrap().cert, dir.path().join("node-1.pem"));
        assert_eq!(paths.node(3).unwrap().key, dir.path().join("node-3.key"));
        assert!(paths.node(0).is_none() && paths.node(4).is_none());
        assert_eq!(paths.client.cert, dir.path().join("client.pem"));
        for id in [&paths.ca, &paths.client, &paths.nodes[0]] {
            assert!(
                std::fs::read_to_string(&id.cert)
                    .unwrap()
                    .contains("CERTIFICATE")
            );
            assert!(
                std::fs::read_to_string(&id.key)
                    .unwrap()
                    .contains("PRIVATE KEY")
            );
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&paths.ca.key)
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }

        let ca_before = std::fs::read(&paths.ca.cert).unwrap();
        assert!(matches!(
            generate(dir.path(), 3),
            Err(CertError::CaExists { .. })
        ));
        assert_eq!(std::fs::read(&paths.ca.cert).unwrap(), ca_before);
        regenerate(dir.path(), 1).unwrap();
        assert_ne!(std::fs::read(&paths.ca.cert).unwrap(), ca_before);
    }

    #[test]
    fn issues_more_certificates_from_an_existing_ca() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            issue(dir.path(), "node-9", CertKind::Node),
            Err(CertError::CaMissing { .. })
        ));
        generate_ca_only(dir.path(), false).unwrap();
        let node = issue(dir.path(), "node-9", CertKind::Node).unwrap();
        assert_eq!(node.cert, dir.path().join("node-9.pem"));
        for bad in ["", "../x", "a/b", "ca", ".hidden"] {
            assert!(matches!(
                issue(dir.path(), bad, CertKind::Client),
                Err(CertError::Name(_))
            ));
        }
        assert!(matches!(generate(dir.path(), 0), Err(CertError::NoNodes)));
    }
}
