//! Checking stored rows against the schemas their tables declare.
//!
//! A row's key is the table name followed by the declared key fields, in order and of their
//! types. Its value is MessagePack: with one declared column, that column's value itself;
//! with several, an array of them in order (what `codec::encode` makes of a struct) or a
//! map naming them (`codec::encode_named`). A table that declares no key fields or no
//! columns is not checked on that side. A column's value may be nil (an `Option` that is
//! `None`, a NULL in SQL) whatever its declared type.

use super::{FieldType, Table};
use crate::{Elem, Key};
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use std::fmt;

/// A stored row that does not match its table's declared schema.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("row {key} of table {table:?} does not match the table's schema: {reason}")]
pub struct SchemaError {
    /// The table.
    pub table: String,
    /// The row's key, readable.
    pub key: String,
    /// What does not match.
    pub reason: String,
}

/// The shape of a MessagePack value, as far as a schema cares.
#[derive(Debug)]
enum Shape {
    UInt(u64),
    Int,
    Float,
    Str,
    Bin,
    Bool,
    Nil,
    Array(Vec<Shape>),
    Map(Vec<Shape>),
}

impl Shape {
    fn describe(&self) -> &'static str {
        match self {
            Shape::UInt(_) => "an unsigned integer",
            Shape::Int => "a negative integer",
            Shape::Float => "a float",
            Shape::Str => "a string",
            Shape::Bin => "bytes",
            Shape::Bool => "a boolean",
            Shape::Nil => "nil",
            Shape::Array(_) => "an array",
            Shape::Map(_) => "a map",
        }
    }

    fn fits(&self, ty: FieldType) -> bool {
        match (ty, self) {
            // Every column may be absent (an `Option` that is `None`): SQL reads a NULL.
            (_, Shape::Nil) => true,
            (FieldType::Any, _) => true,
            (FieldType::U64, Shape::UInt(_)) => true,
            (FieldType::I64, Shape::Int) => true,
            (FieldType::I64, Shape::UInt(v)) => i64::try_from(*v).is_ok(),
            (FieldType::F64, Shape::Float | Shape::UInt(_) | Shape::Int) => true,
            (FieldType::Str, Shape::Str) => true,
            (FieldType::Bytes, Shape::Bin) => true,
            // Serde writes a `Vec<u8>` without `serde_bytes` as an array of integers.
            (FieldType::Bytes, Shape::Array(items)) => items
                .iter()
                .all(|i| matches!(i, Shape::UInt(v) if *v < 256)),
            (FieldType::Bool, Shape::Bool) => true,
            _ => false,
        }
    }
}

impl<'de> Deserialize<'de> for Shape {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Shape, D::Error> {
        d.deserialize_any(ShapeVisitor)
    }
}

struct ShapeVisitor;

