//! Procedures on hostile arguments and hostile state: overflows, malformed keys, huge
//! values and odd strings are typed aborts, never panics (which the executor would turn
//! into `Panicked` aborts, hiding the bug) and never wrapped arithmetic.

#![allow(clippy::unwrap_used)] // a test helper fails the test on any error

use detflow_executor::serial::SerialExecutor;
use detflow_executor::{Abort, Procedure, Registry, VALUE_BYTES_MAX_DEFAULT};
use detflow_protocol::{ClientId, Key, NodeId, Outcome, RequestSeq, Transaction, Value, codec};
use detflow_workloads::tpcc::check::{Check, CheckArgs};
use detflow_workloads::tpcc::keys;
use detflow_workloads::tpcc::procs::{
    CustomerRef, Delivery, DeliveryArgs, NewOrder, NewOrderArgs, NewOrderLine, OrderStatus,
    OrderStatusArgs, Payment, PaymentArgs, StockLevel, StockLevelArgs,
};
use detflow_workloads::tpcc::rows::{Customer, District};
use detflow_workloads::tpcc::{Mix, Shape, Tpcc, TpccConfig};
use detflow_workloads::{Workload, bank, kv, ycsb};
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::sync::OnceLock;

/// Runs one call of `P` on `state`: the outcome and the state after it.
fn call<P: Procedure>(
    workload: &dyn Workload,
    state: BTreeMap<Key, Value>,
    args: &P::Args,
) -> (Outcome, BTreeMap<Key, Value>) {
    let mut registry = Registry::new();
    workload
        .register(&mut registry)
        .expect("the service registers");
    let args = codec::encode(args);
    let txn = Transaction {
        client: ClientId(1),
        seq: RequestSeq(1),
        gateway: NodeId(0),
        procedure: P::NAME.into(),
        footprint: registry.footprint(P::NAME, &args).unwrap(),
        args,
    };
    let mut serial = SerialExecutor::new(&registry, state);
    let outcome = serial.execute(&txn, None);
    (outcome, serial.into_state())
}

fn is_overflow(outcome: &Outcome) -> bool {
    matches!(outcome, Outcome::Aborted(Abort::Overflow(_)))
}

#[test]
fn bank_balances_that_would_overflow_abort() {
    let bank = bank::Bank::new(bank::BankConfig {
        accounts: 2,
        ..bank::BankConfig::default()
    });
    let mut state: BTreeMap<Key, Value> = bank.load().into_iter().collect();
    state.insert(bank::account_key(1), codec::encode(&(i64::MAX - 5)));
    let deposit = bank::DepositArgs {
        account: 1,
        amount_cents: 10,
    };
    let (outcome, after) = call::<bank::Deposit>(&bank, state.clone(), &deposit);
    assert_eq!(
        outcome,
        Outcome::Aborted(Abort::Overflow("balance of account 1".into()))
    );
    assert_eq!(after, state);
    let transfer = bank::TransferArgs {
        from: 0,
        to: 1,
        amount_cents: 10,
    };
    assert!(is_overflow(
        &call::<bank::Transfer>(&bank, state, &transfer).0
    ));
}

#[test]
fn ycsb_counters_that_would_overflow_abort() {
    let y = ycsb::Ycsb::new(ycsb::YcsbConfig {
        keys: 20,
        ops: 2,
        ..ycsb::YcsbConfig::default()
    });
    let mut state: BTreeMap<Key, Value> = y.load().into_iter().collect();
    let full = ycsb::YcsbRecord {
        counter: u64::MAX,
        pad: Vec::new(),
    };
    state.insert(ycsb::record_key(3), codec::encode(&full));
    let args = ycsb::RmwArgs { keys: vec![2, 3] };
    let (outcome, after) = call::<ycsb::Rmw>(&y, state.clone(), &args);
    assert_eq!(
        outcome,
        Outcome::Aborted(Abort::Overflow("counter of record 3".into()))
    );
    assert_eq!(after, state, "record 2's increment is rolled back");
}

