//! Services: named groups of procedures that own their tables.
//!
//! A service is the unit an application is written in: `orders`, `payments`, `inventory`.
//! It declares its tables once (name, how they are partitioned, and their key fields and
//! columns, which later serve SQL) and its procedures, each named `<service>.<name>`. Its
//! tables are its own: a footprint may name a table only if the procedure that declares the
//! entry belongs to the service owning it. A procedure reaches another service's state by
//! calling that service's procedure inside the same transaction ([`CallFootprint::call`] in
//! its footprint, [`Txn::call`](crate::Txn::call) in its body), so each service stays the
//! only code that touches its rows.
//!
//! ```
//! use detflow_executor::{Abort, CallFootprint, Procedure, Registry, Service, Table, Txn};
//! use detflow_protocol::{Footprint, Key};
//!
//! struct Reserve;
//! impl Procedure for Reserve {
//!     const NAME: &'static str = "inventory.reserve";
//!     type Args = u64;
//!     type Output = ();
//!     fn footprint(item: &u64) -> Footprint {
//!         Footprint::new().write(Key::table("stock").u64(*item))
//!     }
//!     fn execute(tx: &mut Txn<'_>, item: u64) -> Result<(), Abort> {
//!         tx.put(Key::table("stock").u64(item), vec![1])?;
//!         Ok(())
//!     }
//! }
//!
//! struct Order;
//! impl Procedure for Order {
//!     const NAME: &'static str = "orders.place";
//!     type Args = u64;
//!     type Output = ();
//!     fn footprint(item: &u64) -> Footprint {
//!         Footprint::new()
//!             .write(Key::table("orders").u64(*item))
//!             .call::<Reserve>(item)
//!     }
//!     fn execute(tx: &mut Txn<'_>, item: u64) -> Result<(), Abort> {
//!         tx.call::<Reserve>(item)?;
//!         tx.put(Key::table("orders").u64(item), vec![1])?;
//!         Ok(())
//!     }
//! }
//!
//! let mut registry = Registry::new();
//! registry
//!     .add_service(Service::new("inventory").table(Table::new("stock")).procedure::<Reserve>())
//!     .unwrap();
//! registry
//!     .add_service(Service::new("orders").table(Table::new("orders")).procedure::<Order>())
//!     .unwrap();
//! let footprint = registry.footprint("orders.place", &detflow_protocol::codec::encode(&7u64));
//! assert_eq!(footprint.unwrap().len(), 2);
//! ```

use crate::procedure::Procedure;
use crate::registry::Entry;
pub use detflow_protocol::schema::{Field, FieldType, Table};
use detflow_protocol::{Footprint, SYSTEM_TABLE};

