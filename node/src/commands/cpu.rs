//! Each process's CPU over a benchmark run, read from `/proc`, so that a run shows whether
//! the load driver or a node was what limited it.

use std::time::Instant;

/// CPU time used so far by the driver (this process) and each node process.
pub(crate) struct CpuSample {
    at: Instant,
    /// (name, CPU seconds), `None` where the process could not be read.
    used: Vec<(String, Option<f64>)>,
}

impl CpuSample {
    /// Reads the CPU time of this process ("driver") and of each `(name, pid)`.
    pub(crate) fn take(nodes: &[(String, u32)]) -> CpuSample {
        // A benchmark measures wall time by definition.
        #[allow(clippy::disallowed_methods)]
        let at = Instant::now();
        let mut used = vec![("driver".to_owned(), cpu_seconds("self"))];
        used.extend(
            nodes
                .iter()
                .map(|(name, pid)| (name.clone(), cpu_seconds(&pid.to_string()))),
        );
        CpuSample { at, used }
    }

    /// Each process's share of one core between `earlier` and this sample, as a line such
    /// as `CPU (2 cores = 200%): driver 31%, node-1 62%, …`.
    pub(crate) fn since(&self, earlier: &CpuSample) -> String {
        let wall = self.at.duration_since(earlier.at).as_secs_f64().max(1e-9);
        let shares: Vec<String> = self
            .used
            .iter()
            .map(|(name, now)| {
                let before = earlier.used.iter().find(|(n, _)| n == name);
                match (now, before.and_then(|(_, b)| *b)) {
                    (Some(now), Some(before)) => {
                        format!("{name} {:.0}%", 100.0 * (now - before) / wall)
                    }
                    _ => format!("{name} unknown"),
                }
            })
            .collect();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        format!(
            "CPU ({cores} cores = {}%): {}",
            100 * cores,
            shares.join(", ")
        )
    }
}

/// User plus system CPU seconds of process `pid` ("self" for this one), from
/// `/proc/<pid>/stat`; `None` off Linux or once the process is gone.
fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count from after
    // its closing one. utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let ticks = rustix::param::clock_ticks_per_second();
    Some((utime + stime) as f64 / ticks as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_uses_cpu_and_a_missing_one_is_unknown() {
        let before = CpuSample::take(&[("gone".into(), u32::MAX)]);
        let start = cpu_seconds("self").expect("this process's CPU time");
        // Spin until the kernel has charged a clock tick or two to this process.
        let mut x = 0u64;
        #[allow(clippy::disallowed_methods)]
        let began = Instant::now();
        while cpu_seconds("self").is_some_and(|s| s <= start + 0.02)
            && began.elapsed().as_secs() < 10
        {
            for i in 0..100_000u64 {
                x = std::hint::black_box(x.wrapping_add(i * i));
            }
        }
        let after = CpuSample::take(&[("gone".into(), u32::MAX)]);
        let line = after.since(&before);
        assert!(
            line.starts_with("CPU (") && line.contains("driver "),
            "{line}"
        );
        assert!(
            !line.contains("driver 0%") && !line.contains("driver unknown"),
            "{line}"
        );
        assert!(line.contains("gone unknown"), "{line}");
    }
}
