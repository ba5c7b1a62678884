//! Client sessions that belong to the client that opened them (DESIGN.md §9, §10c).
//!
//! A session id alone is a number anyone can send, so a second client could read another's
//! results or consume its sequence numbers. Instead a gateway opens a session on request
//! and hands back a token: a MAC, under the cluster's session key, of the session id and the
//! fingerprint of the client certificate that asked. Every call carries the token; any
//! gateway checks it without shared state, so a session still moves freely between
//! gateways (retries, failover). A token is useless on a connection with another
//! certificate, and without the key nobody can make one.

use anyhow::{Context, Result, bail};
use detflow_protocol::ClientId;
use detflow_protocol::message::SessionToken;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// The length of a session key file's content: 32 bytes in hex.
const KEY_HEX_LEN: usize = 64;

/// The cluster's session key: every node of a cluster holds the same one.
pub struct SessionKey {
    key: [u8; 32],
    /// Makes session ids unique per node and start: see [`SessionKey::open`].
    nonce: [u8; 16],
    issued: AtomicU64,
}

impl std::fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionKey").finish_non_exhaustive()
    }
}

impl SessionKey {
    /// Reads a key file (64 hex digits, as `detflow certs` writes it).
    pub fn load(path: &Path) -> Result<SessionKey> {
        let text = std::fs::read_to_string(path).with_context(|| {
            format!(
                "reading the session key {} (detflow certs writes it beside the node \
                 certificates; every node of a cluster needs the same one)",
                path.display()
            )
        })?;
        SessionKey::from_hex(text.trim())
            .with_context(|| format!("the session key {}", path.display()))
    }

    /// A key from 64 hex digits.
    pub fn from_hex(hex: &str) -> Result<SessionKey> {
        if hex.len() != KEY_HEX_LEN || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            bail!("expected {KEY_HEX_LEN} hex digits");
        }
        let mut key = [0u8; 32];
        for (i, byte) in key.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)?;
        }
        SessionKey::open(key)
    }

    /// A key from its bytes. Draws a random nonce so that session ids issued by different
    /// nodes, or by one node across restarts, never collide.
    pub fn open(key: [u8; 32]) -> Result<SessionKey> {
        let mut nonce = [0u8; 16];
        getrandom::getrandom(&mut nonce)
            .map_err(|e| anyhow::anyhow!("drawing a random nonce for session ids: {e}"))?;
        Ok(SessionKey {
            key,
            nonce,
            issued: AtomicU64::new(0),
        })
    }

    /// Opens a session for the client whose certificate has `fingerprint`.
    pub fn issue(&self, fingerprint: &[u8; 32]) -> (ClientId, SessionToken) {
        let n = self.issued.fetch_add(1, Ordering::Relaxed);
        let mut hasher = blake3::Hasher::new_keyed(&self.key);
        hasher.update(b"detflow session id v1");
        hasher.update(&self.nonce);
        hasher.update(&n.to_le_bytes());
        let digest = hasher.finalize();
        let mut id = [0u8; 8];
        id.copy_from_slice(&digest.as_bytes()[..8]);
        // Zero is never a session (the simulator and tests use small ids; this only keeps
        // a real session out of the way of an uninitialised one).
        let client = ClientId(u64::from_le_bytes(id) | 1);
        (client, self.token(client, fingerprint))
    }

    /// Whether `token` proves that the client with `fingerprint` opened session `client`.
    pub fn verify(&self, client: ClientId, fingerprint: &[u8; 32], token: &SessionToken) -> bool {
        let expected = self.token(client, fingerprint);
        // Constant time, so the comparison leaks nothing about how much of a guess was right.
        expected
            .0
            .iter()
            .zip(token.0.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }

    fn token(&self, client: ClientId, fingerprint: &[u8; 32]) -> SessionToken {
        let mut hasher = blake3::Hasher::new_keyed(&self.key);
        hasher.update(b"detflow session token v1");
        hasher.update(&client.0.to_le_bytes());
        hasher.update(fingerprint);
        let mut token = [0u8; 16];
        token.copy_from_slice(&hasher.finalize().as_bytes()[..16]);
        SessionToken(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> SessionKey {
        SessionKey::open([byte; 32]).expect("a key")
    }

    #[test]
    fn a_token_proves_its_session_and_certificate_only() {
        let k = key(7);
        let (alice_cert, bob_cert) = ([1u8; 32], [2u8; 32]);
        let (alice, token) = k.issue(&alice_cert);
        assert!(k.verify(alice, &alice_cert, &token));
        // Another certificate, another session, another key: refused.
        assert!(!k.verify(alice, &bob_cert, &token));
        assert!(!k.verify(ClientId(alice.0 ^ 2), &alice_cert, &token));
        assert!(!key(8).verify(alice, &alice_cert, &token));
        // Any gateway of the cluster (same key, its own nonce) accepts it.
        assert!(key(7).verify(alice, &alice_cert, &token));
    }

    #[test]
    fn sessions_are_distinct() {
        let (a, b) = (key(7), key(7));
        let ids: std::collections::BTreeSet<_> = (0..1000)
            .flat_map(|_| [a.issue(&[0; 32]).0, b.issue(&[0; 32]).0])
            .collect();
        assert_eq!(ids.len(), 2000);
    }

    #[test]
    fn key_files_are_checked() {
        assert!(SessionKey::from_hex(&"ab".repeat(32)).is_ok());
        assert!(SessionKey::from_hex("abc").is_err());
        assert!(SessionKey::from_hex(&"zz".repeat(32)).is_err());
    }
}
