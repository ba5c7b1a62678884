//! What-if: which past transfers would a 1% fee have changed?
//!
//! A bank's log (here generated: 40 epochs of the bank workload's calls over 4 partitions)
//! is replayed with the procedures it ran, and each call runs a second time with a new
//! `bank.transfer` that charges the sender a fee. Every transfer whose outcome or writes
//! would have differed is listed; deposits and balance reads are untouched by the change,
//! so none of them is.
//!
//!     cargo run --release -p detflow-replay --example bank_fee

use detflow_executor::{Abort, OrOverflow, Procedure, Registry, Txn};
use detflow_protocol::{
    Batch, ClientId, DetRng, Epoch, Footprint, Key, LOG_FORMAT_VERSION, NodeId, Outcome,
    RequestSeq, Transaction, Value, codec,
};
use detflow_replay::{Difference, Replayer, WhatIf};
use detflow_scheduler::PartitionMap;
use detflow_workloads::Workload;
use detflow_workloads::bank::{
    Bank, BankConfig, Transfer, TransferArgs, TransferOutput, account_key,
};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The candidate `bank.transfer`: the sender also pays 1% of the amount (at least a cent).
struct TransferWithFee;

impl Procedure for TransferWithFee {
    const NAME: &'static str = Transfer::NAME;
    type Args = TransferArgs;
    type Output = TransferOutput;

    fn footprint(args: &TransferArgs) -> Footprint {
        Transfer::footprint(args)
    }

    fn execute(tx: &mut Txn<'_>, args: TransferArgs) -> Result<TransferOutput, Abort> {
        let fee = (args.amount_cents / 100).max(1);
        let debit = args
            .amount_cents
            .checked_add(fee)
            .or_overflow("the debit")?;
        let from: i64 = tx.get_as(&account_key(args.from))?.unwrap_or(0);
        let to: i64 = tx.get_as(&account_key(args.to))?.unwrap_or(0);
        // Unchanged: the reason a transfer the fee does not concern aborts.
        if from < args.amount_cents {
            return Err(Abort::User(format!(
                "insufficient funds: account {} holds {from} cents, transfer of {} cents",
                args.from, args.amount_cents
            )));
        }
        if from < debit {
            return Err(Abort::User(format!(
                "insufficient funds: account {} holds {from} cents, transfer of {} cents plus \
                 a fee of {fee}",
                args.from, args.amount_cents
            )));
        }
        if args.from == args.to {
            tx.put_as(account_key(args.from), &(from - fee))?;
            return Ok(TransferOutput {
                from_balance_cents: from - fee,
                to_balance_cents: from - fee,
            });
        }
        tx.put_as(account_key(args.from), &(from - debit))?;
        tx.put_as(account_key(args.to), &(to + args.amount_cents))?;
        Ok(TransferOutput {
            from_balance_cents: from - debit,
            to_balance_cents: to + args.amount_cents,
        })
    }
}

/// A log of `workload`'s own call mix: `epochs` batches of `calls` calls each, drawn
/// with `seed`.
pub(crate) fn workload_log(
    workload: &mut dyn Workload,
    registry: &Registry,
    seed: u64,
    epochs: u64,
    calls: u32,
) -> Vec<Batch> {
    let mut rng = DetRng::new(seed);
    let mut seq = 0;
    (1..=epochs)
        .map(|epoch| Batch {
            version: LOG_FORMAT_VERSION,
            epoch: Epoch(epoch),
            txns: (0..calls)
                .map(|_| {
                    let request = workload.next_call(&mut rng);
                    seq += 1;
                    let footprint = registry
                        .footprint(request.procedure, &request.args)
                        .expect("the workload's own calls");
                    Arc::new(Transaction {
                        client: ClientId(1),
                        seq: RequestSeq(seq),
                        gateway: NodeId(1),
                        procedure: request.procedure.into(),
                        args: request.args,
                        footprint,
                    })
                })
                .collect(),
        })
        .collect()
}

fn describe(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Committed(output) => match codec::decode::<TransferOutput>(output) {
            Ok(o) => format!(
                "committed (balances {} and {})",
                o.from_balance_cents, o.to_balance_cents
            ),
            Err(_) => "committed".into(),
        },
        Outcome::Aborted(reason) => format!("aborted ({reason})"),
    }
}

/// Runs the what-if over a generated log: the differences, the number of calls, and the
/// transfers that committed.
pub(crate) fn differences() -> (Vec<Difference>, usize, usize) {
    let mut bank = Bank::new(BankConfig {
        partitions: 4,
        ..BankConfig::default()
    });
    let mut recorded = Registry::new();
    bank.register(&mut recorded).expect("the bank's services");
    let mut candidate = Registry::new();
    bank.register(&mut candidate).expect("the bank's services");
    candidate.register::<TransferWithFee>();
    let log = workload_log(&mut bank, &recorded, 7, 40, 50);
    let initial: BTreeMap<Key, Value> = bank.load().into_iter().collect();
    let map = PartitionMap::new(bank.scheme()).expect("the bank's scheme");
    let mut replayer = Replayer::new(&recorded, map.clone(), initial.clone());
    let mut committed_transfers = 0;
    for batch in &log {
        for done in replayer.apply(batch).expect("the log replays") {
            if done.txn.procedure == Transfer::NAME && matches!(done.outcome, Outcome::Committed(_))
            {
                committed_transfers += 1;
            }
        }
    }
    let mut what_if = WhatIf::new(&recorded, &candidate, map, initial);
    let mut found = Vec::new();
    for batch in &log {
        found.extend(what_if.apply(batch).expect("the log replays"));
    }
    (
        found,
        log.iter().map(|b| b.txns.len()).sum(),
        committed_transfers,
    )
}

fn main() {
    let (found, calls, _) = differences();
    for d in &found {
        let args: TransferArgs = codec::decode(&d.args).expect("a transfer's arguments");
        println!(
            "{} {} {} -> {}, {} cents: was {}, would be {}",
            d.position,
            d.procedure,
            args.from,
            args.to,
            args.amount_cents,
            describe(&d.recorded),
            describe(&d.candidate)
        );
    }
    let aborts = found
        .iter()
        .filter(|d| matches!(d.candidate, Outcome::Aborted(_)))
        .filter(|d| matches!(d.recorded, Outcome::Committed(_)))
        .count();
    println!(
        "{} of {calls} calls would have behaved differently with the fee; {aborts} transfers \
         that committed would have aborted for want of the fee",
        found.len()
    );
}
