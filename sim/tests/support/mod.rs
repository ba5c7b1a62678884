//! An application's own services, as a user would write them, for the simulator's tests:
//! `wallet` pays and calls `ledger` to record each payment inside the same transaction,
//! then sends `receipts` a letter, which issues the receipt in a transaction of its own;
//! a generator; and the invariants (money is conserved, the ledger holds exactly the
//! committed payments, and each committed payment got exactly one receipt).

// Each test crate uses part of this module.
#![allow(dead_code)]

use detflow_executor::{Abort, CallFootprint, FieldType, Procedure, Service, Table, Txn};
use detflow_protocol::{DetRng, Footprint, Key, Outcome, PartitionScheme, TableRule, Value, codec};
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

fn receipt(id: u64) -> Key {
    Key::table("receipt").u64(id)
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

/// Issues the receipt of a payment: what `wallet.pay` asks by letter. Counts rather than
/// refuses a second receipt, so that a duplicate delivery shows in the invariant.
struct Issue;

impl Procedure for Issue {
    const NAME: &'static str = "receipts.issue";
    type Args = RecordArgs;
    type Output = u32;

    fn footprint(args: &RecordArgs) -> Footprint {
        Footprint::new().write(receipt(args.id))
    }

    fn execute(tx: &mut Txn<'_>, args: RecordArgs) -> Result<u32, Abort> {
        let issued = tx.get_as::<u32>(&receipt(args.id))?.unwrap_or(0) + 1;
        tx.put_as(receipt(args.id), &issued)?;
        // For whoever follows the payments from outside: a reader of the stream.
        tx.publish("receipts", &(args.id, args.cents))?;
        Ok(issued)
    }
}

/// Moves money between two wallets and has the ledger record it, atomically; the receipt
/// follows by letter.
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
    })?;
    tx.send::<Issue>(&RecordArgs {
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
    /// Whether the invariants look at the receipts (a checker test turns it off, to show
    /// the letters checker catches on its own what happens to letters).
    check_receipts: bool,
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
        let receipts = Table::new("receipt")
            .key("payment", FieldType::U64)
            .column("issued", FieldType::U64);
        vec![
            wallet,
            Service::new("ledger").table(entries).procedure::<Record>(),
            Service::new("receipts")
                .table(receipts)
                .procedure::<Issue>(),
        ]
    }

    fn streams(&self) -> Vec<String> {
        vec!["receipts".into()]
    }

    fn scheme(&self) -> PartitionScheme {
        PartitionScheme::hashed(self.partitions)
            .table("wallet", TableRule::Hash { fields: 1 })
            .table("ledger", TableRule::Hash { fields: 1 })
            .table("receipt", TableRule::Hash { fields: 1 })
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
            let issued: Option<u32> = state
                .get(&receipt(args.id))
                .and_then(|v| codec::decode(v).ok());
            if self.check_receipts && issued != expected.map(|_| 1) {
                return Err(violation(format!(
                    "payment {}: {issued:?} receipts, expected {:?}",
                    args.id,
                    expected.map(|_| 1)
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
        let receipts = state
            .keys()
            .filter(|k| k.starts_with(&Key::table("receipt")));
        if self.check_receipts && receipts.count() != recorded {
            return Err(violation("receipts for payments nobody made".into()));
        }
        Ok(())
    }
}

/// The payments workload; `buggy` plants a bug in `wallet.pay`.
pub(crate) fn payments(buggy: bool) -> impl Fn(u32) -> Box<dyn Workload> + Send + Sync + 'static {
    payments_with(buggy, true)
}

/// The payments workload, its invariants blind to receipts unless `check_receipts`.
pub(crate) fn payments_with(
    buggy: bool,
    check_receipts: bool,
) -> impl Fn(u32) -> Box<dyn Workload> + Send + Sync + 'static {
    move |partitions| {
        Box::new(Payments {
            partitions,
            next_id: 0,
            buggy,
            check_receipts,
        })
    }
}
