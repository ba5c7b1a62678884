//! Letters between services (see [`detflow_protocol::mailbox`]): posting a committed
//! transaction's letters to its partition's outbox, executing a delivery, and the outbox
//! state with which an executor decides when to ask for the next delivery.

use crate::registry::Registry;
use crate::store::Store;
use crate::system::decode_record;
use crate::txn::Txn;
use detflow_protocol::mailbox::{
    DELIVER_PROCEDURE, Delivery, Letter, MailboxMark, letter_key, letters_prefix, mark_key,
    next_letter_key,
};
use detflow_protocol::{AbortReason, Key, Outcome, PartitionId, Time, Value, codec};

/// The most letters one delivery carries; a gateway may carry fewer, to keep the
/// delivery's footprint within its limit.
pub const DELIVERY_LETTERS_MAX: usize = 64;

/// How long an executor waits for a requested delivery to be executed before it asks
/// again (the request or the transaction may have been lost with a gateway or a leader).
pub const DELIVERY_RETRY_US: u64 = 1_000_000;

/// Records to write to a store.
pub(crate) type Records = Vec<(Key, Value)>;

/// The records that post `letters` to `from`'s outbox, numbered from `next`: each letter,
/// then the new next number. Returns the records and the numbered letters.
pub(crate) fn post(
    from: PartitionId,
    next: u64,
    letters: Vec<Letter>,
) -> (Records, Vec<(u64, Letter)>) {
    let numbered: Vec<(u64, Letter)> = (next..).zip(letters).collect();
    let mut records: Vec<(Key, Value)> = numbered
        .iter()
        .map(|(seq, letter)| (letter_key(from, *seq), codec::encode(letter)))
        .collect();
    let after = next + numbered.len() as u64;
    records.push((next_letter_key(from), codec::encode(&after)));
    (records, numbered)
}

/// Checks the letters a committed transaction sent: each must name a procedure the
/// cluster runs, with arguments that give a footprint, or the sender aborts.
pub(crate) fn check_letters(registry: &Registry, letters: &[Letter]) -> Result<(), AbortReason> {
    for letter in letters {
        registry
            .footprint(&letter.procedure, &letter.args)
            .map_err(|rejection| AbortReason::BadLetter {
                procedure: letter.procedure.clone(),
                reason: rejection.to_string(),
            })?;
    }
    Ok(())
}

/// Executes a delivery: consumes its letters that the outbox's mark has not passed, each
/// checked against the outbox and run as a sub-transaction of its own footprint (an abort
/// rolls back that letter alone, which is consumed all the same), then advances the mark.
/// The output is each consumed letter's outcome, in order.
pub(crate) fn deliver(
    registry: &Registry,
    tx: &mut Txn<'_>,
    args: &[u8],
) -> Result<Vec<u8>, AbortReason> {
    let delivery: Delivery = codec::decode(args).map_err(|e| AbortReason::BadArgs(e.0))?;
    let from = delivery.from;
    let mark: MailboxMark = tx.get_as(&mark_key(from))?.unwrap_or_default();
    let mut outcomes: Vec<Outcome> = Vec::new();
    if delivery.batch <= mark.batches {
        // Ordered again (a retry whose first attempt got through): nothing left to do.
        return Ok(codec::encode(&outcomes));
    }
    if delivery.first == 0 || delivery.first > mark.delivered + 1 {
        return Err(AbortReason::BadLetter {
            procedure: DELIVER_PROCEDURE.to_owned(),
            reason: format!(
                "letters of partition {from} from {} would skip letters after {}",
                delivery.first, mark.delivered
            ),
        });
    }
    let mut delivered = mark.delivered;
    for (i, letter) in delivery.letters.iter().enumerate() {
        let seq = delivery.first + i as u64;
        if seq <= delivered {
            continue;
        }
        let key = letter_key(from, seq);
        if tx.get_as::<Letter>(&key)?.as_ref() != Some(letter) {
            return Err(AbortReason::BadLetter {
                procedure: letter.procedure.clone(),
                reason: format!("letter {seq} of partition {from} is not in its outbox as sent"),
            });
        }
        let outcome = match delivery.refused.get(&(i as u32)) {
            Some(reason) => Outcome::Aborted(AbortReason::BadLetter {
                procedure: letter.procedure.clone(),
                reason: reason.clone(),
            }),
            None => run_letter(registry, tx, letter),
        };
        tx.delete(&key)?;
        tx.consume(from, seq);
        delivered = seq;
        outcomes.push(outcome);
    }
    let mark = MailboxMark {
        delivered,
        batches: delivery.batch,
    };
    tx.put_as(mark_key(from), &mark)?;
    Ok(codec::encode(&outcomes))
}