#[test]
fn kv_refuses_malformed_keys_and_huge_values() {
    let kv = kv::Kv::new(kv::KvConfig::default());
    let state: BTreeMap<Key, Value> = kv.load().into_iter().collect();
    // A key with a stray byte after its last field, as a client can encode it.
    let mut raw = kv::key(5).as_bytes().to_vec();
    raw.push(0x77);
    let stray: Key = codec::decode(&codec::encode(&detflow_protocol::bin::Blob(&raw))).unwrap();
    for txn in [
        kv::KvTxn::new().put(stray.clone(), b"x".to_vec()),
        kv::KvTxn::new().delete(stray.clone()),
        kv::KvTxn::new().append(stray.clone(), b"x".to_vec()),
        kv::KvTxn::new().cas(stray.clone(), None, Some(b"x".to_vec())),
    ] {
        let (outcome, after) = call::<kv::AdHoc>(&kv, state.clone(), &txn);
        assert!(
            matches!(outcome, Outcome::Aborted(Abort::BadKey(_))),
            "{txn:?}: {outcome:?}"
        );
        assert_eq!(after, state);
    }
    // Reading one is harmless: nothing is stored under it.
    let get = kv::KvTxn::new().get(stray);
    assert!(matches!(
        call::<kv::AdHoc>(&kv, state.clone(), &get).0,
        Outcome::Committed(_)
    ));

    let huge = vec![7; VALUE_BYTES_MAX_DEFAULT + 1];
    let put = kv::KvTxn::new().put(kv::key(30), huge);
    let (outcome, after) = call::<kv::AdHoc>(&kv, state.clone(), &put);
    assert_eq!(
        outcome,
        Outcome::Aborted(Abort::ValueTooLarge {
            key: kv::key(30),
            bytes: VALUE_BYTES_MAX_DEFAULT + 1,
            max: VALUE_BYTES_MAX_DEFAULT,
        })
    );
    assert_eq!(after, state);
    // A list that would grow past the limit aborts its append too.
    let mut big_list = state.clone();
    big_list.insert(
        kv::key(0),
        kv::encode_list(&[vec![1; VALUE_BYTES_MAX_DEFAULT - 16]]),
    );
    let append = kv::KvTxn::new().append(kv::key(0), vec![2; 64]);
    assert!(matches!(
        call::<kv::AdHoc>(&kv, big_list, &append).0,
        Outcome::Aborted(Abort::ValueTooLarge { .. })
    ));
}

fn tpcc() -> &'static (Tpcc, BTreeMap<Key, Value>) {
    static TPCC: OnceLock<(Tpcc, BTreeMap<Key, Value>)> = OnceLock::new();
    TPCC.get_or_init(|| {
        let tpcc = Tpcc::new(TpccConfig {
            warehouses: 1,
            partitions: 1,
            shape: Shape::scaled_down(100),
            mix: Mix::Standard,
        });
        let state = tpcc.load().into_iter().collect();
        (tpcc, state)
    })
}

fn update<T: serde::Serialize + serde::de::DeserializeOwned>(
    state: &mut BTreeMap<Key, Value>,
    key: &Key,
    f: impl FnOnce(&mut T),
) {
    let mut row: T = codec::decode(&state[key]).unwrap();
    f(&mut row);
    state.insert(key.clone(), codec::encode(&row));
}

fn payment(amount_cents: i64) -> PaymentArgs {
    PaymentArgs {
        w: 1,
        d: 1,
        c_w: 1,
        c_d: 1,
        customer: CustomerRef::Id(1),
        amount_cents,
        date: 1,
    }
}

