//! Development certificates: a cluster CA, one certificate per node and one client
//! certificate, all signed by the CA (DESIGN.md §10, §10c).
//!
//! [`generate`] writes three folders, one per audience, so that the CA's key never has to
//! travel with what nodes or clients get:
//!
//! | file | what | who gets it |
//! | --- | --- | --- |
//! | `ca/ca.pem`, `ca/ca.key` | the cluster CA | nobody: keep it offline, it signs every certificate |
//! | `node/ca.pem` | the CA certificate (no key) | every node |
//! | `node/node-1.pem`, `node/node-1.key` … `node-N.*` | node certificates: SAN DNS `localhost`, [`NODE_DNS_NAME`], `node-<id>.node.detflow`, IP 127.0.0.1 | node `id` |
//! | `node/session.key` | 32 random bytes in hex: the key that signs client session tokens | every node (the same one) |
//! | `client/ca.pem`, `client/client.pem`, `client/client.key` | the CA certificate and a client certificate: SAN DNS [`CLIENT_DNS_NAME`] | client machines |
//! | `client/operator.pem`, `client/operator.key` | an operator's client certificate: SAN DNS [`CLIENT_DNS_NAME`] and [`OPERATOR_DNS_NAME`]; it may also read the whole log and ask for checkpoints | operators (`audit --connect`, `checkpoint`) |
//!
//! The SAN is how a server tells a node from a client, and which node
//! (`transport::PeerIdentity`). Keys are ECDSA P-256; keys and the session key are
//! written with mode 0600. An existing CA is never replaced by accident: [`generate`]
//! refuses, [`regenerate`] replaces it (which invalidates every certificate it issued).
//! [`issue`] adds one more certificate signed by an existing CA, e.g. for a new node, or a
//! certificate of neither role for tests.

pub use detflow_net::{
    CLIENT_DNS_NAME, NODE_DNS_NAME, OPERATOR_DNS_NAME, SERVER_NAME, node_dns_name,
};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

/// The file stem of the CA inside a certificate folder.
const CA_NAME: &str = "ca";
/// The file stem of the client certificate inside a certificate folder.
const CLIENT_NAME: &str = "client";
/// The file stem of the operator's client certificate inside a certificate folder.
pub const OPERATOR_NAME: &str = "operator";
/// The folder of the CA (certificate and key) inside an output folder.
const CA_DIR: &str = "ca";
/// The folder of what nodes get.
const NODE_DIR: &str = "node";
/// The folder of what clients get.
const CLIENT_DIR: &str = "client";
/// The session key's file, in the node folder.
const SESSION_KEY_FILE: &str = "session.key";
/// The prefix of a node certificate's name: `node-<id>`.
const NODE_NAME_PREFIX: &str = "node-";

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
    /// A node certificate's name must say its id.
    #[error("{0:?} is not a node certificate name: use node-<id>, with an id of at least 1")]
    NodeName(String),
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
    /// The output folder, holding the three below.
    pub dir: PathBuf,
    /// The CA: `dir/ca/ca.pem` and `dir/ca/ca.key`. Keep it offline.
    pub ca: Identity,
    /// Node certificates; `nodes[0]` is `node-1`, in `node_dir`.
    pub nodes: Vec<Identity>,
    /// The client certificate, in `client_dir`.
    pub client: Identity,
    /// The operator's client certificate, in `client_dir`.
    pub operator: Identity,
    /// What the nodes get: `ca.pem`, their certificates, `session.key`.
    pub node_dir: PathBuf,
    /// What client machines get: `ca.pem`, `client.pem`, `client.key` (and operators
    /// `operator.pem`, `operator.key`).
    pub client_dir: PathBuf,
    /// The cluster's session key (64 hex digits, mode 0600), shared by every node.
    pub session_key: PathBuf,
}

impl CertPaths {
    /// The certificate of node `id`, counting from 1 like the file names.
    pub fn node(&self, id: u32) -> Option<&Identity> {
        let index = usize::try_from(id.checked_sub(1)?).ok()?;
        self.nodes.get(index)
    }

