//! Who a peer is, as its certificate says: a role, a node id for nodes, a fingerprint.

use crate::{CLIENT_DNS_NAME, NODE_DNS_NAME, OPERATOR_DNS_NAME};
use rustls::pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;

/// The suffix of the SAN DNS name that carries a node's id: `node-<id>.node.detflow`.
const NODE_ID_SUFFIX: &str = ".node.detflow";
/// The prefix of the first label of that name.
const NODE_ID_PREFIX: &str = "node-";

/// The SAN DNS name that gives a node certificate its id: `node-<id>.node.detflow`.
pub fn node_dns_name(id: u32) -> String {
    format!("{NODE_ID_PREFIX}{id}{NODE_ID_SUFFIX}")
}

/// Why a verified peer certificate was still refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RoleError {
    /// The certificate names both roles (or a client certificate names a node id).
    #[error(
        "certificate names both {NODE_DNS_NAME} and {CLIENT_DNS_NAME} (or a client certificate names a node id)"
    )]
    Ambiguous,
    /// The peer presented no certificate.
    #[error("no peer certificate")]
    NoCertificate,
    /// A node certificate that does not name exactly one node id.
    #[error(
        "a node certificate must name exactly one node id (SAN DNS node-<id>{NODE_ID_SUFFIX}); this one names {names}"
    )]
    NodeId {
        /// How many node ids it names.
        names: usize,
    },
    /// A SAN DNS name under `.node.detflow` that is not `node-<id>.node.detflow` with a
    /// plain decimal id.
    #[error("certificate names {0:?}, which is not node-<id>{NODE_ID_SUFFIX}")]
    NodeIdMalformed(String),
    /// The certificate names neither role.
    #[error("certificate names neither {NODE_DNS_NAME} nor {CLIENT_DNS_NAME}")]
    NoRole,
    /// The certificate does not parse as X.509.
    #[error("certificate does not parse: {0}")]
    Unparsable(String),
}

/// What a peer is, as its certificate says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PeerRole {
    /// A client: it calls procedures on bidirectional streams.
    Client,
    /// A cluster node: it opens channels.
    Node,
}

impl PeerRole {
    /// The role named by a DER certificate's SAN DNS names (which must also satisfy the
    /// rest of [`PeerIdentity::of_certificate`]).
    pub fn of_certificate(der: &[u8]) -> Result<PeerRole, RoleError> {
        PeerIdentity::of_certificate(der).map(|identity| identity.role)
    }
}

/// Everything a server knows of a peer once its certificate verified.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerIdentity {
    /// Node or client.
    pub role: PeerRole,
    /// A node's id (`Some` exactly for nodes).
    pub node_id: Option<u32>,
    /// blake3 of the leaf certificate's DER: stable for as long as the certificate is, and
    /// unforgeable without its key, so it can own sessions.
    pub fingerprint: [u8; 32],
    /// Whether a client's certificate also names [`OPERATOR_DNS_NAME`].
    pub operator: bool,
}

impl PeerIdentity {
    /// The identity a DER leaf certificate claims. A node certificate names
    /// [`NODE_DNS_NAME`] and exactly one [`node_dns_name`]; a client certificate names
    /// [`CLIENT_DNS_NAME`] and no node id.
    pub fn of_certificate(der: &[u8]) -> Result<PeerIdentity, RoleError> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| RoleError::Unparsable(e.to_string()))?;
        let san = cert
            .subject_alternative_name()
            .map_err(|e| RoleError::Unparsable(e.to_string()))?
            .ok_or(RoleError::NoRole)?;
        let (mut node, mut client, mut operator) = (false, false, false);
        let mut node_ids = Vec::new();
        for name in &san.value.general_names {
            if let GeneralName::DNSName(dns) = name {
                node |= dns.eq_ignore_ascii_case(NODE_DNS_NAME);
                client |= dns.eq_ignore_ascii_case(CLIENT_DNS_NAME);
                operator |= dns.eq_ignore_ascii_case(OPERATOR_DNS_NAME);
                if let Some(id) = node_id_of_dns_name(dns)? {
                    node_ids.push(id);
                }
            }
        }
        let role = match (node, client) {
            (true, false) => PeerRole::Node,
            (false, true) if node_ids.is_empty() => PeerRole::Client,
            (true, true) | (false, true) => return Err(RoleError::Ambiguous),
            (false, false) => return Err(RoleError::NoRole),
        };
        let node_id = match (role, node_ids.as_slice()) {
            (PeerRole::Node, [id]) => Some(*id),
            (PeerRole::Node, ids) => return Err(RoleError::NodeId { names: ids.len() }),
            (PeerRole::Client, _) => None,
        };
        Ok(PeerIdentity {
            role,
            node_id,
            fingerprint: *blake3::hash(der).as_bytes(),
            operator: operator && role == PeerRole::Client,
        })
    }

    /// The identity of the peer of an established QUIC connection.
    pub(crate) fn of_connection(conn: &quinn::Connection) -> Result<PeerIdentity, RoleError> {
        let identity = conn.peer_identity().ok_or(RoleError::NoCertificate)?;
        let chain = identity
            .downcast::<Vec<CertificateDer<'static>>>()
            .map_err(|_| RoleError::NoCertificate)?;
        let leaf = chain.first().ok_or(RoleError::NoCertificate)?;
        PeerIdentity::of_certificate(leaf)
    }
}

/// The node id a SAN DNS name carries: `Ok(None)` for a name outside `.node.detflow`. The
/// id must be plain decimal (no sign, no leading zero) so that one id has one spelling.
fn node_id_of_dns_name(dns: &str) -> Result<Option<u32>, RoleError> {
    let lower = dns.to_ascii_lowercase();
    let Some(label) = lower.strip_suffix(NODE_ID_SUFFIX) else {
        return Ok(None);
    };
    let malformed = || RoleError::NodeIdMalformed(dns.to_string());
    let digits = label.strip_prefix(NODE_ID_PREFIX).ok_or_else(malformed)?;
    let canonical = !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'));
    if !canonical {
        return Err(malformed());
    }
    digits.parse().map(Some).map_err(|_| malformed())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_have_one_spelling() {
        assert_eq!(node_dns_name(7), "node-7.node.detflow");
        assert_eq!(node_id_of_dns_name("node-7.node.detflow"), Ok(Some(7)));
        assert_eq!(node_id_of_dns_name("NODE-12.Node.Detflow"), Ok(Some(12)));
        assert_eq!(node_id_of_dns_name("node.detflow"), Ok(None));
        assert_eq!(node_id_of_dns_name("localhost"), Ok(None));
        assert_eq!(
            node_id_of_dns_name(&format!("node-{}.node.detflow", u32::MAX)),
            Ok(Some(u32::MAX))
        );
        for bad in [
            "node-.node.detflow",
            "node-07.node.detflow",
            "node-+7.node.detflow",
            "node--7.node.detflow",
            "node-7x.node.detflow",
            "x.node.detflow",
            "node-4294967296.node.detflow",
        ] {
            assert_eq!(
                node_id_of_dns_name(bad),
                Err(RoleError::NodeIdMalformed(bad.into())),
                "{bad}"
            );
        }
    }
}
