//! Procedures by name, type-erased over MessagePack arguments and outputs.

use crate::procedure::Procedure;
use crate::txn::Txn;
use crate::unwind;
use detflow_protocol::codec;
use detflow_protocol::message::Rejection;
use detflow_protocol::{AbortReason, Footprint};
use std::collections::BTreeMap;

type ExecuteFn = fn(&mut Txn<'_>, &[u8]) -> Result<Vec<u8>, AbortReason>;
type FootprintFn = fn(&[u8]) -> Result<Footprint, codec::DecodeError>;

#[derive(Clone, Copy)]
struct Entry {
    execute: ExecuteFn,
    footprint: FootprintFn,
}

/// The procedures a node can run, by name.
#[derive(Clone, Default)]
pub struct Registry {
    procedures: BTreeMap<&'static str, Entry>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Registry {
        Registry::default()
    }

    /// Registers `P` under `P::NAME`, replacing any procedure of that name.
    pub fn register<P: Procedure>(&mut self) -> &mut Registry {
        self.procedures.insert(
            P::NAME,
            Entry {
                execute: execute_erased::<P>,
                footprint: footprint_erased::<P>,
            },
        );
        self
    }

    /// Whether a procedure of that name is registered.
    pub fn contains(&self, name: &str) -> bool {
        self.procedures.contains_key(name)
    }

    /// The registered names, ascending.
    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.procedures.keys().copied()
    }

    /// The footprint of a call, as a gateway computes it before ordering. A footprint
    /// function that panics on these arguments refuses the call as
    /// [`Rejection::BadArgs`] instead of taking the gateway down.
    pub fn footprint(&self, name: &str, args: &[u8]) -> Result<Footprint, Rejection> {
        let entry = self
            .procedures
            .get(name)
            .ok_or_else(|| Rejection::UnknownProcedure(name.to_owned()))?;
        unwind::run_procedure(|| (entry.footprint)(args))
            .map_err(|panic| Rejection::BadArgs(format!("footprint panicked: {panic}")))?
            .map_err(|e| Rejection::BadArgs(e.0))
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
