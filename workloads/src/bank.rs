//! The bank: accounts spread over partitions; transfers, deposits and balance reads.
//!
//! Account `id` is the key `("acct", id)` holding its balance in cents, a MessagePack
//! `i64`. The table is hashed on the account id, so a transfer between two accounts is
//! usually multi-partition.
//!
//! Invariants ([`Bank::check`]): every account exists, no balance is negative, and the
//! total equals the initial total plus the committed deposits (transfers conserve money).

use crate::{
    Answer, Executed, Findings, LiveCheck, Request, Violation, Workload, committed_output,
    table_rows,
};
use detflow_executor::{Abort, FieldType, OrOverflow, Procedure, Service, Txn};
use detflow_protocol::{
    DetRng, Elem, Footprint, Key, Outcome, PartitionScheme, TableRule, Value, codec,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The table of accounts.
pub const TABLE: &str = "acct";

/// The key of account `id`: `("acct", id)`.
pub fn account_key(id: u64) -> Key {
    Key::table(TABLE).u64(id)
}

/// The bank's size and call mix.
#[derive(Clone, Debug, PartialEq)]
pub struct BankConfig {
    /// Number of accounts, ids `0..accounts`; at least 1. Default 64.
    pub accounts: u64,
    /// The balance every account starts with; at least 0. Default 10 000 (100.00).
    pub initial_balance_cents: i64,
    /// Transfers move `1..=transfer_cents_max`; at least 1. Default 2 000, so accounts
    /// run dry now and then and some transfers abort.
    pub transfer_cents_max: i64,
    /// Deposits add `1..=deposit_cents_max`; at least 1. Default 1 000.
    pub deposit_cents_max: i64,
    /// Percentage of calls that are transfers. Default 70.
    pub transfer_percent: u32,
    /// Percentage of calls that are deposits; the rest are balance reads. Default 15.
    pub deposit_percent: u32,
    /// Number of partitions of the scheme; at least 1. Default 1.
    pub partitions: u32,
}

impl Default for BankConfig {
    fn default() -> BankConfig {
        BankConfig {
            accounts: 64,
            initial_balance_cents: 10_000,
            transfer_cents_max: 2_000,
            deposit_cents_max: 1_000,
            transfer_percent: 70,
            deposit_percent: 15,
            partitions: 1,
        }
    }
}

/// The bank workload.
#[derive(Clone, Debug)]
pub struct Bank {
    config: BankConfig,
}

impl Bank {
    /// The bank described by `config`.
    ///
    /// # Panics
    ///
    /// If the config breaks one of the bounds its fields document.
    pub fn new(config: BankConfig) -> Bank {
        assert!(config.accounts >= 1, "bank needs at least one account");
        assert!(
            config.initial_balance_cents >= 0,
            "negative initial balance"
        );
        assert!(
            config.transfer_cents_max >= 1,
            "transfer_cents_max must be at least 1"
        );
        assert!(
            config.deposit_cents_max >= 1,
            "deposit_cents_max must be at least 1"
        );
        assert!(
            config.transfer_percent + config.deposit_percent <= 100,
            "transfer and deposit percentages exceed 100"
        );
        assert!(config.partitions >= 1, "at least one partition");
        Bank { config }
    }

    /// The configuration.
    pub fn config(&self) -> &BankConfig {
        &self.config
    }

    fn account(&self, rng: &mut DetRng) -> u64 {
        rng.below(self.config.accounts)
    }
}

impl Workload for Bank {
    fn name(&self) -> &'static str {
        "bank"
    }

    fn services(&self) -> Vec<Service> {
        let accounts = crate::table_in(&self.scheme(), TABLE)
            .key("id", FieldType::U64)
            .column("balance_cents", FieldType::I64);
        vec![
            Service::new("bank")
                .table(accounts)
                .procedure::<Transfer>()
                .procedure::<Deposit>()
                .procedure::<Balance>(),
        ]
    }

    fn scheme(&self) -> PartitionScheme {
        PartitionScheme::hashed(self.config.partitions).table(TABLE, TableRule::Hash { fields: 1 })
    }

    fn load(&self) -> Vec<(Key, Value)> {
        // Ascending ids give ascending keys: the u64 element is big-endian.
        (0..self.config.accounts)
            .map(|id| {
                (
                    account_key(id),
                    codec::encode(&self.config.initial_balance_cents),
                )
            })
            .collect()
    }

    /// Transfers between two distinct accounts (when there are two), deposits and balance
    /// reads, accounts uniform.
    fn next_call(&mut self, rng: &mut DetRng) -> Request {
        let roll = rng.below(100) as u32;
        if roll < self.config.transfer_percent {
            let from = self.account(rng);
            let mut to = from;
            if self.config.accounts > 1 {
                // Uniform over the other accounts.
                to = rng.below(self.config.accounts - 1);
                if to >= from {
                    to += 1;
                }
            }
            let amount_cents = rng.range(1, self.config.transfer_cents_max as u64) as i64;
            request::<Transfer>(&TransferArgs {
                from,
                to,
                amount_cents,
            })
        } else if roll < self.config.transfer_percent + self.config.deposit_percent {
            let account = self.account(rng);
            let amount_cents = rng.range(1, self.config.deposit_cents_max as u64) as i64;
            request::<Deposit>(&DepositArgs {
                account,
                amount_cents,
            })
        } else {
            let account = self.account(rng);
            request::<Balance>(&BalanceArgs { account })
        }
    }

    fn live_check(&self) -> Option<Box<dyn LiveCheck>> {
        Some(Box::new(LiveBank {
            config: self.config.clone(),
            deposits_cents: 0,
            next_account: 0,
            total_cents: 0,
            failure: None,
        }))
    }

    fn check(&self, state: &BTreeMap<Key, Value>, log: &[Executed<'_>]) -> Result<(), Violation> {
        let mut findings = Findings::new("bank");
        let accounts = self.config.accounts;

        let mut total: i128 = 0;
        for id in 0..accounts {
            let key = account_key(id);
            let Some(bytes) = state.get(&key) else {
                findings.push(|| format!("account {key} is missing"));
                continue;
            };
            match codec::decode::<i64>(bytes) {
                Ok(balance) if balance < 0 => {
                    findings.push(|| format!("account {key} has negative balance {balance}"));
                    total += i128::from(balance);
                }
                Ok(balance) => total += i128::from(balance),
                Err(e) => findings.push(|| format!("account {key} holds no balance: {}", e.0)),
            }
        }
        for (key, _) in table_rows(state, TABLE) {
            let known = matches!(
                key.elems().as_deref(),
                Ok([_, Elem::U64(id)]) if *id < accounts
            );
            if !known {
                findings.push(|| format!("unexpected key {key} in table {TABLE}"));
            }
        }

        let mut deposits: i128 = 0;
        for (index, entry) in log.iter().enumerate() {
            if entry.procedure != Deposit::NAME || !matches!(entry.outcome, Outcome::Committed(_)) {
                continue;
            }
            match codec::decode::<DepositArgs>(entry.args) {
                Ok(args) => deposits += i128::from(args.amount_cents),
                Err(e) => findings.push(|| {
                    format!(
                        "committed deposit at log index {index} has bad arguments: {}",
                        e.0
                    )
                }),
            }
        }
        // Only meaningful when every balance was read.
        if findings.is_empty() {
            let expected =
                i128::from(accounts) * i128::from(self.config.initial_balance_cents) + deposits;
            if total != expected {
                findings.push(|| {
                    format!(
                        "total {total} cents is not the initial total plus committed deposits \
                         ({expected} cents; deposits {deposits}); off by {}",
                        total - expected
                    )
                });
            }
        }
        findings.finish()
    }
}

/// The bank's end-to-end check of a live cluster: reads every balance and requires the
/// total to be the initial total plus the acknowledged deposits, and no balance negative.
///
/// Deposits whose acknowledgement never came (the client gave up) are not counted, so a
/// run with failed deposits may report a total above the expected one.
struct LiveBank {
    config: BankConfig,
    /// The acknowledged deposits, added up.
    deposits_cents: i64,
    /// The account the next read asks for.
    next_account: u64,
    /// The balances read so far, added up.
    total_cents: i64,
    /// Why the check failed, once it has.
    failure: Option<String>,
}

impl LiveCheck for LiveBank {
    fn note_commit(&mut self, procedure: &str, args: &[u8], _output: &[u8]) {
        if procedure == Deposit::NAME
            && let Ok(a) = codec::decode::<DepositArgs>(args)
        {
            self.deposits_cents = self.deposits_cents.saturating_add(a.amount_cents);
        }
    }

    fn next_read(&mut self) -> Option<Request> {
        if self.failure.is_some() || self.next_account >= self.config.accounts {
            return None;
        }
        let account = self.next_account;
        self.next_account += 1;
        Some(request::<Balance>(&BalanceArgs { account }))
    }

    fn on_answer(&mut self, request: &Request, answer: Answer<'_>) {
        let account = codec::decode::<BalanceArgs>(&request.args).map_or(u64::MAX, |a| a.account);
        let what = format!("reading account {account}");
        let balance = committed_output(&what, answer).and_then(|output| {
            codec::decode::<BalanceOutput>(output)
                .map_err(|e| format!("{what}: the output does not decode: {}", e.0))
        });
        match balance {
            Ok(out) if out.balance_cents < 0 => {
                self.failure = Some(format!(
                    "account {account} is negative: {}",
                    out.balance_cents
                ));
            }
            Ok(out) => self.total_cents = self.total_cents.saturating_add(out.balance_cents),
            Err(e) => self.failure = Some(e),
        }
    }

    fn verdict(self: Box<Self>) -> Result<String, String> {
        if let Some(failure) = self.failure {
            return Err(failure);
        }
        let total = self.total_cents;
        let expected = (self.config.accounts as i64)
            .saturating_mul(self.config.initial_balance_cents)
            .saturating_add(self.deposits_cents);
        if total != expected {
            return Err(format!(
                "total is {total} cents, expected {expected} (initial + acknowledged deposits)"
            ));
        }
        Ok(format!(
            "total conserved: {total} cents over {} accounts, none negative",
            self.config.accounts
        ))
    }
}

fn request<P: Procedure>(args: &P::Args) -> Request {
    Request::new(P::NAME, codec::encode(args))
}

/// The balance of `id`, aborting if the account does not exist.
fn balance_of(tx: &Txn<'_>, id: u64) -> Result<i64, Abort> {
    tx.get_as::<i64>(&account_key(id))?
        .ok_or_else(|| Abort::User(format!("account {id} does not exist")))
}

fn require_positive(amount_cents: i64) -> Result<(), Abort> {
    if amount_cents <= 0 {
        return Err(Abort::User(format!(
            "amount must be positive, got {amount_cents} cents"
        )));
    }
    Ok(())
}

/// `bank.transfer`: moves money between two accounts, aborting on insufficient funds.
///
/// A transfer from an account to itself commits without writing, if the account holds
/// at least the amount.
#[derive(Clone, Copy, Debug)]
pub struct Transfer;

/// The arguments of [`Transfer`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferArgs {
    /// The debited account.
    pub from: u64,
    /// The credited account.
    pub to: u64,
    /// The amount; positive.
    pub amount_cents: i64,
}