    /// What was written where and who should get it, for a person to read (what
    /// `detflow certs` prints).
    pub fn summary(&self) -> String {
        let folder = |path: &Path| format!("{}/", path.display());
        let (ca, node, client) = (
            folder(&self.dir.join(CA_DIR)),
            folder(&self.node_dir),
            folder(&self.client_dir),
        );
        let width = ca.len().max(node.len()).max(client.len());
        let count = self.nodes.len();
        let nodes = match count {
            1 => "node-1.pem/.key".to_string(),
            n => format!("node-1.pem/.key … node-{n}.pem/.key"),
        };
        let plural = if count == 1 { "" } else { "s" };
        let dir = self.dir.display();
        let blank = "";
        [
            format!(
                "wrote a development CA, {count} node certificate{plural}, a client and an operator certificate under {dir}:"
            ),
            format!(
                "  {ca:width$}  the CA (ca.pem, ca.key): keep ca.key offline; it signs every certificate"
            ),
            format!("  {node:width$}  for the nodes: ca.pem, {nodes}, session.key"),
            format!(
                "  {blank:width$}  (each node needs ca.pem, its own node-<id> pair and the shared session.key)"
            ),
            format!("  {client:width$}  for client machines: ca.pem, client.pem, client.key"),
            format!(
                "  {blank:width$}  and operator.pem/.key for operators only: it may read the whole log and ask for checkpoints"
            ),
        ]
        .join("\n")
    }
}

/// What a certificate made by [`issue`] is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CertKind {
    /// A client: SAN DNS [`CLIENT_DNS_NAME`], client authentication only.
    Client,
    /// An operator's client: SAN DNS [`CLIENT_DNS_NAME`] and [`OPERATOR_DNS_NAME`],
    /// client authentication only.
    Operator,
    /// Neither role, with exactly these SAN DNS names, for both server and client
    /// authentication. A detflow endpoint refuses such a peer; useful in tests.
    Custom(Vec<String>),
    /// A node: SAN DNS `localhost`, [`NODE_DNS_NAME`] and `node-<id>.node.detflow`, IP
    /// 127.0.0.1, server and client authentication. The id comes from the certificate's
    /// name, which must be `node-<id>`.
    Node,
}

/// Makes a CA, `nodes` node certificates, a session key and one client certificate under
/// `out` (created if needed), in the layout of the module docs. Refuses if `out` already
/// holds a CA.
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
/// (`dir/ca.pem` and `dir/ca.key`, as [`generate_ca_only`] writes them, or `dir/ca/…`, as
/// [`generate`] does), replacing any certificate of that name.
///
/// In a folder [`generate`] made, a node certificate goes to `dir/node/` and a client
/// certificate to `dir/client/` (beside their `ca.pem`); anything else, and everything in
/// a flat folder, goes to `dir`.
pub fn issue(dir: &Path, name: &str, kind: CertKind) -> Result<Identity, CertError> {
    let (ca, layered) = Ca::load(dir)?;
    let out = match (&kind, layered) {
        (CertKind::Node, true) => dir.join(NODE_DIR),
        (CertKind::Client | CertKind::Operator, true) => dir.join(CLIENT_DIR),
        _ => dir.to_path_buf(),
    };
    if out != dir {
        create_dir(&out)?;
        let ca_copy = out.join(format!("{CA_NAME}.pem"));
        if !ca_copy.exists() {
            write_file(&ca_copy, ca.cert_pem.as_bytes(), false)?;
        }
    }
    ca.issue(&out, name, &kind)
}

