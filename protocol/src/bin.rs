//! Serde helpers that encode byte strings as MessagePack `bin` (one byte per byte, where
//! serde's default for `Vec<u8>` is an array of integers) and decode either form.
//!
//! A `Vec<u8>` or an `Option<Vec<u8>>` field takes `#[serde(with = "serde_bytes")]`
//! directly; [`bytes`] and [`option`] are the same hooks under this crate's name, and
//! [`list`] extends them to `Vec<Vec<u8>>`, which `serde_bytes` does not cover.
//!
//! Decoding accepts `bin`, an array of integers (serde's default form, so values written
//! before these helpers still load) and, as `serde_bytes` does, a `str`'s UTF-8 bytes.
//! Encoding is always `bin`, byte for byte as the hand-written helpers this replaced
//! (pinned in the tests below).

use serde::ser::{Serialize, Serializer};

/// A borrowed byte string that serializes as `bin`.
pub struct Blob<'a>(pub &'a [u8]);

impl Serialize for Blob<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serde_bytes::serialize(self.0, s)
    }
}

/// `Vec<u8>` as `bin`: `serde_bytes`'s hooks.
pub mod bytes {
    pub use serde_bytes::{deserialize, serialize};
}

/// `Option<Vec<u8>>` as nil or `bin`: `serde_bytes`'s hooks.
pub mod option {
    pub use serde_bytes::{deserialize, serialize};
}

/// `Vec<Vec<u8>>` as an array of `bin`.
pub mod list {
    use serde::{Deserialize, Deserializer, Serializer};
    use serde_bytes::{ByteBuf, Bytes};

    /// Serde `serialize_with` hook.
    pub fn serialize<S: Serializer>(v: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|b| Bytes::new(b)))
    }

    /// Serde `deserialize_with` hook.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
        Vec::<ByteBuf>::deserialize(d).map(|v| v.into_iter().map(ByteBuf::into_vec).collect())
    }
}

/// `Vec<Option<Vec<u8>>>`, e.g. values or their absence, as an array of nil or `bin`.
pub mod option_values {
    use serde::{Deserialize, Deserializer, Serializer};
    use serde_bytes::{ByteBuf, Bytes};

    /// Serde `serialize_with` hook.
    pub fn serialize<S: Serializer>(v: &[Option<Vec<u8>>], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|b| b.as_deref().map(Bytes::new)))
    }

    /// Serde `deserialize_with` hook.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Option<Vec<u8>>>, D::Error> {
        Vec::<Option<ByteBuf>>::deserialize(d)
            .map(|v| v.into_iter().map(|b| b.map(ByteBuf::into_vec)).collect())
    }
}

/// `Vec<(K, Option<Vec<u8>>)>`, e.g. keys with their values or absence, as an array of
/// `[key, nil | bin]` pairs.
pub mod pairs_option {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use serde_bytes::{ByteBuf, Bytes};

    /// Serde `serialize_with` hook.
    pub fn serialize<K: Serialize, S: Serializer>(
        v: &[(K, Option<Vec<u8>>)],
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|(k, b)| (k, b.as_deref().map(Bytes::new))))
    }

    /// Serde `deserialize_with` hook.
    #[allow(clippy::type_complexity)]
    pub fn deserialize<'de, K: Deserialize<'de>, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Vec<(K, Option<Vec<u8>>)>, D::Error> {
        let pairs = Vec::<(K, Option<ByteBuf>)>::deserialize(d)?;
        Ok(pairs
            .into_iter()
            .map(|(k, b)| (k, b.map(ByteBuf::into_vec)))
            .collect())
    }
}

/// `Vec<(K, Vec<u8>)>`, e.g. keys with their values, as an array of `[key, bin]` pairs.
pub mod pairs {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use serde_bytes::{ByteBuf, Bytes};

    /// Serde `serialize_with` hook.
    pub fn serialize<K: Serialize, S: Serializer>(
        v: &[(K, Vec<u8>)],
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|(k, b)| (k, Bytes::new(b))))
    }

    /// Serde `deserialize_with` hook.
    pub fn deserialize<'de, K: Deserialize<'de>, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Vec<(K, Vec<u8>)>, D::Error> {
        let pairs = Vec::<(K, ByteBuf)>::deserialize(d)?;
        Ok(pairs.into_iter().map(|(k, b)| (k, b.into_vec())).collect())
    }
}

