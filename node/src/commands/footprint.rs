//! Each node's memory and disk over a benchmark run, sampled from `/proc` and the data
//! directories, so that a long run (a soak) shows whether they stay flat.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One node process to watch: its name, pid and data directory.
#[derive(Clone, Debug)]
pub(crate) struct Watched {
    /// `node-<id>`.
    pub(crate) name: String,
    /// The process.
    pub(crate) pid: u32,
    /// Its data directory.
    pub(crate) data_dir: PathBuf,
}

/// Every node's footprint at one moment.
#[derive(Clone, Debug)]
pub(crate) struct Sample {
    /// Seconds since the run began.
    pub(crate) at_s: f64,
    /// Per node: name, resident memory in bytes (`None` once gone), data directory bytes
    /// without the archive, and the archive's bytes (which grow by design, unless
    /// `archive_retain_epochs` is set).
    pub(crate) nodes: Vec<(String, Option<u64>, u64, u64)>,
}

impl Sample {
    fn take(nodes: &[Watched], at_s: f64) -> Sample {
        Sample {
            at_s,
            nodes: nodes
                .iter()
                .map(|n| {
                    let archive = dir_bytes(&n.data_dir.join("archive"));
                    let data = dir_bytes(&n.data_dir).saturating_sub(archive);
                    (n.name.clone(), rss_bytes(n.pid), data, archive)
                })
                .collect(),
        }
    }

    /// `t=60s: node-1 RSS 140 MiB, data 250 MiB (+ archive 3 MiB); …`.
    pub(crate) fn line(&self) -> String {
        let nodes: Vec<String> = self
            .nodes
            .iter()
            .map(|(name, rss, disk, archive)| {
                let rss = rss.map_or("unknown".to_owned(), mib);
                format!(
                    "{name} RSS {rss}, data {} (+ archive {})",
                    mib(*disk),
                    mib(*archive)
                )
            })
            .collect();
        format!("t={:.0}s: {}", self.at_s, nodes.join("; "))
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.0} MiB", bytes as f64 / (1u64 << 20) as f64)
}

/// Samples every `every` in the background until [`Watcher::finish`].
pub(crate) struct Watcher {
    samples: Arc<Mutex<Vec<Sample>>>,
    task: tokio::task::JoinHandle<()>,
    nodes: Vec<Watched>,
    began: Instant,
}

impl Watcher {
    /// Starts sampling `nodes` (one sample now, then every `every`, each printed to
    /// standard error).
    pub(crate) fn start(nodes: Vec<Watched>, every: Duration) -> Watcher {
        // A benchmark measures wall time by definition.
        #[allow(clippy::disallowed_methods)]
        let began = Instant::now();
        let samples = Arc::new(Mutex::new(vec![Sample::take(&nodes, 0.0)]));
        let task = {
            let (samples, nodes) = (samples.clone(), nodes.clone());
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    let sample = Sample::take(&nodes, began.elapsed().as_secs_f64());
                    eprintln!("footprint {}", sample.line());
                    if let Ok(mut samples) = samples.lock() {
                        samples.push(sample);
                    }
                }
            })
        };
        Watcher {
            samples,
            task,
            nodes,
            began,
        }
    }

    /// Stops sampling, takes a last sample, and summarizes: first, middle and last
    /// sample, and each node's growth over the second half of the run.
    pub(crate) fn finish(self) -> Vec<String> {
        self.task.abort();
        let last = Sample::take(&self.nodes, self.began.elapsed().as_secs_f64());
        let mut samples = self.samples.lock().map(|s| s.clone()).unwrap_or_default();
        samples.push(last);
        let middle = &samples[samples.len() / 2];
        let (first, last) = (&samples[0], &samples[samples.len() - 1]);
        let mut lines = vec![
            format!("footprint {}", first.line()),
            format!("footprint {}", middle.line()),
            format!("footprint {}", last.line()),
        ];
        let growth: Vec<String> = middle
            .nodes
            .iter()
            .zip(&last.nodes)
            .map(|((name, rss0, disk0, _), (_, rss1, disk1, _))| {
                let rss = match (rss0, rss1) {
                    (Some(a), Some(b)) => percent(*a, *b),
                    _ => "unknown".into(),
                };
                format!("{name} RSS {rss}, data {}", percent(*disk0, *disk1))
            })
            .collect();
        lines.push(format!(
            "footprint growth from t={:.0}s to t={:.0}s: {}",
            middle.at_s,
            last.at_s,
            growth.join("; ")
        ));
        lines
    }
}

fn percent(from: u64, to: u64) -> String {
    if from == 0 {
        return format!("{} -> {}", mib(from), mib(to));
    }
    format!("{:+.0}%", 100.0 * (to as f64 - from as f64) / from as f64)
}

/// Resident memory of `pid`, from `/proc/<pid>/status`; `None` off Linux or once gone.
fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The bytes of every file under `dir` (0 if it cannot be read).
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            Ok(_) => e.metadata().map_or(0, |m| m.len()),
            Err(_) => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_a_footprint_and_a_directory_its_size() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        std::fs::create_dir(dir.path().join("sub")).expect("a subdirectory");
        std::fs::write(dir.path().join("sub/a"), [0u8; 1000]).expect("a file");
        std::fs::write(dir.path().join("b"), [0u8; 24]).expect("a file");
        assert_eq!(dir_bytes(dir.path()), 1024);
        assert!(rss_bytes(std::process::id()).is_some_and(|b| b > 0));
        assert_eq!(rss_bytes(u32::MAX), None);
        assert_eq!(percent(100, 150), "+50%");
    }
}