#[test]
fn tpcc_payment_cuts_customer_data_at_a_char_boundary() {
    let (tpcc, state) = tpcc();
    let mut state = state.clone();
    let customer = keys::customer(1, 1, 1);
    // Two-byte chars throughout: byte 500 of the new C_DATA falls inside one for some
    // prefix lengths; try both parities.
    for pad in ["", "x"] {
        update(&mut state, &customer, |c: &mut Customer| {
            c.credit = "BC".into();
            c.data = format!("{pad}{}", "é".repeat(400));
        });
        let (outcome, after) = call::<Payment>(tpcc, state.clone(), &payment(100));
        assert!(matches!(outcome, Outcome::Committed(_)), "{outcome:?}");
        let c: Customer = codec::decode(&after[&customer]).unwrap();
        assert!(
            c.data.len() <= 500 && c.data.len() >= 498,
            "{}",
            c.data.len()
        );
    }
}

#[test]
fn tpcc_overflows_abort() {
    let (tpcc, state) = tpcc();
    let (district, warehouse) = (keys::district(1, 1), keys::warehouse(1));
    let new_order = |quantity: u32| NewOrderArgs {
        w: 1,
        d: 1,
        c: 1,
        lines: vec![NewOrderLine {
            i_id: 1,
            supply_w_id: 1,
            quantity,
        }],
        entry_d: 1,
    };

    let mut full = state.clone();
    update(&mut full, &district, |d: &mut District| {
        d.next_o_id = u32::MAX
    });
    let (outcome, after) = call::<NewOrder>(tpcc, full.clone(), &new_order(5));
    assert_eq!(
        outcome,
        Outcome::Aborted(Abort::Overflow("D_NEXT_O_ID".into()))
    );
    assert_eq!(after, full);
    assert_eq!(
        call::<NewOrder>(tpcc, state.clone(), &new_order(u32::MAX)).0,
        Outcome::Aborted(Abort::Overflow("OL_QUANTITY".into()))
    );
    assert!(matches!(
        call::<Payment>(tpcc, state.clone(), &payment(i64::MAX)).0,
        Outcome::Aborted(Abort::Overflow(_))
    ));
    let mut rich = state.clone();
    update(
        &mut rich,
        &warehouse,
        |w: &mut detflow_workloads::tpcc::rows::Warehouse| w.ytd_cents = i64::MAX,
    );
    assert_eq!(
        call::<Payment>(tpcc, rich, &payment(1)).0,
        Outcome::Aborted(Abort::Overflow("W_YTD".into()))
    );
    // An order index key whose id does not fit an O_ID (written by some other client).
    let mut odd = state.clone();
    odd.insert(
        keys::orders_of_customer(1, 1, 1).u64(u64::from(u32::MAX) + 1),
        codec::encode(&()),
    );
    let status = OrderStatusArgs {
        w: 1,
        d: 1,
        customer: CustomerRef::Id(1),
    };
    assert!(is_overflow(&call::<OrderStatus>(tpcc, odd, &status).0));

    // The consistency check sums stored amounts: hostile rows abort it, and a D_NEXT_O_ID
    // of 0 is a finding, not an underflow.
    let check = CheckArgs {
        w: 1,
        shape: tpcc.config().shape,
        initial: true,
    };
    let mut huge = state.clone();
    for d in [1, 2] {
        update(&mut huge, &keys::district(1, d), |d: &mut District| {
            d.ytd_cents = i64::MAX
        });
    }
    assert_eq!(
        call::<Check>(tpcc, huge, &check).0,
        Outcome::Aborted(Abort::Overflow("sum(D_YTD)".into()))
    );
    let mut zero = state.clone();
    update(&mut zero, &district, |d: &mut District| d.next_o_id = 0);
    let Outcome::Committed(found) = call::<Check>(tpcc, zero, &check).0 else {
        panic!("the check runs")
    };
    let found: detflow_workloads::tpcc::check::WarehouseCheck = codec::decode(&found).unwrap();
    assert!(
        found
            .problems
            .iter()
            .any(|p| p.starts_with("2: district (1, 1)")),
        "{found:?}"
    );
}

fn customer_ref() -> impl Strategy<Value = CustomerRef> {
    prop_oneof![
        any::<u32>().prop_map(CustomerRef::Id),
        (".{0,12}", any::<u32>()).prop_map(|(last, c_id)| CustomerRef::Last { last, c_id }),
        (0u32..40).prop_map(CustomerRef::Id),
    ]
}