/// A named group of procedures that owns its tables.
#[derive(Clone)]
pub struct Service {
    name: String,
    tables: Vec<Table>,
    procedures: Vec<(&'static str, Entry)>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("name", &self.name)
            .field("tables", &self.tables)
            .field(
                "procedures",
                &self.procedures.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Service {
    /// An empty service named `name`.
    pub fn new(name: &str) -> Service {
        Service {
            name: name.to_owned(),
            tables: Vec::new(),
            procedures: Vec::new(),
        }
    }

    /// Adds a table the service owns.
    pub fn table(mut self, table: Table) -> Service {
        self.tables.push(table);
        self
    }

    /// Adds a procedure; its name must be `<service>.<name>`.
    pub fn procedure<P: Procedure>(self) -> Service {
        self.add::<P>(false)
    }

    /// Adds an operator's ad-hoc procedure, whose footprint names whatever keys its
    /// arguments say (`kv.txn`): the registry does not hold it to the service's tables, so
    /// a node must bound it by other means (the `[access]` rules do for `kv.txn`, which is
    /// off unless the operator names its tables).
    pub fn ad_hoc_procedure<P: Procedure>(self) -> Service {
        self.add::<P>(true)
    }

    fn add<P: Procedure>(mut self, ad_hoc: bool) -> Service {
        self.procedures.push((P::NAME, Entry::of::<P>(ad_hoc)));
        self
    }

    /// The service's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its tables.
    pub fn tables(&self) -> &[Table] {
        &self.tables
    }

    /// Its procedures' names.
    pub fn procedure_names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.procedures.iter().map(|(name, _)| *name)
    }

    /// Checks the definition on its own: names well formed, each table once, each
    /// procedure inside the service's namespace.
    pub fn validate(&self) -> Result<(), ServiceError> {
        let valid_name = |n: &str| {
            !n.is_empty()
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        };
        if !valid_name(&self.name) || self.name.starts_with('_') {
            return Err(ServiceError::BadServiceName(self.name.clone()));
        }
        for (i, table) in self.tables.iter().enumerate() {
            if table.name().is_empty()
                || table.name() == SYSTEM_TABLE
                || table.name().starts_with('_')
            {
                return Err(ServiceError::ReservedTable {
                    service: self.name.clone(),
                    table: table.name().to_owned(),
                });
            }
            if self.tables[..i].iter().any(|t| t.name() == table.name()) {
                return Err(ServiceError::TableTwice {
                    service: self.name.clone(),
                    table: table.name().to_owned(),
                });
            }
        }
        for (name, _) in &self.procedures {
            let inside = name
                .strip_prefix(self.name.as_str())
                .and_then(|rest| rest.strip_prefix('.'))
                .is_some_and(valid_name);
            if !inside {
                return Err(ServiceError::ProcedureOutsideService {
                    service: self.name.clone(),
                    procedure: (*name).to_owned(),
                });
            }
        }
        Ok(())
    }

    /// Takes the procedures out, for a registry.
    pub(crate) fn into_parts(self) -> (String, Vec<Table>, Vec<(&'static str, Entry)>) {
        (self.name, self.tables, self.procedures)
    }
}

/// A service definition a registry refuses.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ServiceError {
    /// Service names are ASCII letters, digits, `_` and `-`, not starting with `_`.
    #[error(
        "{0:?} is not a valid service name (ASCII letters, digits, '_' and '-', not starting with '_')"
    )]
    BadServiceName(String),
    /// Two services of one name.
    #[error("service {0:?} is defined twice")]
    ServiceTwice(String),
    /// A table name that is empty or reserved (`_sys`, anything starting with `_`).
    #[error("service {service:?} declares table {table:?}, a reserved name")]
    ReservedTable {
        /// The service.
        service: String,
        /// The table.
        table: String,
    },
    /// One service declares a table twice.
    #[error("service {service:?} declares table {table:?} twice")]
    TableTwice {
        /// The service.
        service: String,
        /// The table.
        table: String,
    },
    /// Two services claim one table.
    #[error("table {table:?} is claimed by services {first:?} and {second:?}")]
    TableOwnedTwice {
        /// The table.
        table: String,
        /// The service that claimed it first.
        first: String,
        /// The one that claimed it again.
        second: String,
    },
    /// A procedure not named `<service>.<name>`.
    #[error("procedure {procedure:?} of service {service:?} must be named \"{service}.<name>\"")]
    ProcedureOutsideService {
        /// The service.
        service: String,
        /// The procedure.
        procedure: String,
    },
    /// A procedure name that is already registered.
    #[error("procedure {0:?} is registered twice")]
    ProcedureTwice(String),
}

/// Declaring, in a footprint, a call to another procedure in the same transaction.
pub trait CallFootprint {
    /// Adds `P`'s footprint for `args` as a call: the gateway checks it against `P`'s own
    /// service and merges it in.
    fn call<P: Procedure>(self, args: &P::Args) -> Footprint;
}

impl CallFootprint for Footprint {
    fn call<P: Procedure>(self, args: &P::Args) -> Footprint {
        self.calls(P::NAME, P::footprint(args))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Abort, Registry, Txn};
    use detflow_protocol::message::Rejection;
    use detflow_protocol::{Key, codec};

    /// Writes the key it is given, in whatever table.
    struct Scribble;
    impl Procedure for Scribble {
        const NAME: &'static str = "a.scribble";
        type Args = Key;
        type Output = ();
        fn footprint(key: &Key) -> Footprint {
            Footprint::new().write(key.clone())
        }
        fn execute(_: &mut Txn<'_>, _: Key) -> Result<(), Abort> {
            Ok(())
        }
    }