/// The output of [`Transfer`]: both balances after the transfer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferOutput {
    /// The debited account's new balance.
    pub from_balance_cents: i64,
    /// The credited account's new balance.
    pub to_balance_cents: i64,
}

impl Procedure for Transfer {
    const NAME: &'static str = "bank.transfer";
    type Args = TransferArgs;
    type Output = TransferOutput;

    fn footprint(args: &TransferArgs) -> Footprint {
        Footprint::new()
            .write(account_key(args.from))
            .write(account_key(args.to))
    }

    fn execute(tx: &mut Txn<'_>, args: TransferArgs) -> Result<TransferOutput, Abort> {
        require_positive(args.amount_cents)?;
        let from = balance_of(tx, args.from)?;
        let to = balance_of(tx, args.to)?;
        if from < args.amount_cents {
            return Err(Abort::User(format!(
                "insufficient funds: account {} holds {from} cents, transfer of {} cents",
                args.from, args.amount_cents
            )));
        }
        if args.from == args.to {
            return Ok(TransferOutput {
                from_balance_cents: from,
                to_balance_cents: to,
            });
        }
        let from_after = from
            .checked_sub(args.amount_cents)
            .or_overflow(format_args!("balance of account {}", args.from))?;
        let to_after = to
            .checked_add(args.amount_cents)
            .or_overflow(format_args!("balance of account {}", args.to))?;
        tx.put_as(account_key(args.from), &from_after)?;
        tx.put_as(account_key(args.to), &to_after)?;
        Ok(TransferOutput {
            from_balance_cents: from_after,
            to_balance_cents: to_after,
        })
    }
}

