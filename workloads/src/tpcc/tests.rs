use super::*;
use detflow_executor::Registry;
use detflow_executor::serial::SerialExecutor;
use detflow_protocol::{ClientId, NodeId, Outcome, RequestSeq, Transaction};

fn small(warehouses: u32, partitions: u32, mix: Mix) -> Tpcc {
    Tpcc::new(TpccConfig {
        warehouses,
        partitions,
        shape: Shape::scaled_down(100),
        mix,
    })
}

struct Runner<'r> {
    registry: &'r Registry,
    serial: SerialExecutor<'r>,
    seq: u64,
}

impl<'r> Runner<'r> {
    fn new(registry: &'r Registry, tpcc: &Tpcc) -> Runner<'r> {
        Runner {
            registry,
            serial: SerialExecutor::new(registry, tpcc.load().into_iter().collect()),
            seq: 0,
        }
    }

    fn run(&mut self, request: &Request) -> Outcome {
        self.seq += 1;
        let footprint = self
            .registry
            .footprint(request.procedure, &request.args)
            .unwrap();
        let txn = Transaction {
            client: ClientId(1),
            seq: RequestSeq(self.seq),
            gateway: NodeId(0),
            procedure: request.procedure.to_owned(),
            args: request.args.clone(),
            footprint,
        };
        self.serial.execute(&txn, None)
    }

    /// Runs one logical transaction through its follow-ups; the last call's outcome.
    fn session(&mut self, tpcc: &mut Tpcc, mut request: Request) -> (Request, Outcome) {
        loop {
            let outcome = self.run(&request);
            let answer = answer(&outcome);
            match tpcc.follow_up(&request, answer) {
                Some(next) => request = next,
                None => return (request, outcome),
            }
        }
    }
}

fn answer(outcome: &Outcome) -> Answer<'_> {
    match outcome {
        Outcome::Committed(out) => Answer::Committed(out),
        Outcome::Aborted(reason) => Answer::Aborted(reason),
    }
}

fn registry(tpcc: &Tpcc) -> Registry {
    let mut registry = Registry::new();
    tpcc.register(&mut registry).expect("the service registers");
    registry
}

#[test]
fn loaded_population_is_consistent_and_ascending() {
    let tpcc = small(3, 2, Mix::Standard);
    let rows = tpcc.load();
    assert!(rows.windows(2).all(|w| w[0].0 < w[1].0));
    let expected = 3 * tpcc.config.shape.rows_per_warehouse();
    let got = rows.len() as u64;
    assert!(
        got > expected * 9 / 10 && got < expected * 11 / 10,
        "{got} rows, about {expected} expected"
    );
    let state: BTreeMap<Key, Value> = rows.into_iter().collect();
    tpcc.check_initial(&state).unwrap();
    // The same population on every call: nodes load independently.
    assert_eq!(tpcc.load().len() as u64, got);
}

#[test]
fn every_table_but_item_routes_by_warehouse_range() {
    let tpcc = small(5, 2, Mix::Standard);
    let map = detflow_scheduler::PartitionMap::new(tpcc.scheme()).unwrap();
    use detflow_protocol::Owner;
    assert_eq!(map.owner(&keys::item(7)).unwrap(), Owner::Replicated);
    // Warehouses 1–2 on partition 0, 3–5 on partition 1.
    for (w, p) in [(1, 0), (2, 0), (3, 1), (5, 1)] {
        for table in keys::BY_WAREHOUSE {
            let prefix = keys::of_warehouse(table, w);
            assert_eq!(
                map.owner_of_prefix(&prefix).unwrap(),
                Owner::Partition(detflow_protocol::PartitionId(p)),
                "{table} of warehouse {w}"
            );
        }
    }
}

#[test]
fn generated_runs_stay_consistent() {
    for mix in [Mix::Standard, Mix::NewOrderPayment] {
        let mut tpcc = small(2, 1, mix);
        let registry = registry(&tpcc);
        let mut runner = Runner::new(&registry, &tpcc);
        let mut rng = DetRng::new(7);
        let mut committed: BTreeMap<&'static str, u64> = BTreeMap::new();
        for _ in 0..1_500 {
            let first = tpcc.next_call(&mut rng);
            let (last, outcome) = runner.session(&mut tpcc, first);
            if matches!(outcome, Outcome::Committed(_)) {
                *committed.entry(last.procedure).or_default() += 1;
            }
        }
        let state = runner.serial.into_state();
        tpcc.check(&state, &[]).unwrap();
        assert!(committed[NewOrder::NAME] > 500, "{committed:?}");
        assert!(committed[Payment::NAME] > 500, "{committed:?}");
        assert!(
            !committed.contains_key(CustomerByLast::NAME),
            "{committed:?}"
        );
        if mix == Mix::Standard {
            for p in [OrderStatus::NAME, Delivery::NAME, StockLevel::NAME] {
                assert!(committed[p] > 20, "{p}: {committed:?}");
            }
        }
        let audit = tpcc.audit();
        let by_last = audit.ratio(audit::BY_LAST_NAME).unwrap();
        assert!((0.5..0.7).contains(&by_last), "{by_last}");
    }
}

