//! Calls the workload made are never refused or aborted as malformed or unplaceable; the
//! malformed calls the simulator plants are never ordered.
//!
//! The workload's generator and follow-ups make well-formed calls by construction: a
//! registered procedure, arguments that decode, a footprint of well-formed keys that the
//! workload's own partition scheme places. The only calls that may be refused for their
//! form are the ones the simulator corrupts on purpose (`World::on_client_wake`): the
//! procedure renamed to [`PLANTED_PROCEDURE`], or the arguments replaced by
//! [`PLANTED_ARGS`]. So a generated call refused before ordering for its arguments,
//! procedure or footprint, or aborted for routing or its footprint, is a bug of the
//! system (a gateway check, the router, the executor's footprint check) and never a
//! legitimate outcome.
//!
//! A refusal before ordering leaves no trace in the log, so no other checker can see it:
//! serial equivalence judges ordered transactions only, and a refused transfer conserves
//! the bank's total.

use crate::world::{CallRecord, Outcome};
use detflow_protocol::CallId;
use detflow_protocol::message::{Rejection, Reply};
use detflow_protocol::{AbortReason, Outcome as TxnOutcome};
use std::collections::BTreeMap;

/// The procedure name of a planted malformed call: registered by no workload.
pub(crate) const PLANTED_PROCEDURE: &str = "no.such.procedure";

/// The arguments of a planted malformed call: `0xc1` is the one byte MessagePack never
/// uses, so no procedure's arguments encode to it.
pub(crate) const PLANTED_ARGS: &[u8] = &[0xc1];

pub(crate) fn check(run: &Outcome) -> Vec<String> {
    check_calls(&run.calls)
}

fn check_calls(calls: &BTreeMap<CallId, CallRecord>) -> Vec<String> {
    let mut failures = Vec::new();
    for (CallId { client, seq }, record) in calls {
        let planted = record.procedure == PLANTED_PROCEDURE || record.args == PLANTED_ARGS;
        let call = format!(
            "call (client {client}, seq {seq}) to {:?}",
            record.procedure
        );
        // Every answer, not just the first: a retry answered differently is the
        // exactly-once checker's finding, and this one should still name the reason.
        for reply in &record.replies {
            match reply {
                Reply::Done { position, .. } if planted => failures.push(format!(
                    "{call} was planted malformed, yet ordered at {position}: the gateway must refuse it"
                )),
                Reply::Rejected(rejection) if !planted && refuses_form(rejection) => failures
                    .push(format!(
                        "{call} is a valid call the workload made, yet was refused before ordering: {rejection}"
                    )),
                Reply::Done {
                    position,
                    outcome: TxnOutcome::Aborted(reason),
                } if !planted && aborts_form(reason) => failures.push(format!(
                    "{call} is a valid call the workload made, yet aborted at {position}: {reason}"
                )),
                Reply::Done { .. } | Reply::Rejected(_) | Reply::Unavailable => {}
            }
        }
    }
    failures
}

/// Refusals that say the call is malformed or its footprint is unacceptable. (Size,
/// authorization, session and load refusals are about the caller or the moment.)
fn refuses_form(rejection: &Rejection) -> bool {
    match rejection {
        Rejection::BadArgs(_)
        | Rejection::BadKey(_)
        | Rejection::FootprintTooLarge { .. }
        | Rejection::ForeignTable { .. }
        | Rejection::UnknownProcedure(_) => true,
        Rejection::CallTooLarge { .. }
        | Rejection::ForeignSession(_)
        | Rejection::Overloaded(_)
        | Rejection::Unauthorized(_) => false,
    }
}