/// `bank.deposit`: adds money to an account.
#[derive(Clone, Copy, Debug)]
pub struct Deposit;

/// The arguments of [`Deposit`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DepositArgs {
    /// The credited account.
    pub account: u64,
    /// The amount; positive.
    pub amount_cents: i64,
}

/// The output of [`Deposit`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DepositOutput {
    /// The account's new balance.
    pub balance_cents: i64,
}

impl Procedure for Deposit {
    const NAME: &'static str = "bank.deposit";
    type Args = DepositArgs;
    type Output = DepositOutput;

    fn footprint(args: &DepositArgs) -> Footprint {
        Footprint::new().write(account_key(args.account))
    }

    fn execute(tx: &mut Txn<'_>, args: DepositArgs) -> Result<DepositOutput, Abort> {
        require_positive(args.amount_cents)?;
        let balance = balance_of(tx, args.account)?;
        let after = balance
            .checked_add(args.amount_cents)
            .or_overflow(format_args!("balance of account {}", args.account))?;
        tx.put_as(account_key(args.account), &after)?;
        Ok(DepositOutput {
            balance_cents: after,
        })
    }
}

/// `bank.balance`: reads an account's balance.
#[derive(Clone, Copy, Debug)]
pub struct Balance;

/// The arguments of [`Balance`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalanceArgs {
    /// The account.
    pub account: u64,
}