fn generate_all(out: &Path, nodes: u32, overwrite: bool) -> Result<CertPaths, CertError> {
    if nodes == 0 {
        return Err(CertError::NoNodes);
    }
    // A CA in the flat layout of earlier versions counts as a CA too.
    let (flat_cert, flat_key) = file_pair(out, CA_NAME);
    if !overwrite && let Some(existing) = [flat_cert, flat_key].into_iter().find(|p| p.exists()) {
        return Err(CertError::CaExists { path: existing });
    }
    let ca = Ca::new()?;
    let ca_paths = ca.write(&out.join(CA_DIR), overwrite)?;
    let node_dir = out.join(NODE_DIR);
    let client_dir = out.join(CLIENT_DIR);
    for dir in [&node_dir, &client_dir] {
        create_dir(dir)?;
        write_file(
            &dir.join(format!("{CA_NAME}.pem")),
            ca.cert_pem.as_bytes(),
            false,
        )?;
    }
    let nodes = (1..=nodes)
        .map(|id| {
            ca.issue(
                &node_dir,
                &format!("{NODE_NAME_PREFIX}{id}"),
                &CertKind::Node,
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    let session_key = node_dir.join(SESSION_KEY_FILE);
    write_file(&session_key, session_key_hex()?.as_bytes(), true)?;
    let client = ca.issue(&client_dir, CLIENT_NAME, &CertKind::Client)?;
    let operator = ca.issue(&client_dir, OPERATOR_NAME, &CertKind::Operator)?;
    Ok(CertPaths {
        dir: out.to_path_buf(),
        ca: ca_paths,
        nodes,
        client,
        operator,
        node_dir,
        client_dir,
        session_key,
    })
}

/// 32 bytes from the operating system's random source, as 64 hex digits and a newline.
fn session_key_hex() -> Result<String, CertError> {
    let source = Path::new("/dev/urandom");
    let io = |source_error| CertError::Io {
        path: source.to_path_buf(),
        source: source_error,
    };
    let mut key = [0u8; 32];
    std::fs::File::open(source)
        .and_then(|mut file| file.read_exact(&mut key))
        .map_err(io)?;
    let mut hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    hex.push('\n');
    Ok(hex)
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

    /// The CA of `dir`: flat (`dir/ca.pem`) or layered (`dir/ca/ca.pem`, then `true`).
    fn load(dir: &Path) -> Result<(Ca, bool), CertError> {
        let flat = file_pair(dir, CA_NAME);
        let layered = file_pair(&dir.join(CA_DIR), CA_NAME);
        let ((cert_path, key_path), is_layered) = if flat.0.exists() {
            (flat, false)
        } else if layered.0.exists() {
            (layered, true)
        } else {
            return Err(CertError::CaMissing { path: flat.0 });
        };
        let cert_pem = read(&cert_path)?;
        let key = KeyPair::from_pem(&read(&key_path)?)?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key)?;
        Ok((Ca { cert_pem, issuer }, is_layered))
    }

    fn write(&self, out: &Path, overwrite: bool) -> Result<Identity, CertError> {
        let (cert, key) = file_pair(out, CA_NAME);
        if !overwrite && let Some(existing) = [&cert, &key].into_iter().find(|p| p.exists()) {
            return Err(CertError::CaExists {
                path: existing.clone(),
            });
        }
        create_dir(out)?;
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
            CertKind::Operator => (
                vec![CLIENT_DNS_NAME.into(), OPERATOR_DNS_NAME.into()],
                false,
            ),
            CertKind::Custom(names) => (names.clone(), true),
            CertKind::Node => {
                let id = node_id_of_name(name)?;
                let names = vec![SERVER_NAME.into(), NODE_DNS_NAME.into(), node_dns_name(id)];
                (names, true)
            }
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

/// The id in a node certificate's name `node-<id>`: plain decimal, at least 1.
fn node_id_of_name(name: &str) -> Result<u32, CertError> {
    let refuse = || CertError::NodeName(name.to_string());
    let digits = name.strip_prefix(NODE_NAME_PREFIX).ok_or_else(refuse)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || digits.starts_with('0') {
        return Err(refuse());
    }
    digits.parse().map_err(|_| refuse())
}

fn create_dir(dir: &Path) -> Result<(), CertError> {
    std::fs::create_dir_all(dir).map_err(|source| CertError::Io {
        path: dir.to_path_buf(),
        source,
    })
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
    use detflow_net::{PeerIdentity, PeerRole};
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;

    fn identity_of(path: &Path) -> PeerIdentity {
        let der = CertificateDer::from_pem_file(path).unwrap();
        PeerIdentity::of_certificate(&der).unwrap()
    }

    #[test]
    fn generates_a_cluster_apart_from_its_ca_and_refuses_to_replace_the_ca() {
        let dir = tempfile::tempdir().unwrap();
        let paths = generate(dir.path(), 3).unwrap();
        let (node_dir, client_dir) = (dir.path().join("node"), dir.path().join("client"));
        assert_eq!(paths.ca.cert, dir.path().join("ca/ca.pem"));
        assert_eq!(paths.ca.key, dir.path().join("ca/ca.key"));
        assert_eq!(
            (&paths.node_dir, &paths.client_dir),
            (&node_dir, &client_dir)
        );
        assert_eq!(paths.nodes.len(), 3);
        assert_eq!(paths.node(1).unwrap().cert, node_dir.join("node-1.pem"));
        assert_eq!(paths.node(3).unwrap().key, node_dir.join("node-3.key"));
        assert!(paths.node(0).is_none() && paths.node(4).is_none());
        assert_eq!(paths.client.cert, client_dir.join("client.pem"));
        assert_eq!(paths.session_key, node_dir.join("session.key"));

        // What nodes and clients get holds the CA certificate and never its key.
        let files = |dir: &Path| {
            let mut names: Vec<String> = std::fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            names.sort();
            names
        };
        assert_eq!(
            files(&node_dir),
            [
                "ca.pem",
                "node-1.key",
                "node-1.pem",
                "node-2.key",
                "node-2.pem",
                "node-3.key",
                "node-3.pem",
                "session.key"
            ]
        );
        assert_eq!(
            files(&client_dir),
            [
                "ca.pem",
                "client.key",
                "client.pem",
                "operator.key",
                "operator.pem"
            ]
        );
        assert_eq!(files(&dir.path().join("ca")), ["ca.key", "ca.pem"]);
        let ca_pem = std::fs::read(&paths.ca.cert).unwrap();
        assert_eq!(std::fs::read(node_dir.join("ca.pem")).unwrap(), ca_pem);
        assert_eq!(std::fs::read(client_dir.join("ca.pem")).unwrap(), ca_pem);

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
        // Node certificates name their node; the client's names none.
        for id in 1..=3 {
            let identity = identity_of(&paths.node(id).unwrap().cert);
            assert_eq!(
                (identity.role, identity.node_id),
                (PeerRole::Node, Some(id))
            );
        }
        let client = identity_of(&paths.client.cert);
        assert_eq!((client.role, client.node_id), (PeerRole::Client, None));
        assert!(
            !client.operator,
            "the application's certificate is no operator's"
        );
        let operator = identity_of(&paths.operator.cert);
        assert_eq!(
            (operator.role, operator.node_id, operator.operator),
            (PeerRole::Client, None, true)
        );

        // The session key: 32 random bytes in hex, private.
        let key = std::fs::read_to_string(&paths.session_key).unwrap();
        let key = key.trim();
        assert_eq!(key.len(), 64);
        assert!(key.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(key, "0".repeat(64));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for secret in [
                &paths.ca.key,
                &paths.session_key,
                &paths.nodes[0].key,
                &paths.client.key,
                &paths.operator.key,
            ] {
                let mode = std::fs::metadata(secret).unwrap().permissions().mode();
                assert_eq!(mode & 0o777, 0o600, "{}", secret.display());
            }
        }

        let summary = paths.summary();
        println!("{summary}");
        assert!(summary.contains("keep ca.key offline"), "{summary}");
        assert!(
            summary.contains("node-1.pem/.key … node-3.pem/.key"),
            "{summary}"
        );

        let ca_before = std::fs::read(&paths.ca.cert).unwrap();
        assert!(matches!(
            generate(dir.path(), 3),
            Err(CertError::CaExists { .. })
        ));
        assert_eq!(std::fs::read(&paths.ca.cert).unwrap(), ca_before);
        regenerate(dir.path(), 1).unwrap();
        assert_ne!(std::fs::read(&paths.ca.cert).unwrap(), ca_before);
        assert_ne!(
            std::fs::read_to_string(&paths.session_key).unwrap().trim(),
            key
        );

        // A CA in the flat layout of earlier versions is not replaced either.
        let flat = tempfile::tempdir().unwrap();
        generate_ca_only(flat.path(), false).unwrap();
        assert!(matches!(
            generate(flat.path(), 1),
            Err(CertError::CaExists { .. })
        ));
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
        assert_eq!(identity_of(&node.cert).node_id, Some(9));
        for bad in ["", "../x", "a/b", "ca", ".hidden"] {
            assert!(matches!(
                issue(dir.path(), bad, CertKind::Client),
                Err(CertError::Name(_))
            ));
        }
        for bad in [
            "node",
            "node-",
            "node-0",
            "node-07",
            "node-x",
            "n-1",
            "node-99999999999",
        ] {
            assert!(
                matches!(
                    issue(dir.path(), bad, CertKind::Node),
                    Err(CertError::NodeName(_))
                ),
                "{bad}"
            );
        }
        assert!(matches!(generate(dir.path(), 0), Err(CertError::NoNodes)));

        // In a generated folder, certificates go where their kind belongs.
        let cluster = tempfile::tempdir().unwrap();
        let paths = generate(cluster.path(), 1).unwrap();
        let node = issue(cluster.path(), "node-4", CertKind::Node).unwrap();
        assert_eq!(node.cert, paths.node_dir.join("node-4.pem"));
        let client = issue(cluster.path(), "client-2", CertKind::Client).unwrap();
        assert_eq!(client.cert, paths.client_dir.join("client-2.pem"));
        let custom = issue(
            cluster.path(),
            "odd",
            CertKind::Custom(vec!["odd.example".into()]),
        );
        assert_eq!(custom.unwrap().cert, cluster.path().join("odd.pem"));
    }
}
