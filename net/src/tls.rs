//! TLS material: the CA an endpoint trusts and the certificate it presents.

use crate::{ALPN, PeerIdentity, TransportError};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The CA file inside a certificate folder.
const CA_FILE: &str = "ca.pem";
/// The folders of the layout `detflow certs` writes: the CA, what nodes get, what clients
/// get.
const CA_DIR: &str = "ca";
const NODE_DIR: &str = "node";
const CLIENT_DIR: &str = "client";

/// TLS material of one endpoint: the CA it trusts and, usually, its own certificate.
#[derive(Clone)]
pub struct Tls {
    /// Present when we have a certificate to serve with.
    pub(crate) server: Option<Arc<QuicServerConfig>>,
    pub(crate) client: Arc<QuicClientConfig>,
    /// What our own certificate says we are, if it says something detflow accepts.
    pub(crate) identity: Option<PeerIdentity>,
    /// The secret behind this endpoint's QUIC stateless resets, derived from the private
    /// key so that it survives restarts (see [`reset_secret`]).
    pub(crate) reset_secret: Option<[u8; 32]>,
}

/// The secret of the stateless-reset key of an endpoint holding `key`: a hash of the key,
/// so the same on every start of a node. A node that restarts answers its peers' packets
/// for connections of its previous incarnation with a stateless reset they can verify
/// (it is keyed like the tokens the old incarnation gave them), and they drop the dead
/// connection at once instead of after the idle timeout.
fn reset_secret(key: &PrivateKeyDer<'_>) -> [u8; 32] {
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    context.update(b"detflow QUIC stateless reset key v1\0");
    context.update(key.secret_der());
    let digest = context.finish();
    let mut secret = [0; 32];
    secret.copy_from_slice(digest.as_ref());
    secret
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls")
            .field("has_certificate", &self.server.is_some())
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// Loads the CA to trust, our certificate chain and our private key from PEM files.
    ///
    /// A certificate that names no detflow role still loads (tests use such peers to prove
    /// that servers refuse them); [`Tls::node_id`] is then `None`.
    pub fn load(ca: &Path, cert: &Path, key: &Path) -> Result<Tls, TransportError> {
        let roots = load_roots(ca)?;
        let chain = load_certs(cert)?;
        let key = load_key(key)?;
        let identity = chain
            .first()
            .and_then(|leaf| PeerIdentity::of_certificate(leaf).ok());
        let provider = crypto_provider();
        let reset_secret = Some(reset_secret(&key));
        let server = server_config(&provider, roots.clone(), chain.clone(), key.clone_key())?;
        let client = client_config(&provider, roots, Some((chain, key)))?;
        Ok(Tls {
            server: Some(Arc::new(server)),
            client: Arc::new(client),
            identity,
            reset_secret,
        })
    }

    /// Loads the certificate `name` (e.g. `node-1` or `client`) and its key from a folder
    /// `detflow certs` wrote, with the CA beside it.
    ///
    /// `dir` may be the whole output folder or one of its parts: the certificate is
    /// `dir/{name}.pem`, else `dir/node/{name}.pem` for names starting with `node-`, else
    /// `dir/client/{name}.pem`; the key is beside it. The CA is the `ca.pem` beside the
    /// certificate, else `dir/ca.pem`, else `dir/ca/ca.pem`.
    pub fn from_dir(dir: &Path, name: &str) -> Result<Tls, TransportError> {
        let cert_name = format!("{name}.pem");
        let mut folders = vec![dir.to_path_buf()];
        if name.starts_with("node-") {
            folders.push(dir.join(NODE_DIR));
        }
        folders.push(dir.join(CLIENT_DIR));
        let folder = folders
            .iter()
            .find(|folder| folder.join(&cert_name).is_file())
            // Nothing found: report the most likely place.
            .unwrap_or_else(|| {
                folders
                    .iter()
                    .skip(1)
                    .find(|folder| folder.is_dir())
                    .unwrap_or(&folders[0])
            });
        let ca = [
            folder.join(CA_FILE),
            dir.join(CA_FILE),
            dir.join(CA_DIR).join(CA_FILE),
        ]
        .into_iter()
        .find(|path| path.is_file())
        .unwrap_or_else(|| folder.join(CA_FILE));
        Tls::load(
            &ca,
            &folder.join(cert_name),
            &folder.join(format!("{name}.key")),
        )
    }

    /// A client that trusts `ca` but presents no certificate. Detflow servers refuse it;
    /// it exists to prove that.
    pub fn no_client_cert(ca: &Path) -> Result<Tls, TransportError> {
        let roots = load_roots(ca)?;
        let client = client_config(&crypto_provider(), roots, None)?;
        Ok(Tls {
            server: None,
            client: Arc::new(client),
            identity: None,
            reset_secret: None,
        })
    }

    /// Whether this material can serve (it holds a certificate and key).
    pub fn has_certificate(&self) -> bool {
        self.server.is_some()
    }

    /// The node id our own certificate names, if it is a node certificate; a node checks
    /// it against its configured id.
    pub fn node_id(&self) -> Option<u32> {
        self.identity.and_then(|identity| identity.node_id)
    }
}

/// Installs ring as the process-wide default rustls provider, if no default is installed
/// yet. Detflow's own configurations name their provider explicitly and do not need this;
/// it is for other rustls users in the same process, where both ring and aws-lc-rs are
/// compiled in and rustls cannot pick one by itself. Safe to call any number of times.
pub fn install_default_crypto_provider() {
    // An error only means a provider is already installed, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_file(path: &Path) -> Result<Vec<u8>, TransportError> {
    std::fs::read(path).map_err(|source| TransportError::File {
        path: path.to_path_buf(),
        source,
    })
}

fn pem_error(path: &Path, reason: String) -> TransportError {
    TransportError::Pem {
        path: PathBuf::from(path),
        reason,
    }
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TransportError> {
    let pem = read_file(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, e.to_string()))?;
    if certs.is_empty() {
        return Err(pem_error(path, "no certificate in the file".into()));
    }
    Ok(certs)
}

fn load_roots(path: &Path) -> Result<Arc<RootCertStore>, TransportError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert)?;
    }
    Ok(Arc::new(roots))
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TransportError> {
    let pem = read_file(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| pem_error(path, e.to_string()))
}

fn server_config(
    provider: &Arc<CryptoProvider>,
    roots: Arc<RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<QuicServerConfig, TransportError> {
    let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone()).build()?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(QuicServerConfig::try_from(config)?)
}

fn client_config(
    provider: &Arc<CryptoProvider>,
    roots: Arc<RootCertStore>,
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Result<QuicClientConfig, TransportError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots);
    let mut config = match identity {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key)?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(QuicClientConfig::try_from(config)?)
}