fn small_or_any() -> impl Strategy<Value = u32> {
    prop_oneof![0u32..4, 0u32..12, any::<u32>(), Just(u32::MAX)]
}

fn amount() -> impl Strategy<Value = i64> {
    prop_oneof![
        any::<i64>(),
        -10_000i64..10_000,
        Just(i64::MIN),
        Just(i64::MAX)
    ]
}

/// A TPC-C call with arbitrary arguments.
#[derive(Debug)]
enum AnyCall {
    NewOrder(NewOrderArgs),
    Payment(PaymentArgs),
    OrderStatus(OrderStatusArgs),
    Delivery(DeliveryArgs),
    StockLevel(StockLevelArgs),
    Check(CheckArgs),
}

fn any_call() -> impl Strategy<Value = AnyCall> {
    let line = (small_or_any(), small_or_any(), small_or_any()).prop_map(
        |(i_id, supply_w_id, quantity)| NewOrderLine {
            i_id,
            supply_w_id,
            quantity,
        },
    );
    prop_oneof![
        (
            small_or_any(),
            small_or_any(),
            small_or_any(),
            proptest::collection::vec(line, 0..4),
            any::<u64>()
        )
            .prop_map(|(w, d, c, lines, entry_d)| AnyCall::NewOrder(NewOrderArgs {
                w,
                d,
                c,
                lines,
                entry_d
            })),
        (
            small_or_any(),
            small_or_any(),
            small_or_any(),
            small_or_any(),
            customer_ref(),
            amount()
        )
            .prop_map(|(w, d, c_w, c_d, customer, amount_cents)| {
                AnyCall::Payment(PaymentArgs {
                    w,
                    d,
                    c_w,
                    c_d,
                    customer,
                    amount_cents,
                    date: 0,
                })
            }),
        (small_or_any(), small_or_any(), customer_ref()).prop_map(|(w, d, customer)| {
            AnyCall::OrderStatus(OrderStatusArgs { w, d, customer })
        }),
        (small_or_any(), small_or_any()).prop_map(|(w, carrier_id)| {
            AnyCall::Delivery(DeliveryArgs {
                w,
                carrier_id,
                date: 0,
            })
        }),
        (small_or_any(), small_or_any(), any::<i32>()).prop_map(|(w, d, threshold)| {
            AnyCall::StockLevel(StockLevelArgs { w, d, threshold })
        }),
        (
            small_or_any(),
            [
                small_or_any(),
                small_or_any(),
                small_or_any(),
                small_or_any()
            ],
            any::<bool>()
        )
            .prop_map(|(w, [items, customers, orders, new_orders], initial)| {
                AnyCall::Check(CheckArgs {
                    w,
                    shape: Shape {
                        items,
                        customers,
                        orders,
                        new_orders,
                    },
                    initial,
                })
            }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Whatever the arguments, a TPC-C procedure commits or aborts with a reason of its
    /// own; it never panics (with overflow checks on, as in `cargo test`, unchecked
    /// arithmetic would).
    #[test]
    fn tpcc_procedures_never_panic(call_args in any_call()) {
        let (tpcc, state) = tpcc();
        let state = state.clone();
        let outcome = match &call_args {
            AnyCall::NewOrder(a) => call::<NewOrder>(tpcc, state, a).0,
            AnyCall::Payment(a) => call::<Payment>(tpcc, state, a).0,
            AnyCall::OrderStatus(a) => call::<OrderStatus>(tpcc, state, a).0,
            AnyCall::Delivery(a) => call::<Delivery>(tpcc, state, a).0,
            AnyCall::StockLevel(a) => call::<StockLevel>(tpcc, state, a).0,
            AnyCall::Check(a) => call::<Check>(tpcc, state, a).0,
        };
        prop_assert!(
            !matches!(outcome, Outcome::Aborted(Abort::Panicked(_))),
            "{call_args:?}: {outcome:?}"
        );
    }
}