    /// Service b's entry point: writes its own table, then calls a's scribble on the key.
    struct Relay;
    impl Procedure for Relay {
        const NAME: &'static str = "b.relay";
        type Args = Key;
        type Output = ();
        fn footprint(key: &Key) -> Footprint {
            Footprint::new()
                .write(Key::table("b_rows").u64(1))
                .call::<Scribble>(key)
        }
        fn execute(tx: &mut Txn<'_>, key: Key) -> Result<(), Abort> {
            tx.call::<Scribble>(key)
        }
    }

    /// Names a procedure nobody registered.
    struct Ghost;
    impl Procedure for Ghost {
        const NAME: &'static str = "b.ghost";
        type Args = ();
        type Output = ();
        fn footprint(_: &()) -> Footprint {
            Footprint::new().calls("c.nothing", Footprint::new())
        }
        fn execute(_: &mut Txn<'_>, _: ()) -> Result<(), Abort> {
            Ok(())
        }
    }

    fn registry() -> Registry {
        let mut registry = Registry::new();
        registry
            .add_service(
                Service::new("a")
                    .table(Table::new("a_rows").key("id", FieldType::U64))
                    .procedure::<Scribble>(),
            )
            .unwrap()
            .add_service(
                Service::new("b")
                    .table(Table::new("b_rows"))
                    .procedure::<Relay>()
                    .procedure::<Ghost>(),
            )
            .unwrap();
        registry
    }

    fn footprint(registry: &Registry, procedure: &str, key: Key) -> Result<Footprint, Rejection> {
        registry.footprint(procedure, &codec::encode(&key))
    }

    #[test]
    fn a_footprint_names_only_its_own_services_tables() {
        let r = registry();
        assert!(footprint(&r, "a.scribble", Key::table("a_rows").u64(1)).is_ok());
        assert_eq!(
            footprint(&r, "a.scribble", Key::table("b_rows").u64(1)),
            Err(Rejection::ForeignTable {
                procedure: "a.scribble".into(),
                table: "b_rows".into(),
                owner: Some("b".into()),
            })
        );
        for table in ["nobody", "_sys"] {
            assert_eq!(
                footprint(&r, "a.scribble", Key::table(table).u64(1)),
                Err(Rejection::ForeignTable {
                    procedure: "a.scribble".into(),
                    table: table.into(),
                    owner: None,
                })
            );
        }
    }

    #[test]
    fn a_call_reaches_another_service_through_its_procedure_only() {
        let r = registry();
        let through = footprint(&r, "b.relay", Key::table("a_rows").u64(7)).unwrap();
        assert!(through.calls.is_empty(), "merged before ordering");
        assert!(through.allows_write(&Key::table("a_rows").u64(7)));
        assert!(through.allows_write(&Key::table("b_rows").u64(1)));
        // The callee keeps to its own tables even when its caller owns the key.
        assert_eq!(
            footprint(&r, "b.relay", Key::table("b_rows").u64(2)),
            Err(Rejection::ForeignTable {
                procedure: "a.scribble".into(),
                table: "b_rows".into(),
                owner: Some("b".into()),
            })
        );
        assert_eq!(
            r.footprint("b.ghost", &codec::encode(&())),
            Err(Rejection::UnknownProcedure("c.nothing".into()))
        );
    }

    #[test]
    fn malformed_or_clashing_services_are_refused() {
        let mut r = registry();
        let refused = |r: &mut Registry, s: Service| r.add_service(s).map(|_| ()).unwrap_err();
        assert!(matches!(
            refused(&mut r, Service::new("c").procedure::<Scribble>()),
            ServiceError::ProcedureOutsideService { .. }
        ));
        assert!(matches!(
            refused(&mut r, Service::new("c").table(Table::new("a_rows"))),
            ServiceError::TableOwnedTwice { .. }
        ));
        assert!(matches!(
            refused(&mut r, Service::new("c").table(Table::new("_sys"))),
            ServiceError::ReservedTable { .. }
        ));
        assert!(matches!(
            refused(&mut r, Service::new("a")),
            ServiceError::ServiceTwice(_)
        ));
        assert!(matches!(
            refused(&mut r, Service::new("a.b")),
            ServiceError::BadServiceName(_)
        ));
        // Nothing of a refused service stays behind.
        assert_eq!(r.services().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(r.owner_of("a_rows"), Some("a"));
    }
}
