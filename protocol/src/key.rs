//! Keys and their order-preserving tuple encoding.
//!
//! A key is a tuple of elements (table name first, then fields) encoded so that comparing
//! the bytes compares the tuples: element by element, a shorter tuple before any tuple it
//! is a prefix of, and elements of different kinds ordered bytes < string < i64 < u64.
//! The encoding follows FoundationDB's tuple layer: a type tag, then
//!
//! - bytes and strings: the content with every `0x00` escaped as `0x00 0xFF`, then `0x00`;
//! - `i64`: eight big-endian bytes with the sign bit flipped;
//! - `u64`: eight big-endian bytes.
//!
//! Every element is self-delimiting, so the encoding of a tuple's first `n` elements is a
//! byte prefix of the whole; partitioners route on such prefixes without decoding.
//!
//! Keys arrive from clients (footprints, `kv.txn` arguments) as raw bytes, so they are
//! checked where they enter: [`Key::validate`] accepts exactly the keys a node stores,
//! which every restart must decode again ([`Key::from_bytes`]). A key that decodes but was
//! stored before these checks (no table name, too long) still loads.

use serde::{Deserialize, Serialize};
use std::fmt;

const TAG_BYTES: u8 = 0x01;
const TAG_STR: u8 = 0x02;
const TAG_I64: u8 = 0x14;
const TAG_U64: u8 = 0x15;

/// The table of the executor's own bookkeeping (result table, read outbox). Footprints may
/// not name it.
pub const SYSTEM_TABLE: &str = "_sys";

/// The encoding of the one-element tuple `("_sys",)`, which starts every bookkeeping key.
const SYSTEM_PREFIX: &[u8] = b"\x02_sys\x00";

/// The longest valid key, in encoded bytes. Keys are copied into every plan, remote read
/// and result of the transactions that name them, so they stay small; values carry data.
pub const KEY_BYTES_MAX: usize = 4096;

/// One element of a key tuple. The variant order is the encoding's order.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Elem {
    /// Raw bytes.
    Bytes(Vec<u8>),
    /// A UTF-8 string.
    Str(String),
    /// A signed integer.
    I64(i64),
    /// An unsigned integer.
    U64(u64),
}

/// Why a byte string is not a valid tuple encoding.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// An element tag this encoding does not define.
    #[error("unknown tuple element tag {tag:#04x} at byte {at}")]
    UnknownTag {
        /// The tag byte.
        tag: u8,
        /// Its offset in the key.
        at: usize,
    },
    /// The key ends inside an element.
    #[error("key ends inside an element starting at byte {at}")]
    Truncated {
        /// Where the unfinished element starts.
        at: usize,
    },
    /// A string element that is not UTF-8.
    #[error("string element at byte {at} is not UTF-8")]
    NotUtf8 {
        /// Where the element starts.
        at: usize,
    },
    /// The first element is not a table name: a string without NUL bytes.
    #[error("a key starts with its table name (a string without NUL bytes)")]
    NoTable,
    /// The key is longer than [`KEY_BYTES_MAX`].
    #[error("key of {bytes} bytes exceeds the maximum of {max}")]
    TooLong {
        /// The key's length.
        bytes: usize,
        /// The limit.
        max: usize,
    },
}