#[test]
fn new_order_with_an_unused_item_rolls_back() {
    let tpcc = small(1, 1, Mix::Standard);
    let registry = registry(&tpcc);
    let mut runner = Runner::new(&registry, &tpcc);
    let before = runner.serial.state().clone();
    let lines = vec![
        NewOrderLine {
            i_id: 1,
            supply_w_id: 1,
            quantity: 3,
        },
        NewOrderLine {
            i_id: tpcc.config.shape.items + 1,
            supply_w_id: 1,
            quantity: 3,
        },
    ];
    let args = NewOrderArgs {
        w: 1,
        d: 1,
        c: 1,
        lines,
        entry_d: 1,
    };
    let outcome = runner.run(&request::<NewOrder>(&args));
    assert!(
        matches!(outcome, Outcome::Aborted(Abort::User(ref why)) if why.contains("not valid")),
        "{outcome:?}"
    );
    assert!(
        runner.serial.state() == &before,
        "a rolled-back order left changes"
    );
    let mut tpcc = tpcc;
    let request = request::<NewOrder>(&args);
    assert_eq!(tpcc.follow_up(&request, answer(&outcome)), None);
    assert_eq!(tpcc.audit().ratio(audit::ROLLBACKS), Some(1.0));
}

/// TPCC.md's atomicity test: a committed Payment changes warehouse, district and customer;
/// one forced to roll back (here: a stale reconnaissance) changes none of them.
#[test]
fn payment_is_atomic_and_stale_reconnaissance_is_retried() {
    let mut tpcc = small(1, 1, Mix::Standard);
    let registry = registry(&tpcc);
    let mut runner = Runner::new(&registry, &tpcc);
    let last = last_name(0);
    let recon = Request::new(
        CustomerByLast::NAME,
        codec::encode(&CustomerByLastArgs {
            w: 1,
            d: 2,
            last: last.clone(),
        }),
    );
    let Outcome::Committed(out) = runner.run(&recon) else {
        panic!("reconnaissance aborted")
    };
    let c_id = codec::decode::<CustomerByLastOutput>(&out)
        .unwrap()
        .c_id
        .unwrap();
    let payment = |c_id| PaymentArgs {
        w: 1,
        d: 2,
        c_w: 1,
        c_d: 2,
        customer: CustomerRef::Last {
            last: last.clone(),
            c_id,
        },
        amount_cents: 12_345,
        date: 1,
    };
    let watched = [
        keys::warehouse(1),
        keys::district(1, 2),
        keys::customer(1, 2, c_id),
    ];
    let snapshot = |runner: &Runner<'_>| -> Vec<Option<Value>> {
        watched
            .iter()
            .map(|k| runner.serial.state().get(k).cloned())
            .collect()
    };

    let before = snapshot(&runner);
    let stale = request::<Payment>(&payment(c_id + 1));
    let outcome = runner.run(&stale);
    assert!(
        matches!(outcome, Outcome::Aborted(Abort::FootprintChanged(_))),
        "{outcome:?}"
    );
    assert_eq!(
        snapshot(&runner),
        before,
        "a rolled-back payment left changes"
    );

    // The session reconnoitres again and then pays the right customer.
    let mut stale = stale;
    stale.context = codec::encode(&Pending::Payment(payment(c_id + 1), 1));
    let retry = tpcc.follow_up(&stale, answer(&outcome)).expect("retried");
    assert_eq!(retry.procedure, CustomerByLast::NAME);
    let (done, outcome) = runner.session(&mut tpcc, retry);
    assert_eq!(done.procedure, Payment::NAME);
    let Outcome::Committed(out) = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(
        codec::decode::<procs::PaymentOutput>(&out).unwrap().c_id,
        c_id
    );
    let after = snapshot(&runner);
    for (i, (b, a)) in before.iter().zip(&after).enumerate() {
        assert_ne!(b, a, "{} unchanged by a committed payment", watched[i]);
    }
    tpcc.check(runner.serial.state(), &[]).unwrap();
}

#[test]
fn a_session_gives_up_after_bounded_retries() {
    let mut tpcc = small(1, 1, Mix::Standard);
    let args = PaymentArgs {
        w: 1,
        d: 1,
        c_w: 1,
        c_d: 1,
        customer: CustomerRef::Last {
            last: last_name(3),
            c_id: 9,
        },
        amount_cents: 1,
        date: 1,
    };
    let reason = Abort::FootprintChanged("test".into());
    let mut request = request::<Payment>(&args);
    request.context = codec::encode(&Pending::Payment(args, RECON_ATTEMPTS_MAX));
    assert_eq!(
        tpcc.follow_up(&request, Answer::Aborted(&reason)),
        None,
        "no retry past the bound"
    );
}