/// `Vec<(K, Vec<(K, Vec<u8>)>)>`, e.g. prefixes with the keys and values under them, as an
/// array of `[key, [[key, bin], ...]]`.
pub mod groups {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    /// One group's rows, serialized through [`super::pairs`].
    struct Rows<'a, K>(&'a [(K, Vec<u8>)]);

    impl<K: Serialize> Serialize for Rows<'_, K> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            super::pairs::serialize(self.0, s)
        }
    }

    /// One group's rows, deserialized through [`super::pairs`].
    struct OwnedRows<K>(Vec<(K, Vec<u8>)>);

    impl<'de, K: Deserialize<'de>> Deserialize<'de> for OwnedRows<K> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            super::pairs::deserialize(d).map(OwnedRows)
        }
    }

    /// Serde `serialize_with` hook.
    #[allow(clippy::type_complexity)]
    pub fn serialize<K: Serialize, S: Serializer>(
        v: &[(K, Vec<(K, Vec<u8>)>)],
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|(k, rows)| (k, Rows(rows))))
    }

    /// Serde `deserialize_with` hook.
    #[allow(clippy::type_complexity)]
    pub fn deserialize<'de, K: Deserialize<'de>, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Vec<(K, Vec<(K, Vec<u8>)>)>, D::Error> {
        let groups = Vec::<(K, OwnedRows<K>)>::deserialize(d)?;
        Ok(groups.into_iter().map(|(k, rows)| (k, rows.0)).collect())
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

        // A `str` where bytes are expected decodes as its UTF-8 bytes (`serde_bytes`'s
        // choice); such bytes are then checked where they enter, as any others are.
        let from_str = codec::decode::<crate::Key>(&codec::encode("ab")).unwrap();
        assert_eq!(from_str.as_bytes(), b"ab");
    }

    /// The wire bytes of the types that carry byte strings, pinned: a change of how bytes
    /// are encoded would split a cluster running two builds, and change every digest.
    #[test]
    fn byte_strings_on_the_wire_are_pinned() {
        use crate::{
            ClientId, Footprint, Key, NodeId, Outcome, RequestSeq, Transaction, Value,
            message::Call,
        };
        fn hex(bytes: &[u8]) -> String {
            bytes.iter().map(|b| format!("{b:02x}")).collect()
        }
        let key = Key::table("acct").u64(7);
        assert_eq!(
            hex(&codec::encode(&key)),
            "c40f026163637400150000000000000007"
        );
        let value: Value = vec![1, 0xff];
        // A `Value` is a plain `Vec<u8>`: an array of integers, as the state digests hash it.
        assert_eq!(hex(&codec::encode(&value)), "9201ccff");
        let call = Call {
            client: ClientId(3),
            seq: RequestSeq(4),
            procedure: "p".into(),
            args: vec![0x92, 0x01, 0xcc, 0xff],
        };
        assert_eq!(hex(&codec::encode(&call)), "940304a170c4049201ccff");
        let txn = Transaction {
            client: ClientId(3),
            seq: RequestSeq(4),
            gateway: NodeId(200),
            procedure: "p".into(),
            args: vec![0xc1],
            footprint: Footprint::new()
                .write(key.clone())
                .read_prefix(Key::table("t")),
        };
        assert_eq!(
            hex(&codec::encode(&txn)),
            "960304ccc8a170c401c191929281a54578616374c40f026163637400150000000000000007\
             a557726974659281a6507265666978c403027400a452656164"
        );
        assert_eq!(
            hex(&codec::encode(&Outcome::Committed(vec![0xc0; 3]))),
            "81a9436f6d6d6974746564c403c0c0c0"
        );
        assert_eq!(
            hex(&codec::encode(&Outcome::Committed(Vec::new()))),
            "81a9436f6d6d6974746564c400"
        );
        let compact = Compact {
            a: vec![9],
            b: Some(vec![]),
            c: vec![vec![1], vec![]],
        };
        assert_eq!(hex(&codec::encode(&compact)), "93c40109c40092c40101c400");
        let none = Compact {
            a: vec![],
            b: None,
            c: vec![],
        };
        assert_eq!(hex(&codec::encode(&none)), "93c400c090");
        let reads = crate::message::RemoteReads {
            position: crate::Position::new(crate::Epoch(2), 1),
            from: crate::PartitionId(1),
            exact: vec![(Key::table("a"), Some(vec![0xff])), (Key::table("b"), None)],
            prefixes: vec![(Key::table("p"), vec![(Key::table("p"), vec![0x80])])],
            chunk: 0,
            chunks: 1,
        };
        assert_eq!(
            hex(&codec::encode(&reads)),
            "9693020001019292c403026100c401ff92c403026200c09192c4030270009192c403027000\
             c401800001"
        );
    }

    /// Remote reads written before values were `bin` (arrays of integers) still decode, as
    /// the outbox records a node persisted under an earlier build must.
    #[test]
    fn remote_reads_decode_values_in_either_form() {
        use crate::message::RemoteReads;
        use crate::{Epoch, Key, PartitionId, Position};
        /// Keys with the rows under them, as `RemoteReads::prefixes`.
        type Groups = Vec<(Key, Vec<(Key, Vec<u8>)>)>;
        #[derive(Serialize)]
        struct OldReads {
            position: Position,
            from: PartitionId,
            exact: Vec<(Key, Option<Vec<u8>>)>,
            prefixes: Groups,
            chunk: u32,
            chunks: u32,
        }
        let value = vec![0xfe; 40];
        let old = OldReads {
            position: Position::new(Epoch(9), 3),
            from: PartitionId(2),
            exact: vec![(Key::table("x").u64(1), Some(value.clone()))],
            prefixes: vec![(
                Key::table("y"),
                vec![(Key::table("y").u64(2), value.clone())],
            )],
            chunk: 1,
            chunks: 2,
        };
        let old_bytes = codec::encode(&old);
        let reads: RemoteReads = codec::decode(&old_bytes).unwrap();
        assert_eq!(reads.exact, old.exact);
        assert_eq!(reads.prefixes, old.prefixes);
        assert_eq!(
            (reads.position, reads.from, reads.chunk),
            (old.position, old.from, 1)
        );
        let new_bytes = codec::encode(&reads);
        // Each 0xfe takes two bytes as an integer and one as `bin`.
        assert!(new_bytes.len() + 70 < old_bytes.len());
        assert_eq!(codec::decode::<RemoteReads>(&new_bytes).unwrap(), reads);
    }
}