/// An encoded key: ordered bytes.
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Key(#[serde(with = "serde_bytes")] Vec<u8>);

impl Key {
    /// A key whose first element is the table name `table`.
    pub fn table(table: &str) -> Key {
        Key(Vec::with_capacity(32)).str(table)
    }

    /// The key encoding `elems`.
    pub fn from_elems(elems: &[Elem]) -> Key {
        let mut key = Key(Vec::new());
        for elem in elems {
            key = key.elem(elem);
        }
        key
    }

    /// Wraps bytes that are already a key, checking that they decode: what a store checks
    /// when it loads keys it wrote. New keys from outside go through
    /// [`Key::from_bytes_checked`].
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Key, KeyError> {
        let key = Key(bytes);
        key.elems()?;
        Ok(key)
    }

    /// Wraps bytes that must form a valid key (see [`Key::validate`]).
    pub fn from_bytes_checked(bytes: Vec<u8>) -> Result<Key, KeyError> {
        let key = Key(bytes);
        key.validate()?;
        Ok(key)
    }

    /// Checks that this is a key a node may store: a well-formed tuple encoding with
    /// nothing trailing, whose first element is a table name (a string without NUL), and
    /// at most [`KEY_BYTES_MAX`] bytes long. Every valid key decodes
    /// ([`Key::from_bytes`] accepts it), so a store that holds only valid keys always loads.
    ///
    /// Also checks key prefixes (footprint prefixes, scans): a valid prefix is a key made
    /// of whole elements. Runs in time linear in the length and allocates nothing for keys
    /// without escaped NULs.
    pub fn validate(&self) -> Result<(), KeyError> {
        if self.0.len() > KEY_BYTES_MAX {
            return Err(KeyError::TooLong {
                bytes: self.0.len(),
                max: KEY_BYTES_MAX,
            });
        }
        if self.table_name().is_none() {
            // Tell a malformed first element apart from a well-formed non-table one.
            if !self.0.is_empty() {
                check_elem(&self.0, 0)?;
            }
            return Err(KeyError::NoTable);
        }
        let mut at = 0;
        while at < self.0.len() {
            at = check_elem(&self.0, at)?;
        }
        Ok(())
    }

    /// Appends one element.
    pub fn elem(self, elem: &Elem) -> Key {
        match elem {
            Elem::Bytes(b) => self.bytes(b),
            Elem::Str(s) => self.str(s),
            Elem::I64(v) => self.i64(*v),
            Elem::U64(v) => self.u64(*v),
        }
    }

    /// Appends a string element.
    pub fn str(mut self, s: &str) -> Key {
        self.0.push(TAG_STR);
        push_escaped(&mut self.0, s.as_bytes());
        self
    }

    /// Appends a bytes element.
    pub fn bytes(mut self, b: &[u8]) -> Key {
        self.0.push(TAG_BYTES);
        push_escaped(&mut self.0, b);
        self
    }

    /// Appends an unsigned integer element.
    pub fn u64(mut self, v: u64) -> Key {
        self.0.push(TAG_U64);
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }

    /// Appends a signed integer element.
    pub fn i64(mut self, v: i64) -> Key {
        self.0.push(TAG_I64);
        self.0
            .extend_from_slice(&((v as u64) ^ (1 << 63)).to_be_bytes());
        self
    }

    /// Whether this key belongs to the executor's bookkeeping table, [`SYSTEM_TABLE`].
    pub fn is_system(&self) -> bool {
        self.0.starts_with(SYSTEM_PREFIX)
    }

    /// The encoded bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Whether this key's tuple starts with (or equals) `prefix`'s tuple.
    ///
    /// A byte prefix is not enough: `("t", "a")` is a byte prefix of `("t", "a\0")`, whose
    /// escaped NUL continues the string (`0x00 0xFF`) rather than starting a new element.
    /// Element tags are never `0xFF`, so the byte after the prefix tells which it is; and
    /// since `0xFF` sorts after every tag, the keys under a prefix stay contiguous.
    pub fn starts_with(&self, prefix: &Key) -> bool {
        self.0.starts_with(&prefix.0) && self.0.get(prefix.0.len()) != Some(&0xFF)
    }

    /// The decoded tuple.
    pub fn elems(&self) -> Result<Vec<Elem>, KeyError> {
        let mut elems = Vec::new();
        let mut at = 0;
        while at < self.0.len() {
            let (elem, next) = decode_elem(&self.0, at)?;
            elems.push(elem);
            at = next;
        }
        Ok(elems)
    }

    /// The byte length of the encoding of the first `n` elements, if the key has that many.
    pub fn prefix_len(&self, n: usize) -> Option<usize> {
        let mut at = 0;
        for _ in 0..n {
            if at >= self.0.len() {
                return None;
            }
            at = skip_elem(&self.0, at).ok()?;
        }
        Some(at)
    }

    /// The first element as a string: by convention the table name.
    pub fn table_name(&self) -> Option<&str> {
        if self.0.first() != Some(&TAG_STR) {
            return None;
        }
        let end = skip_elem(&self.0, 0).ok()?;
        let raw = &self.0[1..end - 1];
        // A table name with an embedded NUL would be escaped; such names are not supported
        // as table names, so the raw slice is the name exactly when it has no 0x00.
        if raw.contains(&0) {
            return None;
        }
        std::str::from_utf8(raw).ok()
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.elems() {
            Ok(elems) => {
                write!(f, "(")?;
                for (i, e) in elems.iter().enumerate() {
                    if i > 0 {
                        write!(f, ", ")?;
                    }
                    match e {
                        Elem::Bytes(b) => write!(f, "b{b:02x?}")?,
                        Elem::Str(s) => write!(f, "{s:?}")?,
                        Elem::I64(v) => write!(f, "{v}i")?,
                        Elem::U64(v) => write!(f, "{v}")?,
                    }
                }
                write!(f, ")")
            }
            Err(_) => write!(f, "raw{:02x?}", self.0),
        }
    }
}

fn push_escaped(out: &mut Vec<u8>, content: &[u8]) {
    for &b in content {
        out.push(b);
        if b == 0 {
            out.push(0xFF);
        }
    }
    out.push(0);
}

/// Returns the offset just past the element starting at `at`.
fn skip_elem(bytes: &[u8], at: usize) -> Result<usize, KeyError> {
    match bytes[at] {
        TAG_BYTES | TAG_STR => {
            let mut i = at + 1;
            loop {
                match bytes.get(i) {
                    None => return Err(KeyError::Truncated { at }),
                    Some(0) if bytes.get(i + 1) == Some(&0xFF) => i += 2,
                    Some(0) => return Ok(i + 1),
                    Some(_) => i += 1,
                }
            }
        }
        TAG_I64 | TAG_U64 => {
            if bytes.len() < at + 9 {
                Err(KeyError::Truncated { at })
            } else {
                Ok(at + 9)
            }
        }
        tag => Err(KeyError::UnknownTag { tag, at }),
    }
}

/// Checks the element starting at `at` as [`decode_elem`] would, without building it;
/// returns the offset just past it.
fn check_elem(bytes: &[u8], at: usize) -> Result<usize, KeyError> {
    let next = skip_elem(bytes, at)?;
    if bytes[at] == TAG_STR {
        let raw = &bytes[at + 1..next - 1];
        let utf8 = if raw.contains(&0) {
            // Escaped NULs (`0x00 0xFF`) are one NUL each: check the unescaped content.
            let mut content = Vec::with_capacity(raw.len());
            let mut i = 0;
            while i < raw.len() {
                content.push(raw[i]);
                i += if raw[i] == 0 { 2 } else { 1 };
            }
            std::str::from_utf8(&content).is_ok()
        } else {
            std::str::from_utf8(raw).is_ok()
        };
        if !utf8 {
            return Err(KeyError::NotUtf8 { at });
        }
    }
    Ok(next)
}

fn decode_elem(bytes: &[u8], at: usize) -> Result<(Elem, usize), KeyError> {
    let next = skip_elem(bytes, at)?;
    let elem = match bytes[at] {
        TAG_BYTES | TAG_STR => {
            let mut content = Vec::with_capacity(next - at - 2);
            let mut i = at + 1;
            while i < next - 1 {
                content.push(bytes[i]);
                i += if bytes[i] == 0 { 2 } else { 1 };
            }
            if bytes[at] == TAG_BYTES {
                Elem::Bytes(content)
            } else {
                Elem::Str(String::from_utf8(content).map_err(|_| KeyError::NotUtf8 { at })?)
            }
        }
        TAG_I64 => Elem::I64((be_u64(&bytes[at + 1..next]) ^ (1 << 63)) as i64),
        _ => Elem::U64(be_u64(&bytes[at + 1..next])),
    };
    Ok((elem, next))
}

fn be_u64(b: &[u8]) -> u64 {
    let mut raw = [0u8; 8];
    raw.copy_from_slice(b);
    u64::from_be_bytes(raw)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn elem() -> impl Strategy<Value = Elem> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..6).prop_map(Elem::Bytes),
            "[a\\x00b\\u{ff}]{0,5}".prop_map(Elem::Str),
            any::<i64>().prop_map(Elem::I64),
            any::<u64>().prop_map(Elem::U64),
            // Small values collide often, which exercises equal-prefix comparisons.
            (0u64..3).prop_map(Elem::U64),
            (-2i64..2).prop_map(Elem::I64),
        ]
    }

    fn tuple() -> impl Strategy<Value = Vec<Elem>> {
        proptest::collection::vec(elem(), 0..5)
    }

    proptest! {
        #[test]
        fn byte_order_equals_tuple_order(a in tuple(), b in tuple()) {
            let (ka, kb) = (Key::from_elems(&a), Key::from_elems(&b));
            prop_assert_eq!(ka.cmp(&kb), a.cmp(&b));
        }

        #[test]
        fn round_trips(a in tuple()) {
            let key = Key::from_elems(&a);
            prop_assert_eq!(key.elems().unwrap(), a.clone());
            let wire = rmp_serde::to_vec(&key).unwrap();
            prop_assert_eq!(rmp_serde::from_slice::<Key>(&wire).unwrap(), key);
        }

        #[test]
        fn starts_with_is_tuple_prefix(a in tuple(), b in tuple()) {
            let (ka, kb) = (Key::from_elems(&a), Key::from_elems(&b));
            prop_assert_eq!(ka.starts_with(&kb), a.starts_with(&b));
        }

        #[test]
        fn prefix_encoding_is_byte_prefix(a in tuple(), n in 0usize..6) {
            let key = Key::from_elems(&a);
            let n = n.min(a.len());
            let prefix = Key::from_elems(&a[..n]);
            prop_assert!(key.starts_with(&prefix));
            prop_assert_eq!(key.prefix_len(n), Some(prefix.as_bytes().len()));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..24)) {
            let _ = Key::from_bytes(bytes);
        }

        /// Valid means storable: a valid key decodes, re-encodes to the same bytes, and
        /// names its table.
        #[test]
        fn valid_keys_decode_canonically(
            bytes in proptest::collection::vec(
                prop_oneof![Just(TAG_STR), Just(TAG_U64), Just(0u8), Just(0xFFu8), any::<u8>()],
                0..24,
            )
        ) {
            let key = Key(bytes);
            if key.validate().is_ok() {
                let elems = Key::from_bytes(key.0.clone()).unwrap().elems().unwrap();
                prop_assert_eq!(Key::from_elems(&elems), key.clone());
                prop_assert!(key.table_name().is_some());
            }
        }

        #[test]
        fn built_keys_with_a_table_are_valid(table in "[a-z_]{1,8}", rest in tuple()) {
            let mut elems = vec![Elem::Str(table)];
            elems.extend(rest);
            let key = Key::from_elems(&elems);
            prop_assert_eq!(key.validate(), Ok(()));
            prop_assert_eq!(Key::from_bytes_checked(key.0.clone()), Ok(key));
        }
    }

    #[test]
    fn validation_rejects_trailing_bytes_missing_tables_and_long_keys() {
        // The case that once stopped a node for good: a stray byte after a valid key.
        let mut bytes = Key::table("kv").u64(5).as_bytes().to_vec();
        bytes.push(0x77);
        let at = bytes.len() - 1;
        assert_eq!(
            Key::from_bytes_checked(bytes.clone()),
            Err(KeyError::UnknownTag { tag: 0x77, at })
        );
        assert!(
            Key::from_bytes(bytes).is_err(),
            "the store could not load it"
        );
        // A cut-off element: a prefix must be made of whole elements.
        let whole = Key::table("kv").u64(5);
        let cut = whole.as_bytes()[..whole.as_bytes().len() - 3].to_vec();
        assert!(matches!(
            Key::from_bytes_checked(cut),
            Err(KeyError::Truncated { .. })
        ));
        assert_eq!(Key::default().validate(), Err(KeyError::NoTable));
        assert_eq!(
            Key::from_elems(&[Elem::U64(1), Elem::Str("t".into())]).validate(),
            Err(KeyError::NoTable)
        );
        assert_eq!(Key::table("a\0b").validate(), Err(KeyError::NoTable));
        assert_eq!(
            Key::from_bytes_checked(vec![TAG_STR, 0xFF, 0]),
            Err(KeyError::NotUtf8 { at: 0 })
        );
        // Not UTF-8 once the escaped NUL is undone: 0xC3 0x00.
        let mut escaped = Key::table("t").as_bytes().to_vec();
        escaped.extend([TAG_STR, 0xC3, 0x00, 0xFF, 0x00]);
        assert_eq!(
            Key::from_bytes_checked(escaped.clone()),
            Err(KeyError::NotUtf8 { at: 3 })
        );
        assert!(Key::from_bytes(escaped).is_err());

        let long = Key::table("t").bytes(&vec![7; KEY_BYTES_MAX]);
        assert_eq!(
            long.validate(),
            Err(KeyError::TooLong {
                bytes: long.as_bytes().len(),
                max: KEY_BYTES_MAX
            })
        );
        // ("t",) takes 3 bytes, a bytes element 2 more than its content.
        let fits = Key::table("t").bytes(&vec![7; KEY_BYTES_MAX - 5]);
        assert_eq!(fits.as_bytes().len(), KEY_BYTES_MAX);
        assert_eq!(fits.validate(), Ok(()));
        assert_eq!(Key::table(SYSTEM_TABLE).str("results").validate(), Ok(()));
    }

    #[test]
    fn table_name_and_display() {
        let key = Key::table("acct").u64(7).i64(-3).str("x");
        assert_eq!(key.table_name(), Some("acct"));
        assert_eq!(key.to_string(), r#"("acct", 7, -3i, "x")"#);
    }

    #[test]
    fn tuple_prefix_is_not_a_string_prefix() {
        let prefix = Key::table("t").str("a");
        assert!(Key::table("t").str("a").u64(1).starts_with(&prefix));
        assert!(prefix.starts_with(&prefix));
        assert!(!Key::table("t").str("a\0").starts_with(&prefix));
        assert!(!Key::table("t").str("ab").starts_with(&prefix));
        // Keys under the prefix sort before the escaped look-alikes, so a range scan that
        // stops at the first key not under the prefix sees every one of them.
        assert!(Key::table("t").str("a").u64(u64::MAX) < Key::table("t").str("a\0"));
    }

    #[test]
    fn system_keys_are_recognised_by_prefix() {
        assert_eq!(Key::table(SYSTEM_TABLE).as_bytes(), SYSTEM_PREFIX);
        assert!(Key::table(SYSTEM_TABLE).str("result").is_system());
        assert!(!Key::table("_sysx").is_system());
        assert!(!Key::table("acct").u64(1).is_system());
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(
            Key::from_bytes(vec![0x99]),
            Err(KeyError::UnknownTag { tag: 0x99, at: 0 })
        );
        assert_eq!(
            Key::from_bytes(vec![TAG_U64, 1]),
            Err(KeyError::Truncated { at: 0 })
        );
        assert_eq!(
            Key::from_bytes(vec![TAG_STR, b'a']),
            Err(KeyError::Truncated { at: 0 })
        );
    }
}
