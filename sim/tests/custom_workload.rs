//! An application's own services under the simulator, as a user would write them: two
//! services (`wallet` pays and calls `ledger` to record each payment inside the same
//! transaction), a generator, an invariant (money is conserved and the ledger holds exactly
//! the committed payments), swept over seeds with every fault in one line, and a planted
//! bug in the application's own procedure that the sweep catches.

use detflow_executor::{Abort, CallFootprint, FieldType, Procedure, Service, Table, Txn};
use detflow_protocol::{DetRng, Footprint, Key, Outcome, PartitionScheme, TableRule, Value, codec};
use detflow_sim::{FaultConfig, SimConfig, assert_seeds_pass, run_seed};
use detflow_workloads::{Executed, Request, Violation, Workload};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

const WALLETS: u64 = 12;
const INITIAL_CENTS: i64 = 1_000;

fn wallet(id: u64) -> Key {
    Key::table("wallet").u64(id)
}

fn entry(id: u64) -> Key {
    Key::table("ledger").u64(id)
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct PayArgs {
    id: u64,
    from: u64,
    to: u64,
    cents: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct RecordArgs {
    id: u64,
    cents: i64,
}

/// The ledger's only way in: record one payment.
struct Record;

impl Procedure for Record {
    const NAME: &'static str = "ledger.record";
    type Args = RecordArgs;
    type Output = ();

    fn footprint(args: &RecordArgs) -> Footprint {
        Footprint::new().write(entry(args.id))
    }

    fn execute(tx: &mut Txn<'_>, args: RecordArgs) -> Result<(), Abort> {
        if tx.get(&entry(args.id))?.is_some() {
            return Err(Abort::User(format!("payment {} recorded twice", args.id)));
        }
        tx.put_as(entry(args.id), &args.cents)
    }
}

/// Moves money between two wallets and has the ledger record it, atomically.
fn pay(tx: &mut Txn<'_>, args: PayArgs, buggy: bool) -> Result<(), Abort> {
    let balance = |tx: &Txn<'_>, id| -> Result<i64, Abort> {
        let bytes = tx.get(&wallet(id))?.unwrap_or_default();
        codec::decode(&bytes).map_err(|e| Abort::User(format!("wallet {id}: {e}")))
    };
    let from = balance(tx, args.from)?;
    if from < args.cents {
        return Err(Abort::User("insufficient funds".into()));
    }
    let to = balance(tx, args.to)?;
    // The planted bug: odd amounts are credited but never debited.
    if !(buggy && args.cents % 2 == 1) {
        tx.put_as(wallet(args.from), &(from - args.cents))?;
    }
    tx.put_as(wallet(args.to), &(to + args.cents))?;
    tx.call::<Record>(RecordArgs {
        id: args.id,
        cents: args.cents,
    })
}

fn pay_footprint(args: &PayArgs) -> Footprint {
    Footprint::new()
        .write(wallet(args.from))
        .write(wallet(args.to))
        .call::<Record>(&RecordArgs {
            id: args.id,
            cents: args.cents,
        })
}

struct Pay;

impl Procedure for Pay {
    const NAME: &'static str = "wallet.pay";
    type Args = PayArgs;
    type Output = ();

    fn footprint(args: &PayArgs) -> Footprint {
        pay_footprint(args)
    }

    fn execute(tx: &mut Txn<'_>, args: PayArgs) -> Result<(), Abort> {
        pay(tx, args, false)
    }
}

/// `wallet.pay` with the planted bug, under the same name in a workload of its own.
struct BuggyPay;

impl Procedure for BuggyPay {
    const NAME: &'static str = "wallet.pay";
    type Args = PayArgs;
    type Output = ();

    fn footprint(args: &PayArgs) -> Footprint {
        pay_footprint(args)
    }

    fn execute(tx: &mut Txn<'_>, args: PayArgs) -> Result<(), Abort> {
        pay(tx, args, true)
    }
}

struct Payments {
    partitions: u32,
    next_id: u64,
    buggy: bool,
}

impl Workload for Payments {
    fn name(&self) -> &'static str {
        "payments"
    }

    fn services(&self) -> Vec<Service> {
        let wallets = Table::new("wallet")
            .key("id", FieldType::U64)
            .column("cents", FieldType::I64);
        let wallet = Service::new("wallet").table(wallets);
        let wallet = if self.buggy {
            wallet.procedure::<BuggyPay>()
        } else {
            wallet.procedure::<Pay>()
        };
        let entries = Table::new("ledger")
            .key("payment", FieldType::U64)
            .column("cents", FieldType::I64);
        vec![
            wallet,
            Service::new("ledger").table(entries).procedure::<Record>(),
        ]
    }

    fn scheme(&self) -> PartitionScheme {
        PartitionScheme::hashed(self.partitions)
            .table("wallet", TableRule::Hash { fields: 1 })
            .table("ledger", TableRule::Hash { fields: 1 })
    }

    fn load(&self) -> Vec<(Key, Value)> {
        (0..WALLETS)
            .map(|id| (wallet(id), codec::encode(&INITIAL_CENTS)))
            .collect()
    }

    fn next_call(&mut self, rng: &mut DetRng) -> Request {
        self.next_id += 1;
        let from = rng.below(WALLETS);
        let to = (from + 1 + rng.below(WALLETS - 1)) % WALLETS;
        let args = PayArgs {
            id: self.next_id,
            from,
            to,
            cents: rng.range(1, 400) as i64,
        };
        Request::new(Pay::NAME, codec::encode(&args))
    }

    fn check(&self, state: &BTreeMap<Key, Value>, log: &[Executed<'_>]) -> Result<(), Violation> {
        let violation = |detail: String| Violation {
            workload: "payments",
            detail,
        };
        let cents = |key: &Key| -> Option<i64> { codec::decode(state.get(key)?).ok() };
        let total: i64 = (0..WALLETS).map(|id| cents(&wallet(id)).unwrap_or(0)).sum();
        if total != WALLETS as i64 * INITIAL_CENTS {
            return Err(violation(format!(
                "the wallets hold {total} cents, not {}",
                WALLETS as i64 * INITIAL_CENTS
            )));
        }
        let mut recorded = 0;
        for executed in log.iter().filter(|e| e.procedure == Pay::NAME) {
            let args: PayArgs = codec::decode(executed.args).expect("generated arguments");
            let expected = matches!(executed.outcome, Outcome::Committed(_)).then_some(args.cents);
            if cents(&entry(args.id)) != expected {
                return Err(violation(format!(
                    "payment {}: ledger holds {:?}, expected {expected:?}",
                    args.id,
                    cents(&entry(args.id))
                )));
            }
            recorded += usize::from(expected.is_some());
        }
        let entries = state
            .keys()
            .filter(|k| k.starts_with(&Key::table("ledger")));
        if entries.count() != recorded {
            return Err(violation("the ledger holds payments nobody made".into()));
        }
        Ok(())
    }
}

fn payments(buggy: bool) -> impl Fn(u32) -> Box<dyn Workload> + Send + Sync + 'static {
    move |partitions| {
        Box::new(Payments {
            partitions,
            next_id: 0,
            buggy,
        })
    }
}

#[test]
fn an_applications_services_pass_every_checker_under_faults() {
    let ran = assert_seeds_pass(0..30, |seed| SimConfig {
        faults: FaultConfig::all(),
        txns: 150,
        ..SimConfig::custom("payments", payments(false), seed)
    });
    assert_eq!(ran, 30);
}

#[test]
fn a_bug_in_an_applications_procedure_is_caught() {
    let failure = (0..20).find_map(|seed| {
        let report = run_seed(&SimConfig {
            txns: 150,
            ..SimConfig::custom("payments", payments(true), seed)
        })
        .expect("valid config");
        (!report.passed()).then_some(report.failures)
    });
    let failures = failure.expect("the planted bug went unnoticed");
    assert!(
        failures.iter().any(|f| f.contains("payments invariant")),
        "{failures:?}"
    );
}
