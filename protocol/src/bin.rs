//! Serde helpers that encode byte strings as MessagePack `bin` (one byte per byte, where
//! serde's default for `Vec<u8>` is an array of integers) and decode either form.
//!
//! Use as `#[serde(with = "detflow_protocol::bin::bytes")]` on a `Vec<u8>`, `detflow_protocol::bin::option` on an
//! `Option<Vec<u8>>` and `detflow_protocol::bin::list` on a `Vec<Vec<u8>>`.

use serde::de::{Deserialize, Deserializer, SeqAccess, Visitor};
use serde::ser::{Serialize, Serializer};
use std::fmt;

/// A borrowed byte string that serializes as `bin`.
pub struct Blob<'a>(pub &'a [u8]);

impl Serialize for Blob<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

/// An owned byte string that deserializes from `bin` or from an array of integers.
pub struct BlobBuf(pub Vec<u8>);

impl<'de> Deserialize<'de> for BlobBuf {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<BlobBuf, D::Error> {
        d.deserialize_byte_buf(BlobVisitor).map(BlobBuf)
    }
}

struct BlobVisitor;

impl<'de> Visitor<'de> for BlobVisitor {
    type Value = Vec<u8>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a byte string")
    }

    fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
        Ok(v.to_vec())
    }

    fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
        Ok(v)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(b) = seq.next_element()? {
            out.push(b);
        }
        Ok(out)
    }
}

/// `Vec<u8>` as `bin`.
pub mod bytes {
    use super::{Blob, BlobBuf};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    /// Serde `serialize_with` hook.
    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        Blob(v).serialize(s)
    }

    /// Serde `deserialize_with` hook.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        BlobBuf::deserialize(d).map(|b| b.0)
    }
}

/// `Option<Vec<u8>>` as nil or `bin`.
pub mod option {
    use super::{Blob, BlobBuf};
    use serde::{Deserialize, Deserializer, Serializer};

    /// Serde `serialize_with` hook.
    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(b) => s.serialize_some(&Blob(b)),
            None => s.serialize_none(),
        }
    }

    /// Serde `deserialize_with` hook.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        Option::<BlobBuf>::deserialize(d).map(|o| o.map(|b| b.0))
    }
}

/// `Vec<Vec<u8>>` as an array of `bin`.
pub mod list {
    use super::{Blob, BlobBuf};
    use serde::{Deserialize, Deserializer, Serializer};

    /// Serde `serialize_with` hook.
    pub fn serialize<S: Serializer>(v: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|b| Blob(b)))
    }

    /// Serde `deserialize_with` hook.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
        Vec::<BlobBuf>::deserialize(d).map(|v| v.into_iter().map(|b| b.0).collect())
    }
}

#[cfg(test)]
mod tests {
    use crate::codec;
    use serde::{Deserialize, Serialize};

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Plain {
        a: Vec<u8>,
        b: Option<Vec<u8>>,
        c: Vec<Vec<u8>>,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Compact {
        #[serde(with = "super::bytes")]
        a: Vec<u8>,
        #[serde(with = "super::option")]
        b: Option<Vec<u8>>,
        #[serde(with = "super::list")]
        c: Vec<Vec<u8>>,
    }

    #[test]
    fn encodes_bin_and_decodes_both_forms() {
        let big = vec![0xff; 100];
        let compact = Compact {
            a: big.clone(),
            b: Some(vec![1, 200]),
            c: vec![vec![], vec![0x80]],
        };
        let bytes = codec::encode(&compact);
        // 100 bytes of 0xff as integers would take 200 bytes; as bin they take 102.
        assert!(bytes.len() < 120, "{} bytes", bytes.len());
        assert_eq!(codec::decode::<Compact>(&bytes).unwrap(), compact);

        let plain = Plain {
            a: big,
            b: None,
            c: vec![vec![7]],
        };
        let from_plain = codec::decode::<Compact>(&codec::encode(&plain)).unwrap();
        assert_eq!(from_plain.a, plain.a);
        assert_eq!(from_plain.b, None);
        assert_eq!(from_plain.c, plain.c);
    }
}
