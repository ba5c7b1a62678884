//! Table schemas: the key fields and columns a service declares for each of its tables.
//!
//! They serve schema checks of stored rows (the executor) and SQL over the global state
//! (a node lists them to clients, `detflow sql` turns them into Arrow schemas).

mod check;

pub use check::SchemaError;

use crate::partition::TableRule;
use serde::{Deserialize, Serialize};

/// The type of a key field or column, as a schema declares it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum FieldType {
    /// An unsigned 64-bit integer.
    U64,
    /// A signed 64-bit integer.
    I64,
    /// A UTF-8 string.
    Str,
    /// Raw bytes.
    Bytes,
    /// A boolean.
    Bool,
    /// A 64-bit float.
    F64,
    /// Any MessagePack value, kept encoded (a nested record, or an opaque value).
    Any,
}

/// A named, typed field of a table's key or of its rows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Field {
    /// The field's name.
    pub name: String,
    /// Its type.
    pub ty: FieldType,
}

/// A table a service owns: its name (the first element of every key in it), how it is
/// partitioned, and its schema.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Table {
    name: String,
    rule: TableRule,
    key: Vec<Field>,
    columns: Vec<Field>,
}

impl Table {
    /// A table named `name`, hashed on its first key field, with no schema declared yet.
    pub fn new(name: &str) -> Table {
        Table {
            name: name.to_owned(),
            rule: TableRule::Hash { fields: 1 },
            key: Vec::new(),
            columns: Vec::new(),
        }
    }

    /// Sets how the table is partitioned.
    pub fn rule(mut self, rule: TableRule) -> Table {
        self.rule = rule;
        self
    }

    /// Declares the next key field (after the table name).
    pub fn key(mut self, name: &str, ty: FieldType) -> Table {
        self.key.push(Field {
            name: name.to_owned(),
            ty,
        });
        self
    }

    /// Declares a column of the table's rows.
    pub fn column(mut self, name: &str, ty: FieldType) -> Table {
        self.columns.push(Field {
            name: name.to_owned(),
            ty,
        });
        self
    }

    /// The table's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How the table is partitioned.
    pub fn partitioning(&self) -> &TableRule {
        &self.rule
    }

    /// The key fields after the table name, as declared.
    pub fn key_fields(&self) -> &[Field] {
        &self.key
    }

    /// The columns, as declared.
    pub fn columns(&self) -> &[Field] {
        &self.columns
    }
}