/// Runs one letter inside the delivery, confined to its own footprint.
fn run_letter(registry: &Registry, tx: &mut Txn<'_>, letter: &Letter) -> Outcome {
    let footprint = match registry.footprint(&letter.procedure, &letter.args) {
        Ok(footprint) => footprint,
        Err(rejection) => {
            return Outcome::Aborted(AbortReason::BadLetter {
                procedure: letter.procedure.clone(),
                reason: rejection.to_string(),
            });
        }
    };
    let run = tx.nested(&footprint, |sub| {
        let output = registry.execute(&letter.procedure, sub, &letter.args)?;
        // The letters it sends in turn are checked here, so that a bad one aborts this
        // letter alone rather than the delivery (which would block the outbox).
        check_letters(registry, sub.letters())?;
        Ok(output)
    });
    match run {
        Ok(output) => Outcome::Committed(output),
        Err(reason) => Outcome::Aborted(reason),
    }
}

/// A delivery asked for and not yet seen executed.
#[derive(Clone, Copy, Debug)]
struct Requested {
    batch: u64,
    at: Time,
}

/// One partition's outbox as its executor tracks it: the letters posted, how far they
/// were consumed, and the delivery in flight. Rebuilt from the store on restart.
#[derive(Debug)]
pub(crate) struct Outbox {
    partition: PartitionId,
    /// The number the next posted letter gets.
    next: u64,
    /// The mark as of the last applied epoch.
    mark: MailboxMark,
    requested: Option<Requested>,
}

impl Outbox {
    /// The outbox of `partition` as `store` holds it.
    pub(crate) fn load<S: Store>(partition: PartitionId, store: &S) -> Outbox {
        let mut outbox = Outbox {
            partition,
            next: 1,
            mark: MailboxMark::default(),
            requested: None,
        };
        if let Some(bytes) = store.get(&next_letter_key(partition)) {
            outbox.next = decode_record(&next_letter_key(partition), &bytes);
        }
        outbox.read_mark(store);
        outbox
    }

    /// Numbers `letters` after those posted before: the records to write.
    pub(crate) fn post(&mut self, letters: Vec<Letter>) -> Records {
        let (records, numbered) = post(self.partition, self.next, letters);
        self.next += numbered.len() as u64;
        records
    }

    /// Letters posted and not consumed as of the last refresh.
    pub(crate) fn pending(&self) -> u64 {
        self.next - 1 - self.mark.delivered
    }

    /// Rereads the mark, which deliveries advance. Only a delivery of this outbox's letters
    /// moves it, so with none pending there is nothing to read.
    pub(crate) fn refresh<S: Store>(&mut self, store: &S) {
        if self.pending() > 0 {
            self.read_mark(store);
        }
    }

    fn read_mark<S: Store>(&mut self, store: &S) {
        let key = mark_key(self.partition);
        if let Some(bytes) = store.get(&key) {
            self.mark = decode_record(&key, &bytes);
        }
    }

    /// The delivery to ask for now, if any: the oldest unconsumed letters, unless a
    /// delivery asked for less than [`DELIVERY_RETRY_US`] ago (or ever, without `retry`)
    /// has not been executed yet.
    pub(crate) fn poll<S: Store>(&mut self, now: Time, store: &S, retry: bool) -> Option<Delivery> {
        if self.pending() == 0 {
            self.requested = None;
            return None;
        }
        let batch = self.mark.batches + 1;
        if let Some(r) = self.requested
            && r.batch == batch
            && (!retry || now.since_us(r.at) < DELIVERY_RETRY_US)
        {
            return None;
        }
        let first = self.mark.delivered + 1;
        let count = self.pending().min(DELIVERY_LETTERS_MAX as u64) as usize;
        let prefix = letters_prefix(self.partition);
        let rows = store.scan_from(&prefix, &letter_key(self.partition, first), count);
        let letters: Vec<Letter> = (first..)
            .zip(&rows)
            .map(|(seq, (key, bytes))| {
                assert_eq!(
                    *key,
                    letter_key(self.partition, seq),
                    "outbox of partition {} lost letter {seq}",
                    self.partition
                );
                decode_record(key, bytes)
            })
            .collect();
        assert_eq!(
            letters.len(),
            count,
            "outbox of partition {} lost letters after {first}",
            self.partition
        );
        self.requested = Some(Requested { batch, at: now });
        Some(Delivery {
            from: self.partition,
            batch,
            first,
            letters,
            refused: Default::default(),
        })
    }