#[test]
fn the_checker_finds_broken_conditions() {
    let tpcc = small(2, 1, Mix::Standard);
    let state: BTreeMap<Key, Value> = tpcc.load().into_iter().collect();
    let break_with = |edit: &dyn Fn(&mut BTreeMap<Key, Value>)| {
        let mut broken = state.clone();
        edit(&mut broken);
        tpcc.check(&broken, &[]).unwrap_err().detail
    };
    let detail = break_with(&|s| {
        let key = keys::warehouse(2);
        let mut w: Warehouse = codec::decode(&s[&key]).unwrap();
        w.ytd_cents += 1;
        s.insert(key, codec::encode(&w));
    });
    assert!(
        detail.contains("1: W_YTD") && detail.contains("8: W_YTD"),
        "{detail}"
    );
    let first_new = tpcc.config.shape.orders - tpcc.config.shape.new_orders + 1;
    let detail = break_with(&|s| {
        s.remove(&keys::new_order(1, 3, first_new + 1));
    });
    assert!(
        detail.contains("3: district (1, 3)") && detail.contains("5: order"),
        "{detail}"
    );
    let detail = break_with(&|s| {
        let key = keys::customer(1, 4, 5);
        let mut c: Customer = codec::decode(&s[&key]).unwrap();
        c.balance_cents -= 7;
        s.insert(key, codec::encode(&c));
    });
    assert!(
        detail.contains("12: customer (1, 4, 5)") && detail.contains("10: customer (1, 4, 5)"),
        "{detail}"
    );
    let detail = break_with(&|s| {
        s.remove(&keys::order_line(2, 1, 1, 1));
    });
    assert!(
        detail.contains("4: district (2, 1)") && detail.contains("6: order (2, 1, 1)"),
        "{detail}"
    );
    // Condition 11 holds only right after loading: a delivery breaks it.
    let registry = registry(&tpcc);
    let mut runner = Runner::new(&registry, &tpcc);
    let delivery = DeliveryArgs {
        w: 1,
        carrier_id: 3,
        date: 9,
    };
    let outcome = runner.run(&request::<Delivery>(&delivery));
    assert!(matches!(outcome, Outcome::Committed(_)), "{outcome:?}");
    tpcc.check(runner.serial.state(), &[]).unwrap();
    let detail = tpcc
        .check_initial(runner.serial.state())
        .unwrap_err()
        .detail;
    assert!(detail.contains("11: district (1, 1)"), "{detail}");
}

/// The generator's remote, by-last-name, rollback and line-count rates fall inside the
/// audit bands over a long stream (answers synthesized from the arguments).
#[test]
fn generated_mix_is_inside_the_audit_bands() {
    let mut tpcc = small(8, 1, Mix::Standard);
    let items = tpcc.config.shape.items;
    let mut rng = DetRng::new(11);
    let committed = codec::encode(&CustomerByLastOutput { c_id: Some(1) });
    let delivery = codec::encode(&DeliveryOutput {
        delivered: Vec::new(),
        skipped: 0,
    });
    let user = Abort::User("item number is not valid".into());
    for _ in 0..200_000 {
        let mut request = tpcc.next_call(&mut rng);
        loop {
            let answer = match request.procedure {
                NewOrder::NAME => {
                    let a: NewOrderArgs = codec::decode(&request.args).unwrap();
                    if a.lines.iter().any(|l| l.i_id > items) {
                        Answer::Aborted(&user)
                    } else {
                        Answer::Committed(&[])
                    }
                }
                CustomerByLast::NAME => Answer::Committed(&committed),
                Delivery::NAME => Answer::Committed(&delivery),
                _ => Answer::Committed(&[]),
            };
            match tpcc.follow_up(&request, answer) {
                Some(next) => request = next,
                None => break,
            }
        }
    }
    let lines = audit_lines(&tpcc.audit(), 8, Mix::Standard);
    for line in &lines {
        assert!(line.ok, "{line:?}");
        assert!(line.measured.is_some(), "{line:?}");
    }
}

#[test]
fn nurand_stays_in_range_and_scales() {
    assert_eq!(scaled_a(8_191, 100_000, 100_000), 8_191);
    assert_eq!(scaled_a(1_023, 3_000, 3_000), 1_023);
    assert_eq!(scaled_a(255, 1_000, 1_000), 255);
    assert_eq!(scaled_a(255, 10, 1_000), 1);
    let mut rng = DetRng::new(3);
    for _ in 0..10_000 {
        let v = nurand(&mut rng, 1_023, 1, 3_000, C_ID);
        assert!((1..=3_000).contains(&v));
    }
    assert_eq!(last_name(0), "BARBARBAR");
    assert_eq!(last_name(371), "PRICALLYOUGHT");
}

#[test]
fn loading_a_part_equals_filtering_the_whole() {
    let tpcc = small(3, 3, Mix::Standard);
    let map = detflow_scheduler::PartitionMap::new(tpcc.scheme()).unwrap();
    let whole = tpcc.load();
    for p in 0..3 {
        let mine = |k: &Key| {
            matches!(map.owner(k), Ok(detflow_protocol::Owner::Replicated))
                || map.owner(k)
                    == Ok(detflow_protocol::Owner::Partition(
                        detflow_protocol::PartitionId(p),
                    ))
        };
        let part = tpcc.load_where(&mine);
        let filtered: Vec<_> = whole.iter().filter(|(k, _)| mine(k)).cloned().collect();
        assert_eq!(part, filtered, "partition {p}");
    }
}