/// Aborts that say the call is malformed (its arguments, its procedure, a key it names),
/// cannot be routed, or broke its footprint. (The others are the procedure's own
/// business: user aborts, overflow, the values it read or wrote.)
fn aborts_form(reason: &AbortReason) -> bool {
    match reason {
        AbortReason::BadArgs(_)
        | AbortReason::BadKey(_)
        | AbortReason::OutsideFootprint { .. }
        | AbortReason::ReplicatedWrite { .. }
        | AbortReason::UnknownProcedure(_)
        | AbortReason::Unroutable(_) => true,
        AbortReason::BadLetter { .. }
        | AbortReason::BadValue { .. }
        | AbortReason::FootprintChanged(_)
        | AbortReason::Overflow(_)
        | AbortReason::Panicked(_)
        | AbortReason::User(_)
        | AbortReason::ValueTooLarge { .. } => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use detflow_protocol::{ClientId, Epoch, Key, Position, RequestSeq};

    fn record(procedure: &str, args: &[u8], reply: Reply) -> CallRecord {
        CallRecord {
            procedure: procedure.to_owned(),
            args: args.to_vec(),
            replies: vec![reply],
            attempts: 1,
            issued: detflow_protocol::Time::ZERO,
        }
    }

    fn done(outcome: TxnOutcome) -> Reply {
        Reply::Done {
            position: Position::new(Epoch(2), 0),
            outcome,
        }
    }

    fn failures(records: Vec<CallRecord>) -> Vec<String> {
        let calls = records
            .into_iter()
            .enumerate()
            .map(|(i, r)| (CallId::new(ClientId(i as u64), RequestSeq(1)), r))
            .collect();
        check_calls(&calls)
    }

    #[test]
    fn valid_calls_refused_or_aborted_for_their_form_are_caught() {
        let args = [0x91, 0x01];
        let found = failures(vec![
            record(
                "bank.transfer",
                &args,
                Reply::Rejected(Rejection::FootprintTooLarge { entries: 2, max: 1 }),
            ),
            record(
                "bank.transfer",
                &args,
                Reply::Rejected(Rejection::BadKey("x".into())),
            ),
            record(
                "bank.transfer",
                &args,
                done(TxnOutcome::Aborted(AbortReason::Unroutable("x".into()))),
            ),
            record(
                "tpcc.new_order",
                &args,
                done(TxnOutcome::Aborted(AbortReason::ReplicatedWrite {
                    key: Key::table("item").u64(1),
                })),
            ),
            record(
                "kv.txn",
                &args,
                done(TxnOutcome::Aborted(AbortReason::OutsideFootprint {
                    key: Key::table("kv").u64(1),
                    write: true,
                })),
            ),
        ]);
        assert_eq!(found.len(), 5, "{found:#?}");
        assert!(found.iter().all(|f| f.contains("valid call")), "{found:#?}");
    }

    #[test]
    fn planted_calls_may_be_refused_but_never_ordered() {
        let refused = failures(vec![
            record(
                PLANTED_PROCEDURE,
                &[0x90],
                Reply::Rejected(Rejection::UnknownProcedure(PLANTED_PROCEDURE.into())),
            ),
            record(
                "bank.transfer",
                PLANTED_ARGS,
                Reply::Rejected(Rejection::BadArgs("x".into())),
            ),
        ]);
        assert!(refused.is_empty(), "{refused:#?}");
        let ordered = failures(vec![record(
            "bank.transfer",
            PLANTED_ARGS,
            done(TxnOutcome::Aborted(AbortReason::BadArgs("x".into()))),
        )]);
        assert_eq!(ordered.len(), 1, "{ordered:#?}");
        assert!(ordered[0].contains("planted malformed"), "{ordered:#?}");
    }

    #[test]
    fn the_procedures_own_aborts_and_other_refusals_pass() {
        let found = failures(vec![
            record(
                "bank.transfer",
                &[0x90],
                done(TxnOutcome::Aborted(AbortReason::User("funds".into()))),
            ),
            record(
                "tpcc.payment",
                &[0x90],
                done(TxnOutcome::Aborted(AbortReason::FootprintChanged(
                    "x".into(),
                ))),
            ),
            record(
                "bank.transfer",
                &[0x90],
                Reply::Rejected(Rejection::Overloaded("x".into())),
            ),
            record(
                "bank.transfer",
                &[0x90],
                done(TxnOutcome::Committed(vec![])),
            ),
        ]);
        assert!(found.is_empty(), "{found:#?}");
    }
}