    /// When the delivery in flight is asked for again.
    pub(crate) fn deadline(&self) -> Option<Time> {
        let r = self.requested?;
        (self.pending() > 0).then(|| r.at.plus_us(DELIVERY_RETRY_US))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serial::SerialExecutor;
    use crate::{Procedure, Service};
    use detflow_protocol::{ClientId, Footprint, NodeId, RequestSeq, Transaction};
    use std::collections::BTreeMap;

    fn counter(n: u64) -> Key {
        Key::table("counter").u64(n)
    }

    /// Adds one to counter `n`; aborts for counter 13.
    struct Bump;

    impl Procedure for Bump {
        const NAME: &'static str = "counters.bump";
        type Args = u64;
        type Output = u64;

        fn footprint(n: &u64) -> Footprint {
            Footprint::new().write(counter(*n))
        }

        fn execute(tx: &mut Txn<'_>, n: u64) -> Result<u64, AbortReason> {
            let v = tx.get_as::<u64>(&counter(n))?.unwrap_or(0) + 1;
            tx.put_as(counter(n), &v)?;
            if n == 13 {
                return Err(AbortReason::User("unlucky".into()));
            }
            Ok(v)
        }
    }

    /// Sends a bump letter for each counter it is given.
    struct Fanout;

    impl Procedure for Fanout {
        const NAME: &'static str = "senders.fanout";
        type Args = Vec<u64>;
        type Output = ();

        fn footprint(_: &Vec<u64>) -> Footprint {
            Footprint::new()
        }

        fn execute(tx: &mut Txn<'_>, ns: Vec<u64>) -> Result<(), AbortReason> {
            ns.iter().try_for_each(|n| tx.send::<Bump>(n))
        }
    }

    /// Sends a letter to a procedure nobody registered.
    struct Stray;

    impl Procedure for Stray {
        const NAME: &'static str = "senders.stray";
        type Args = ();
        type Output = ();

        fn footprint(_: &()) -> Footprint {
            Footprint::new()
        }

        fn execute(tx: &mut Txn<'_>, _: ()) -> Result<(), AbortReason> {
            tx.send::<Unregistered>(&())
        }
    }

    struct Unregistered;

    impl Procedure for Unregistered {
        const NAME: &'static str = "nobody.home";
        type Args = ();
        type Output = ();

        fn footprint(_: &()) -> Footprint {
            Footprint::new()
        }

        fn execute(_: &mut Txn<'_>, _: ()) -> Result<(), AbortReason> {
            Ok(())
        }
    }

    fn registry() -> Registry {
        let mut registry = Registry::new();
        let counters = Service::new("counters")
            .table(crate::Table::new("counter"))
            .procedure::<Bump>();
        let senders = Service::new("senders")
            .procedure::<Fanout>()
            .procedure::<Stray>();
        registry.add_service(counters).unwrap();
        registry.add_service(senders).unwrap();
        registry
    }

    fn call(procedure: &str, args: Vec<u8>, footprint: Footprint, seq: u64) -> Transaction {
        Transaction {
            client: ClientId(1),
            seq: RequestSeq(seq),
            gateway: NodeId(0),
            procedure: procedure.to_owned(),
            args,
            footprint,
        }
    }

    /// The delivery transaction a gateway would build for `delivery`.
    fn delivery_txn(registry: &Registry, delivery: &Delivery, seq: u64) -> Transaction {
        let mut footprint = Footprint::new().write(mark_key(delivery.from));
        for (i, letter) in delivery.letters.iter().enumerate() {
            footprint = footprint.write(letter_key(delivery.from, delivery.first + i as u64));
            let own = registry.footprint(&letter.procedure, &letter.args).unwrap();
            own.entries
                .into_iter()
                .for_each(|(spec, access)| footprint.add(spec, access));
        }
        call(DELIVER_PROCEDURE, codec::encode(delivery), footprint, seq)
    }

    fn letter(n: u64) -> Letter {
        Letter {
            procedure: Bump::NAME.into(),
            args: codec::encode(&n),
        }
    }

    fn value(serial: &SerialExecutor<'_>, n: u64) -> Option<u64> {
        serial
            .state()
            .get(&counter(n))
            .map(|v| codec::decode(v).unwrap())
    }

    #[test]
    fn letters_are_consumed_once_in_order_and_an_abort_rolls_back_its_letter_alone() {
        let registry = registry();
        let mut serial = SerialExecutor::new(&registry, BTreeMap::new());
        let p = PartitionId(2);
        let send = call(
            Fanout::NAME,
            codec::encode(&vec![1u64, 13, 1]),
            Footprint::new(),
            1,
        );
        let sent = serial.execute_posting(&send, None, || p);
        assert_eq!(sent.outcome, Outcome::Committed(codec::encode_named(&())));
        let numbers: Vec<u64> = sent.sent.iter().map(|(seq, _)| *seq).collect();
        assert_eq!(numbers, [1, 2, 3]);
        assert_eq!(
            value(&serial, 1),
            None,
            "a letter runs later, not in its sender"
        );

        let delivery = Delivery {
            from: p,
            batch: 1,
            first: 1,
            letters: vec![letter(1), letter(13), letter(1)],
            refused: BTreeMap::new(),
        };
        let txn = delivery_txn(&registry, &delivery, 1);
        let done = serial.execute_posting(&txn, None, || p);
        assert_eq!(done.consumed, [(p, 1), (p, 2), (p, 3)]);
        let Outcome::Committed(out) = done.outcome else {
            panic!("{:?}", done.outcome)
        };
        let outcomes: Vec<Outcome> = codec::decode(&out).unwrap();
        assert!(matches!(
            outcomes[1],
            Outcome::Aborted(AbortReason::User(_))
        ));
        assert_eq!(value(&serial, 1), Some(2));
        assert_eq!(value(&serial, 13), None, "the aborted letter wrote nothing");
        assert!(!serial.state().contains_key(&letter_key(p, 1)));

        // Ordered again: consumes nothing.
        let again = serial.execute_posting(&txn, None, || p);
        assert!(again.consumed.is_empty());
        assert_eq!(value(&serial, 1), Some(2));
    }

    #[test]
    fn a_delivery_must_match_the_outbox() {
        let registry = registry();
        let mut serial = SerialExecutor::new(&registry, BTreeMap::new());
        let p = PartitionId(0);
        let send = call(
            Fanout::NAME,
            codec::encode(&vec![4u64]),
            Footprint::new(),
            1,
        );
        serial.execute_posting(&send, None, || p);
        let forged = Delivery {
            from: p,
            batch: 1,
            first: 1,
            letters: vec![letter(5)],
            refused: BTreeMap::new(),
        };
        let done = serial.execute_posting(&delivery_txn(&registry, &forged, 1), None, || p);
        assert!(matches!(
            done.outcome,
            Outcome::Aborted(AbortReason::BadLetter { .. })
        ));
        let gap = Delivery {
            first: 2,
            letters: vec![letter(4)],
            ..forged
        };
        let done = serial.execute_posting(&delivery_txn(&registry, &gap, 1), None, || p);
        assert!(matches!(
            done.outcome,
            Outcome::Aborted(AbortReason::BadLetter { .. })
        ));
        assert_eq!(value(&serial, 4), None);
    }

    #[test]
    fn a_letter_to_a_procedure_nobody_runs_aborts_its_sender() {
        let registry = registry();
        let mut serial = SerialExecutor::new(&registry, BTreeMap::new());
        let send = call(Stray::NAME, codec::encode(&()), Footprint::new(), 1);
        let done = serial.execute_posting(&send, None, || PartitionId(0));
        assert_eq!(
            done.outcome,
            Outcome::Aborted(AbortReason::BadLetter {
                procedure: "nobody.home".into(),
                reason: "unknown procedure \"nobody.home\"".into(),
            })
        );
        assert!(done.sent.is_empty());
    }

    #[test]
    fn the_outbox_asks_again_only_after_the_retry_delay() {
        let mut store = crate::MemStore::new();
        let p = PartitionId(1);
        let (records, _) = post(p, 1, vec![letter(1), letter(2)]);
        for (k, v) in records {
            store.put(k, v);
        }
        let mut outbox = Outbox::load(p, &store);
        assert_eq!(outbox.pending(), 2);
        let first = outbox.poll(Time(0), &store, true).expect("a delivery");
        assert_eq!((first.batch, first.first, first.letters.len()), (1, 1, 2));
        assert!(outbox.poll(Time(1_000), &store, true).is_none());
        assert_eq!(outbox.deadline(), Some(Time(DELIVERY_RETRY_US)));
        assert!(
            outbox
                .poll(Time(DELIVERY_RETRY_US), &store, false)
                .is_none()
        );
        let retry = outbox.poll(Time(DELIVERY_RETRY_US), &store, true).unwrap();
        assert_eq!(retry, first);
        store.put(
            mark_key(p),
            codec::encode(&MailboxMark {
                delivered: 2,
                batches: 1,
            }),
        );
        outbox.refresh(&store);
        assert_eq!(outbox.pending(), 0);
        assert!(
            outbox
                .poll(Time(DELIVERY_RETRY_US + 1), &store, true)
                .is_none()
        );
        assert_eq!(outbox.deadline(), None);
    }
}