/// The output of [`Balance`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalanceOutput {
    /// The account's balance.
    pub balance_cents: i64,
}

impl Procedure for Balance {
    const NAME: &'static str = "bank.balance";
    type Args = BalanceArgs;
    type Output = BalanceOutput;

    fn footprint(args: &BalanceArgs) -> Footprint {
        Footprint::new().read(account_key(args.account))
    }

    fn execute(tx: &mut Txn<'_>, args: BalanceArgs) -> Result<BalanceOutput, Abort> {
        Ok(BalanceOutput {
            balance_cents: balance_of(tx, args.account)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit;
    use detflow_executor::Registry;
    use detflow_executor::serial::SerialExecutor;
    use detflow_protocol::AbortReason;

    fn bank() -> Bank {
        Bank::new(BankConfig {
            accounts: 4,
            ..BankConfig::default()
        })
    }

    /// Runs `bank`'s live check against `balances`, after noting `deposits`.
    fn live_verdict(bank: &Bank, deposits: &[i64], balances: &[i64]) -> Result<String, String> {
        let mut check = bank.live_check().expect("the bank has a live check");
        for (account, amount_cents) in deposits.iter().enumerate() {
            let args = codec::encode(&DepositArgs {
                account: account as u64,
                amount_cents: *amount_cents,
            });
            check.note_commit(Deposit::NAME, &args, &[]);
        }
        // A transfer's commit changes nothing the check counts.
        check.note_commit(Transfer::NAME, &[], &[]);
        let mut reads = 0;
        while let Some(request) = check.next_read() {
            assert_eq!(request.procedure, Balance::NAME);
            let args: BalanceArgs = codec::decode(&request.args).unwrap();
            let output = codec::encode(&BalanceOutput {
                balance_cents: balances[args.account as usize],
            });
            check.on_answer(&request, Answer::Committed(&output));
            reads += 1;
        }
        assert!(reads <= balances.len());
        check.verdict()
    }

    #[test]
    fn live_check_requires_the_total_plus_acknowledged_deposits() {
        let bank = bank();
        // 4 accounts of 10,000 and deposits of 50 and 25.
        assert_eq!(
            live_verdict(&bank, &[50, 25], &[9_000, 11_075, 10_000, 10_000]),
            Ok("total conserved: 40075 cents over 4 accounts, none negative".to_owned())
        );
        let lost = live_verdict(&bank, &[50], &[10_000; 4]).unwrap_err();
        assert!(lost.contains("expected 40050"), "{lost}");
        let negative = live_verdict(&bank, &[], &[-1, 20_001, 10_000, 10_000]).unwrap_err();
        assert_eq!(negative, "account 0 is negative: -1");
    }

    #[test]
    fn live_check_reports_a_read_that_aborted() {
        let bank = bank();
        let mut check = bank.live_check().unwrap();
        let request = check.next_read().unwrap();
        let reason = AbortReason::Panicked("boom".into());
        check.on_answer(&request, Answer::Aborted(&reason));
        assert_eq!(check.next_read(), None, "a failed check reads no further");
        let verdict = check.verdict().unwrap_err();
        assert!(
            verdict.starts_with("reading account 0: aborted"),
            "{verdict}"
        );
    }

    fn call<P: Procedure>(
        serial: &mut SerialExecutor<'_>,
        registry: &Registry,
        args: &P::Args,
    ) -> Outcome {
        let txn = testkit::transaction(registry, 1, P::NAME, codec::encode(args));
        serial.execute(&txn, None)
    }

    #[test]
    fn transfer_moves_money_and_insufficient_funds_abort_without_effect() {
        let bank = bank();
        let registry = testkit::registry(&bank);
        let mut serial = SerialExecutor::new(&registry, bank.load().into_iter().collect());

        let ok = call::<Transfer>(
            &mut serial,
            &registry,
            &TransferArgs {
                from: 0,
                to: 1,
                amount_cents: 2_500,
            },
        );
        let expected = TransferOutput {
            from_balance_cents: 7_500,
            to_balance_cents: 12_500,
        };
        assert_eq!(ok, Outcome::Committed(codec::encode_named(&expected)));

        let before = serial.state().clone();
        let outcome = call::<Transfer>(
            &mut serial,
            &registry,
            &TransferArgs {
                from: 0,
                to: 2,
                amount_cents: 7_501,
            },
        );
        match outcome {
            Outcome::Aborted(Abort::User(msg)) => assert!(msg.contains("insufficient funds")),
            other => panic!("expected an abort, got {other:?}"),
        }
        assert_eq!(serial.state(), &before);
    }

    #[test]
    fn bad_amounts_missing_accounts_and_self_transfers() {
        let bank = bank();
        let registry = testkit::registry(&bank);
        let mut serial = SerialExecutor::new(&registry, bank.load().into_iter().collect());
        let before = serial.state().clone();
        for outcome in [
            call::<Transfer>(
                &mut serial,
                &registry,
                &TransferArgs {
                    from: 0,
                    to: 1,
                    amount_cents: -5,
                },
            ),
            call::<Deposit>(
                &mut serial,
                &registry,
                &DepositArgs {
                    account: 1,
                    amount_cents: 0,
                },
            ),
            call::<Balance>(&mut serial, &registry, &BalanceArgs { account: 9 }),
            call::<Transfer>(
                &mut serial,
                &registry,
                &TransferArgs {
                    from: 3,
                    to: 3,
                    amount_cents: 10_001,
                },
            ),
        ] {
            assert!(
                matches!(outcome, Outcome::Aborted(Abort::User(_))),
                "{outcome:?}"
            );
        }
        let same = call::<Transfer>(
            &mut serial,
            &registry,
            &TransferArgs {
                from: 3,
                to: 3,
                amount_cents: 10_000,
            },
        );
        assert!(matches!(same, Outcome::Committed(_)));
        assert_eq!(serial.state(), &before);

        let deposit = call::<Deposit>(
            &mut serial,
            &registry,
            &DepositArgs {
                account: 2,
                amount_cents: 1,
            },
        );
        let balance = DepositOutput {
            balance_cents: 10_001,
        };
        assert_eq!(deposit, Outcome::Committed(codec::encode_named(&balance)));
        let read = call::<Balance>(&mut serial, &registry, &BalanceArgs { account: 2 });
        assert_eq!(read, Outcome::Committed(codec::encode_named(&balance)));
    }

    #[test]
    fn generated_runs_pass_and_tampering_fails() {
        let mut bank = Bank::new(BankConfig {
            accounts: 8,
            ..BankConfig::default()
        });
        let run = testkit::run(&mut bank, 11, 600);
        assert_eq!(run.check(&bank), Ok(()));
        let (committed, aborted) = run.outcomes(Transfer::NAME);
        assert!(
            committed > 200 && aborted > 0,
            "{committed} committed, {aborted} aborted"
        );
        assert!(run.outcomes(Deposit::NAME).0 > 50);
        assert!(run.outcomes(Balance::NAME).0 > 50);

        let mut state = run.state.clone();
        let key = account_key(3);
        let balance: i64 = codec::decode(&state[&key]).unwrap();
        state.insert(key.clone(), codec::encode(&(balance + 1)));
        let err = bank.check(&state, &run.executed()).unwrap_err();
        assert!(err.detail.contains("off by 1"), "{err}");

        let mut state = run.state.clone();
        state.remove(&key);
        let err = bank.check(&state, &run.executed()).unwrap_err();
        assert!(err.detail.contains("(\"acct\", 3) is missing"), "{err}");

        let mut state = run.state.clone();
        state.insert(account_key(0), codec::encode(&-1i64));
        state.insert(account_key(9), codec::encode(&0i64));
        let err = bank.check(&state, &run.executed()).unwrap_err();
        assert!(err.detail.contains("negative balance -1"), "{err}");
        assert!(err.detail.contains("unexpected key (\"acct\", 9)"), "{err}");

        // Dropping a committed deposit from the log breaks conservation.
        let mut log = run.executed();
        let at = log
            .iter()
            .position(|e| {
                e.procedure == Deposit::NAME && matches!(e.outcome, Outcome::Committed(_))
            })
            .unwrap();
        log.remove(at);
        assert!(bank.check(&run.state, &log).is_err());
    }

    #[test]
    fn generator_is_deterministic_and_mixes_calls() {
        let draw = |seed| {
            let mut bank = Bank::new(BankConfig::default());
            let mut rng = DetRng::new(seed);
            (0..1000)
                .map(|_| bank.next_call(&mut rng))
                .collect::<Vec<_>>()
        };
        let calls = draw(1);
        assert_eq!(calls, draw(1));
        assert_ne!(calls, draw(2));
        let transfers = calls
            .iter()
            .filter(|c| c.procedure == Transfer::NAME)
            .count();
        assert!((620..780).contains(&transfers), "{transfers}");
        for call in &calls {
            if call.procedure == Transfer::NAME {
                let args: TransferArgs = codec::decode(&call.args).unwrap();
                assert_ne!(args.from, args.to);
                assert!((1..=2_000).contains(&args.amount_cents));
            }
        }
    }

    #[test]
    fn scheme_hashes_accounts_over_the_partitions() {
        let bank = Bank::new(BankConfig {
            partitions: 4,
            ..BankConfig::default()
        });
        let scheme = bank.scheme();
        assert_eq!(scheme.partitions, 4);
        assert_eq!(
            scheme.tables,
            vec![(TABLE.to_owned(), TableRule::Hash { fields: 1 })]
        );
        let load = bank.load();
        assert!(load.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(load.len(), 64);
    }
}