impl<'de> Visitor<'de> for ShapeVisitor {
    type Value = Shape;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a MessagePack value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Shape, E> {
        Ok(Shape::Bool)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Shape, E> {
        Ok(Shape::UInt(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Shape, E> {
        Ok(match u64::try_from(v) {
            Ok(u) => Shape::UInt(u),
            Err(_) => Shape::Int,
        })
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Shape, E> {
        Ok(Shape::Float)
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Shape, E> {
        Ok(Shape::Str)
    }

    fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<Shape, E> {
        Ok(Shape::Bin)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Shape, E> {
        Ok(Shape::Nil)
    }

    fn visit_none<E: de::Error>(self) -> Result<Shape, E> {
        Ok(Shape::Nil)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Shape, D::Error> {
        Shape::deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Shape, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Shape>()? {
            items.push(item);
        }
        Ok(Shape::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Shape, A::Error> {
        let mut entries = Vec::new();
        while map.next_key::<Shape>()?.is_some() {
            entries.push(map.next_value::<Shape>()?);
        }
        Ok(Shape::Map(entries))
    }
}

impl Table {
    /// Whether the row `key` → `value` matches this table's declared schema.
    pub fn check_row(&self, key: &Key, value: &[u8]) -> Result<(), SchemaError> {
        let fail = |reason: String| SchemaError {
            table: self.name().to_owned(),
            key: key.to_string(),
            reason,
        };
        if !self.key_fields().is_empty() {
            let elems = key.elems().map_err(|e| fail(e.to_string()))?;
            let fields = elems.get(1..).unwrap_or_default();
            if fields.len() != self.key_fields().len() {
                return Err(fail(format!(
                    "its key has {} fields after the table name, the schema declares {}",
                    fields.len(),
                    self.key_fields().len()
                )));
            }
            for (elem, field) in fields.iter().zip(self.key_fields()) {
                let fits = matches!(
                    (field.ty, elem),
                    (FieldType::Any, _)
                        | (FieldType::U64, Elem::U64(_))
                        | (FieldType::I64, Elem::I64(_))
                        | (FieldType::Str, Elem::Str(_))
                        | (FieldType::Bytes, Elem::Bytes(_))
                );
                if !fits {
                    return Err(fail(format!(
                        "key field {:?} is declared {:?}, the key holds {elem:?}",
                        field.name, field.ty
                    )));
                }
            }
        }
        let columns = self.columns();
        if columns.is_empty() {
            return Ok(());
        }
        let shape: Shape = crate::codec::decode(value)
            .map_err(|e| fail(format!("the value is not MessagePack: {}", e.0)))?;
        if let [column] = columns
            && column.ty != FieldType::Any
        {
            if shape.fits(column.ty) {
                return Ok(());
            }
            return Err(fail(format!(
                "column {:?} is declared {:?}, the value is {}",
                column.name,
                column.ty,
                shape.describe()
            )));
        }
        if columns.len() == 1 {
            return Ok(());
        }
        let values: Vec<&Shape> = match &shape {
            Shape::Array(items) => items.iter().collect(),
            Shape::Map(entries) => entries.iter().collect(),
            other => {
                return Err(fail(format!(
                    "{} columns are declared, the value is {}",
                    columns.len(),
                    other.describe()
                )));
            }
        };
        if values.len() != columns.len() {
            return Err(fail(format!(
                "{} columns are declared, the value holds {}",
                columns.len(),
                values.len()
            )));
        }
        for (value, column) in values.into_iter().zip(columns) {
            if !value.fits(column.ty) {
                return Err(fail(format!(
                    "column {:?} is declared {:?}, the value holds {}",
                    column.name,
                    column.ty,
                    value.describe()
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec;
    use serde::Serialize;

    #[derive(Serialize)]
    struct Row {
        cents: i64,
        name: String,
        tags: Vec<u8>,
    }

    fn table() -> Table {
        Table::new("t")
            .key("id", FieldType::U64)
            .key("region", FieldType::Str)
            .column("cents", FieldType::I64)
            .column("name", FieldType::Str)
            .column("tags", FieldType::Bytes)
    }

    fn row() -> Row {
        Row {
            cents: -5,
            name: "x".into(),
            tags: vec![1, 2],
        }
    }

    #[test]
    fn rows_as_declared_pass_and_others_get_a_typed_error() {
        let t = table();
        let key = Key::table("t").u64(1).str("eu");
        assert_eq!(t.check_row(&key, &codec::encode(&row())), Ok(()));
        assert_eq!(t.check_row(&key, &codec::encode_named(&row())), Ok(()));

        let short = Key::table("t").u64(1);
        let e = t.check_row(&short, &codec::encode(&row())).unwrap_err();
        assert!(e.reason.contains("1 fields"), "{e}");
        let swapped = Key::table("t").str("eu").u64(1);
        let e = t.check_row(&swapped, &codec::encode(&row())).unwrap_err();
        assert!(e.reason.contains("\"id\""), "{e}");
        let e = t
            .check_row(&key, &codec::encode(&(1u64, 2u64)))
            .unwrap_err();
        assert!(e.reason.contains("holds 2"), "{e}");
        let e = t
            .check_row(&key, &codec::encode(&("no", "x", vec![1u8])))
            .unwrap_err();
        assert!(e.reason.contains("\"cents\""), "{e}");
        let e = t.check_row(&key, &[0xc1]).unwrap_err();
        assert!(e.reason.contains("not MessagePack"), "{e}");
        assert!(e.to_string().starts_with("row "), "{e}");
    }

    #[test]
    fn a_single_column_is_the_value_itself() {
        let t = Table::new("acct")
            .key("id", FieldType::U64)
            .column("balance", FieldType::I64);
        let key = Key::table("acct").u64(3);
        assert_eq!(t.check_row(&key, &codec::encode(&-7i64)), Ok(()));
        assert!(t.check_row(&key, &codec::encode(&"seven")).is_err());
        let any = Table::new("kv").column("value", FieldType::Any);
        assert_eq!(any.check_row(&Key::table("kv").u64(1), &[0xc0]), Ok(()));
        // No schema declared: nothing checked.
        assert_eq!(Table::new("free").check_row(&key, b"raw"), Ok(()));
    }
}
