//! A MessagePack reader that borrows: items, whole values' byte spans, and values as JSON.
//!
//! Rows are decoded straight into Arrow builders, column by column, so reading one column
//! of a wide row skips the others without allocating (serde would build every field).

use std::fmt::Write;

/// A value that is not well-formed MessagePack.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Malformed(pub(crate) String);

/// One MessagePack item; arrays and maps give only their length, their items follow.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Item<'a> {
    /// nil.
    Nil,
    /// A boolean.
    Bool(bool),
    /// A non-negative integer.
    UInt(u64),
    /// A negative integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// A string's bytes (UTF-8 not yet checked).
    Str(&'a [u8]),
    /// Bytes.
    Bin(&'a [u8]),
    /// An array of this many items.
    Array(u32),
    /// A map of this many key-value pairs.
    Map(u32),
    /// An extension value.
    Ext(i8, &'a [u8]),
}

/// Reads items from a byte slice.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `buf`.
    pub(crate) fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf, pos: 0 }
    }

    /// Where the next item starts.
    #[cfg(test)]
    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&end| end <= self.buf.len())
            .ok_or_else(|| Malformed(format!("truncated at byte {}", self.pos)))?;
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn be(&mut self, n: usize) -> Result<u64, Malformed> {
        Ok(self
            .take(n)?
            .iter()
            .fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
    }

    fn len(&mut self, n: usize) -> Result<usize, Malformed> {
        usize::try_from(self.be(n)?).map_err(|_| Malformed("length overflows".into()))
    }

    /// The next item.
    pub(crate) fn item(&mut self) -> Result<Item<'a>, Malformed> {
        let marker = self.take(1)?[0];
        Ok(match marker {
            0x00..=0x7f => Item::UInt(u64::from(marker)),
            0x80..=0x8f => Item::Map(u32::from(marker & 0x0f)),
            0x90..=0x9f => Item::Array(u32::from(marker & 0x0f)),
            0xa0..=0xbf => Item::Str(self.take(usize::from(marker & 0x1f))?),
            0xc0 => Item::Nil,
            0xc2 => Item::Bool(false),
            0xc3 => Item::Bool(true),
            0xc4..=0xc6 => {
                let n = self.len(1 << (marker - 0xc4))?;
                Item::Bin(self.take(n)?)
            }
            0xc7..=0xc9 => {
                let n = self.len(1 << (marker - 0xc7))?;
                let ty = self.take(1)?[0] as i8;
                Item::Ext(ty, self.take(n)?)
            }
            0xca => Item::Float(f64::from(f32::from_bits(self.be(4)? as u32))),
            0xcb => Item::Float(f64::from_bits(self.be(8)?)),
            0xcc..=0xcf => Item::UInt(self.be(1 << (marker - 0xcc))?),
            0xd0 => Item::Int(i64::from(self.take(1)?[0] as i8)),
            0xd1 => Item::Int(i64::from(self.be(2)? as u16 as i16)),
            0xd2 => Item::Int(i64::from(self.be(4)? as u32 as i32)),
            0xd3 => Item::Int(self.be(8)? as i64),
            0xd4..=0xd8 => {
                let ty = self.take(1)?[0] as i8;
                Item::Ext(ty, self.take(1 << (marker - 0xd4))?)
            }
            0xd9..=0xdb => {
                let n = self.len(1 << (marker - 0xd9))?;
                Item::Str(self.take(n)?)
            }
            0xdc | 0xdd => Item::Array(self.be(2 << (marker - 0xdc))? as u32),
            0xde | 0xdf => Item::Map(self.be(2 << (marker - 0xde))? as u32),
            0xe0..=0xff => Item::Int(i64::from(marker as i8)),
            0xc1 => return Err(Malformed("reserved marker 0xc1".into())),
        })
    }

    /// Skips one whole value (an array or map with everything in it).
    pub(crate) fn skip(&mut self) -> Result<(), Malformed> {
        let mut pending: u64 = 1;
        while pending > 0 {
            pending -= 1;
            match self.item()? {
                Item::Array(n) => pending += u64::from(n),
                Item::Map(n) => pending += 2 * u64::from(n),
                _ => {}
            }
        }
        Ok(())
    }

    /// The bytes of the next whole value.
    pub(crate) fn span(&mut self) -> Result<&'a [u8], Malformed> {
        let start = self.pos;
        self.skip()?;
        Ok(&self.buf[start..self.pos])
    }
}

