//! What a client may call (DESIGN.md §10c): the gateway's procedures, except ad-hoc
//! `kv.txn`, which reaches any key it names and so is refused unless the configuration
//! lists the tables it may touch. The system table is never reachable.

use crate::config::Access;
use detflow_executor::Registry;
use detflow_protocol::message::{Call, Rejection};
use detflow_protocol::{Key, SYSTEM_TABLE};

/// The name of the ad-hoc transaction procedure.
const KV_TXN: &str = "kv.txn";

/// Refuses `call` if this client may not make it. A call whose arguments do not decode is
/// let through: the gateway refuses it with the precise reason.
pub fn authorize(access: &Access, registry: &Registry, call: &Call) -> Result<(), Rejection> {
    if call.procedure != KV_TXN {
        // Registered procedures name their own keys; the scheduler refuses any that names
        // the system table.
        return Ok(());
    }
    if access.kv_txn_tables.is_empty() {
        return Err(Rejection::Unauthorized(format!(
            "{KV_TXN} is off on this cluster (enable it for some tables with [access] \
             kv_txn_tables in the node configuration)"
        )));
    }
    let Ok(footprint) = registry.footprint(&call.procedure, &call.args) else {
        return Ok(());
    };
    for (spec, _) in &footprint.entries {
        let key: &Key = spec.key();
        let table = key.table_name();
        let allowed = table.is_some_and(|t| {
            t != SYSTEM_TABLE && access.kv_txn_tables.iter().any(|allowed| allowed == t)
        });
        if !allowed {
            return Err(Rejection::Unauthorized(format!(
                "{KV_TXN} may touch only the tables {:?}, not {key}",
                access.kv_txn_tables
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use detflow_protocol::{ClientId, RequestSeq, codec};
    use detflow_workloads::kv::{self, KvTxn};

    fn registry() -> Registry {
        let mut registry = Registry::new();
        for name in detflow_workloads::NAMES {
            detflow_workloads::by_name(name, 2)
                .expect("a workload")
                .register(&mut registry)
                .expect("the built-in services fit together");
        }
        registry
    }

    fn call(procedure: &str, txn: &KvTxn) -> Call {
        Call {
            client: ClientId(1),
            seq: RequestSeq(1),
            procedure: procedure.into(),
            args: codec::encode(txn),
        }
    }

    #[test]
    fn kv_txn_is_off_by_default_and_then_limited_to_its_tables() {
        let registry = registry();
        let on_kv = KvTxn::new().put(kv::key(1), vec![1]);
        let on_acct = KvTxn::new().put(Key::table("acct").u64(1), vec![1]);
        let on_sys = KvTxn::new().put(Key::table(SYSTEM_TABLE).u64(1), vec![1]);
        let off = Access::default();
        assert!(matches!(
            authorize(&off, &registry, &call(KV_TXN, &on_kv)),
            Err(Rejection::Unauthorized(_))
        ));
        let kv_only = Access {
            kv_txn_tables: vec![kv::TABLE.into()],
        };
        assert_eq!(
            authorize(&kv_only, &registry, &call(KV_TXN, &on_kv)),
            Ok(())
        );
        for refused in [&on_acct, &on_sys] {
            assert!(matches!(
                authorize(&kv_only, &registry, &call(KV_TXN, refused)),
                Err(Rejection::Unauthorized(_))
            ));
        }
        // Other procedures are not its business.
        assert_eq!(
            authorize(&off, &registry, &call("bank.balance", &on_kv)),
            Ok(())
        );
    }
}
