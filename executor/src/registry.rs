//! Procedures by name, type-erased over MessagePack arguments and outputs, grouped in
//! services that own their tables (see [`crate::service`]).

use crate::procedure::Procedure;
use crate::service::{Service, ServiceError, Table};
use crate::txn::Txn;
use crate::unwind;
use detflow_protocol::message::Rejection;
use detflow_protocol::{AbortReason, Footprint};
use detflow_protocol::{TableRule, codec};
use std::collections::BTreeMap;
use std::sync::Arc;

type ExecuteFn = fn(&mut Txn<'_>, &[u8]) -> Result<Vec<u8>, AbortReason>;
type FootprintFn = fn(&[u8]) -> Result<Footprint, codec::DecodeError>;

/// How deep calls between procedures may nest in one footprint.
const CALL_DEPTH_MAX: usize = 16;

#[derive(Clone)]
pub(crate) struct Entry {
    pub(crate) execute: ExecuteFn,
    pub(crate) footprint: FootprintFn,
    /// The service the procedure belongs to; `None` for one registered on its own (tests),
    /// whose footprints may name any table.
    pub(crate) service: Option<Arc<str>>,
    /// An operator's ad-hoc procedure (`kv.txn`): its footprints name whatever keys its
    /// arguments say, so the node's access rules bound its tables instead of ownership.
    pub(crate) ad_hoc: bool,
}

impl Entry {
    /// `P`'s entry, not yet in a service.
    pub(crate) fn of<P: Procedure>(ad_hoc: bool) -> Entry {
        Entry {
            execute: execute_erased::<P>,
            footprint: footprint_erased::<P>,
            service: None,
            ad_hoc,
        }
    }
}

/// The procedures a node can run, by name, and the services that own the tables.
#[derive(Clone, Default)]
pub struct Registry {
    procedures: BTreeMap<&'static str, Entry>,
    /// Each table's owning service.
    owners: BTreeMap<String, Arc<str>>,
    /// The services, by name, with their tables.
    services: BTreeMap<Arc<str>, Vec<Table>>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Registry {
        Registry::default()
    }

    /// Registers `P` under `P::NAME` outside any service, replacing any procedure of that
    /// name. Its footprints may name any table: for tests of the engine; applications
    /// register services ([`Registry::add_service`]).
    pub fn register<P: Procedure>(&mut self) -> &mut Registry {
        self.procedures.insert(P::NAME, Entry::of::<P>(false));
        self
    }

    /// Adds a service: its tables become its own, its procedures callable. Refuses a
    /// definition that is malformed or clashes with what is registered, leaving the
    /// registry unchanged.
    pub fn add_service(&mut self, service: Service) -> Result<&mut Registry, ServiceError> {
        service.validate()?;
        if self.services.contains_key(service.name()) {
            return Err(ServiceError::ServiceTwice(service.name().to_owned()));
        }
        for table in service.tables() {
            if let Some(first) = self.owners.get(table.name()) {
                return Err(ServiceError::TableOwnedTwice {
                    table: table.name().to_owned(),
                    first: first.to_string(),
                    second: service.name().to_owned(),
                });
            }
        }
        if let Some(name) = service
            .procedure_names()
            .find(|n| self.procedures.contains_key(n))
        {
            return Err(ServiceError::ProcedureTwice(name.to_owned()));
        }
        let (name, tables, procedures) = service.into_parts();
        let name: Arc<str> = name.into();
        for table in &tables {
            self.owners.insert(table.name().to_owned(), name.clone());
        }
        for (procedure, mut entry) in procedures {
            entry.service = Some(name.clone());
            self.procedures.insert(procedure, entry);
        }
        self.services.insert(name, tables);
        Ok(self)
    }

    /// The services' names, ascending.
    pub fn services(&self) -> impl Iterator<Item = &str> + '_ {
        self.services.keys().map(|s| &**s)
    }

    /// The tables of service `name`, if there is one.
    pub fn tables_of(&self, name: &str) -> Option<&[Table]> {
        self.services.get(name).map(Vec::as_slice)
    }

    /// Every service's tables, by table name ascending.
    pub fn tables(&self) -> Vec<Table> {
        let mut tables: Vec<Table> = self.services.values().flatten().cloned().collect();
        tables.sort_by(|a, b| a.name().cmp(b.name()));
        tables
    }

    /// Every service's tables' partitioning rules, by table name ascending.
    pub fn table_rules(&self) -> Vec<(String, TableRule)> {
        let mut rules: Vec<(String, TableRule)> = self
            .services
            .values()
            .flatten()
            .map(|t| (t.name().to_owned(), t.partitioning().clone()))
            .collect();
        rules.sort_by(|a, b| a.0.cmp(&b.0));
        rules
    }

    /// Whether the row `key` → `value` matches the schema its table declares (a row of a
    /// table no service declares is not checked).
    pub fn check_row(
        &self,
        key: &detflow_protocol::Key,
        value: &[u8],
    ) -> Result<(), crate::SchemaError> {
        let Some(table) = key.table_name() else {
            return Ok(());
        };
        let Some(owner) = self.owners.get(table) else {
            return Ok(());
        };
        let declared = self.services[owner].iter().find(|t| t.name() == table);
        declared.map_or(Ok(()), |t| t.check_row(key, value))
    }

    /// Checks the first `rows_per_table` rows of every declared table in `store` against
    /// the table's schema: what a node does before it serves, so that a store written
    /// under other declarations stops it with the row and the mismatch named.
    pub fn check_stored<S: crate::Store>(
        &self,
        store: &S,
        rows_per_table: usize,
    ) -> Result<(), crate::SchemaError> {
        for table in self.services.values().flatten() {
            let prefix = detflow_protocol::Key::table(table.name());
            for (key, value) in store.scan_from(&prefix, &prefix, rows_per_table) {
                table.check_row(&key, &value)?;
            }
        }
        Ok(())
    }

    /// The service that owns `table`, if any.
    pub fn owner_of(&self, table: &str) -> Option<&str> {
        self.owners.get(table).map(|s| &**s)
    }

    /// Whether a procedure of that name is registered.
    pub fn contains(&self, name: &str) -> bool {
        self.procedures.contains_key(name)
    }

    /// The registered names, ascending.
    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.procedures.keys().copied()
    }

    /// The footprint of a call, as a gateway computes it before ordering: the procedure's
    /// own entries and those of the procedures it calls, each checked against its own
    /// service's tables ([`Rejection::ForeignTable`]), merged into one. A footprint
    /// function that panics on these arguments refuses the call as
    /// [`Rejection::BadArgs`] instead of taking the gateway down.
    pub fn footprint(&self, name: &str, args: &[u8]) -> Result<Footprint, Rejection> {
        let entry = self
            .procedures
            .get(name)
            .ok_or_else(|| Rejection::UnknownProcedure(name.to_owned()))?;
        let footprint = unwind::run_procedure(|| (entry.footprint)(args))
            .map_err(|panic| Rejection::BadArgs(format!("footprint panicked: {panic}")))?
            .map_err(|e| Rejection::BadArgs(e.0))?;
        self.check_ownership(name, entry, &footprint, 0)?;
        Ok(footprint.flatten())
    }

    /// Checks that `footprint`'s own entries name only tables of `entry`'s service, and
    /// recursively that each procedure it calls exists and keeps to its own.
    fn check_ownership(
        &self,
        name: &str,
        entry: &Entry,
        footprint: &Footprint,
        depth: usize,
    ) -> Result<(), Rejection> {
        if depth > CALL_DEPTH_MAX {
            return Err(Rejection::BadArgs(format!(
                "calls nest deeper than {CALL_DEPTH_MAX} procedures"
            )));
        }
        if let Some(service) = entry.service.as_ref().filter(|_| !entry.ad_hoc) {
            for (spec, _) in &footprint.entries {
                // A key without a table name is refused by the key checks that follow.
                let Some(table) = spec.key().table_name() else {
                    continue;
                };
                let owner = self.owners.get(table);
                if owner != Some(service) {
                    return Err(Rejection::ForeignTable {
                        procedure: name.to_owned(),
                        table: table.to_owned(),
                        owner: owner.map(|o| o.to_string()),
                    });
                }
            }
        }
        for (callee, called) in &footprint.calls {
            let callee_entry = self
                .procedures
                .get(callee.as_str())
                .ok_or_else(|| Rejection::UnknownProcedure(callee.clone()))?;
            self.check_ownership(callee, callee_entry, called, depth + 1)?;
        }
        Ok(())
    }

    /// Runs a call; the output is MessagePack. A procedure that panics aborts with
    /// [`AbortReason::Panicked`]; whatever it wrote to `tx` must then be discarded.
    pub fn execute(
        &self,
        name: &str,
        tx: &mut Txn<'_>,
        args: &[u8],
    ) -> Result<Vec<u8>, AbortReason> {
        let entry = self
            .procedures
            .get(name)
            .ok_or_else(|| AbortReason::UnknownProcedure(name.to_owned()))?;
        unwind::run_procedure(|| (entry.execute)(tx, args))
            .unwrap_or_else(|panic| Err(AbortReason::Panicked(panic)))
    }
}

fn execute_erased<P: Procedure>(tx: &mut Txn<'_>, args: &[u8]) -> Result<Vec<u8>, AbortReason> {
    let args = codec::decode::<P::Args>(args).map_err(|e| AbortReason::BadArgs(e.0))?;
    let output = P::execute(tx, args)?;
    // Outputs name their fields: `detflow call` prints them as JSON objects.
    Ok(codec::encode_named(&output))
}

fn footprint_erased<P: Procedure>(args: &[u8]) -> Result<Footprint, codec::DecodeError> {
    codec::decode::<P::Args>(args).map(|a| P::footprint(&a))
}