/// One whole MessagePack value written as JSON text into `out`: bytes become arrays of
/// numbers, extension values `null`, map keys strings.
pub(crate) fn to_json(value: &[u8], out: &mut String) -> Result<(), Malformed> {
    let mut reader = Reader::new(value);
    write_json(&mut reader, out, 0)
}

/// Nesting deeper than this is refused rather than recursed into.
const JSON_DEPTH_MAX: u32 = 64;

fn write_json(reader: &mut Reader<'_>, out: &mut String, depth: u32) -> Result<(), Malformed> {
    if depth > JSON_DEPTH_MAX {
        return Err(Malformed(format!("nested deeper than {JSON_DEPTH_MAX}")));
    }
    match reader.item()? {
        Item::Nil | Item::Ext(..) => out.push_str("null"),
        Item::Bool(b) => out.push_str(if b { "true" } else { "false" }),
        Item::UInt(v) => {
            let _ = write!(out, "{v}");
        }
        Item::Int(v) => {
            let _ = write!(out, "{v}");
        }
        Item::Float(v) if v.is_finite() => {
            let _ = write!(out, "{v}");
        }
        Item::Float(_) => out.push_str("null"),
        Item::Str(s) => json_string(&String::from_utf8_lossy(s), out),
        Item::Bin(b) => {
            out.push('[');
            for (i, byte) in b.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let _ = write!(out, "{byte}");
            }
            out.push(']');
        }
        Item::Array(n) => {
            out.push('[');
            for i in 0..n {
                if i > 0 {
                    out.push(',');
                }
                write_json(reader, out, depth + 1)?;
            }
            out.push(']');
        }
        Item::Map(n) => {
            out.push('{');
            for i in 0..n {
                if i > 0 {
                    out.push(',');
                }
                match reader.item()? {
                    Item::Str(s) => json_string(&String::from_utf8_lossy(s), out),
                    Item::UInt(v) => json_string(&v.to_string(), out),
                    Item::Int(v) => json_string(&v.to_string(), out),
                    other => json_string(&format!("{other:?}"), out),
                }
                out.push(':');
                write_json(reader, out, depth + 1)?;
            }
            out.push('}');
        }
    }
    Ok(())
}

fn json_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Serialize;

    #[derive(Serialize)]
    struct Row {
        id: u64,
        name: String,
        delta: i64,
        ratio: f64,
        tags: Vec<String>,
        gone: Option<u32>,
        ok: bool,
    }

    fn row() -> Row {
        Row {
            id: 300,
            name: "a\"b".into(),
            delta: -70_000,
            ratio: 0.5,
            tags: vec!["x".into()],
            gone: None,
            ok: true,
        }
    }

    #[test]
    fn items_and_spans_walk_a_serde_struct() {
        let bytes = detflow_protocol::codec::encode(&row());
        let mut r = Reader::new(&bytes);
        assert_eq!(r.item(), Ok(Item::Array(7)));
        assert_eq!(r.item(), Ok(Item::UInt(300)));
        assert_eq!(r.item(), Ok(Item::Str(b"a\"b")));
        assert_eq!(r.item(), Ok(Item::Int(-70_000)));
        assert_eq!(r.item(), Ok(Item::Float(0.5)));
        let tags = r.span().expect("span");
        assert_eq!(tags, detflow_protocol::codec::encode(&vec!["x"]).as_slice());
        assert_eq!(r.item(), Ok(Item::Nil));
        assert_eq!(r.item(), Ok(Item::Bool(true)));
        assert_eq!(r.pos(), bytes.len());
        assert!(r.item().is_err(), "nothing left");
    }

    #[test]
    fn json_of_named_and_unnamed_values() {
        let mut out = String::new();
        to_json(&detflow_protocol::codec::encode_named(&row()), &mut out).expect("json");
        assert_eq!(
            out,
            r#"{"id":300,"name":"a\"b","delta":-70000,"ratio":0.5,"tags":["x"],"gone":null,"ok":true}"#
        );
        let parsed: serde_json::Value = serde_json::from_str(&out).expect("valid JSON");
        assert_eq!(parsed["delta"], -70_000);
    }

    #[test]
    fn truncated_and_hostile_input_is_an_error_not_a_panic() {
        let bytes = detflow_protocol::codec::encode(&row());
        for cut in 0..bytes.len() {
            let mut r = Reader::new(&bytes[..cut]);
            assert!(r.skip().is_err(), "cut at {cut}");
        }
        // A 32-bit array length with nothing behind it.
        assert!(Reader::new(&[0xdd, 0xff, 0xff, 0xff, 0xff]).skip().is_err());
        let deep = vec![0x91; 1000];
        assert!(to_json(&deep, &mut String::new()).is_err());
    }
}
