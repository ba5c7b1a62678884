//! `detflow checkpoint`: a checkpoint of every partition after one epoch, on demand.

use crate::cli::CheckpointArgs;
use anyhow::{Result, bail};
use detflow_client::{CheckpointAnswer, Client};
use detflow_protocol::Epoch;
use std::collections::BTreeMap;

/// How far past the highest commit epoch a checkpoint is asked for by default: far enough
/// that no replica applied it before the request reaches it (about a second at a few
/// hundred epochs a second), near enough not to wait long.
const AHEAD_EPOCHS: u64 = 200;

/// Asks every node for the checkpoint; `Ok(false)` unless every partition answered has a
/// replica that will take it and every node answered.
pub(crate) async fn run(args: &CheckpointArgs) -> Result<bool> {
    let connect = &args.connect;
    let client = Client::connect(
        connect.connect.clone(),
        super::operator_tls(&connect.certs)?,
    )
    .await?;
    let at = match args.at {
        Some(at) => Epoch(at),
        None => {
            let commit = (client.status().await.into_iter())
                .filter_map(|(_, s)| Some(s.ok()?.replica?.2.0))
                .max();
            let Some(commit) = commit else {
                bail!("no node answered with its commit epoch; give --at");
            };
            Epoch(commit + AHEAD_EPOCHS)
        }
    };
    let mut ok = true;
    // Per partition, whether some replica will take it.
    let mut scheduled: BTreeMap<u32, bool> = BTreeMap::new();
    for (addr, answer) in client.checkpoint(at).await {
        match answer {
            Ok(answers) => {
                for (partition, answer) in answers {
                    let said = match &answer {
                        CheckpointAnswer::Scheduled => "scheduled".to_string(),
                        CheckpointAnswer::TooLate { applied } => {
                            format!("too late: it applied epoch {applied} already")
                        }
                        CheckpointAnswer::Refused(why) => format!("refused: {why}"),
                    };
                    println!("{addr}: partition {partition}: {said}");
                    *scheduled.entry(partition.0).or_default() |=
                        answer == CheckpointAnswer::Scheduled;
                }
            }
            Err(e) => {
                println!("{addr}: no answer: {e}");
                ok = false;
            }
        }
    }
    let missing: Vec<u32> = (scheduled.iter())
        .filter(|(_, s)| !**s)
        .map(|(p, _)| *p)
        .collect();
    if !missing.is_empty() {
        println!("partitions {missing:?}: no replica will checkpoint after epoch {at}");
        ok = false;
    }
    if ok {
        println!(
            "every partition answered ({}) checkpoints after epoch {at}, into each node's \
             archive (checkpoints/{:020}/)",
            scheduled.len(),
            at.0
        );
    }
    Ok(ok)
}
