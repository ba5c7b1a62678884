//! The audit: re-executing the run's log from its initial rows (`detflow_replay`) gives,
//! after every epoch, each partition's state digest; every replica must have had that
//! digest after that epoch. This is what `detflow audit` does to a cluster, judged here
//! against every replica of every epoch; the first divergence is reported with its epoch
//! and partition.

use crate::world::Outcome;
use detflow_protocol::{Epoch, PartitionId};
use detflow_replay::Replayer;

pub(crate) fn check(run: &Outcome) -> Vec<String> {
    let initial = run.initial.iter().cloned().collect();
    let mut replayer = Replayer::new(&run.registry, run.map.clone(), initial);
    for batch in &run.log {
        if let Err(e) = replayer.apply(batch) {
            return vec![format!("audit: the log does not replay: {e}")];
        }
        for (p, expected) in replayer.digests().iter().enumerate() {
            let key = (PartitionId(p as u32), batch.epoch);
            for (replica, digest) in run.digests.get(&key).into_iter().flatten() {
                if digest != expected {
                    return vec![divergence(*replica, batch.epoch, *digest, *expected)];
                }
            }
        }
    }
    Vec::new()
}

fn divergence(
    replica: detflow_protocol::ExecutorId,
    epoch: Epoch,
    digest: detflow_executor::StateDigest,
    expected: detflow_executor::StateDigest,
) -> String {
    format!(
        "audit: replica {replica} had the state digest {digest} after epoch {epoch}, but \
         re-executing the log gives {expected}"
    )
}
