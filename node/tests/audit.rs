//! `detflow audit` on a stopped node: its partitions match the re-execution of its log
//! after a bank run, and a value changed on disk afterwards is reported with its partition.

#![allow(clippy::unwrap_used)] // test helpers fail the test on any error

use std::path::Path;
use std::process::{Command, Output};

fn detflow(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_detflow"))
        .args(args)
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Overwrites the value of the first user row of the store in `dir` behind detflow's back,
/// as a failing disk (or a hand) would.
fn change_a_row(dir: &Path) {
    let db = fjall::Database::builder(dir).open().unwrap();
    let user = db
        .keyspace("user", fjall::KeyspaceCreateOptions::default)
        .unwrap();
    let (key, value) = user.iter().next().unwrap().into_inner().unwrap();
    let mut changed = value.to_vec();
    changed.push(0);
    user.insert(key, changed).unwrap();
    db.persist(fjall::PersistMode::SyncAll).unwrap();
}

#[test]
fn audit_matches_the_log_and_finds_a_changed_row() {
    let folder = tempfile::tempdir().unwrap();
    let cluster = folder.path().join("cluster");
    let cluster_arg = cluster.to_str().unwrap();
    let out = detflow(&[
        "demo",
        "--workload",
        "bank",
        "--duration",
        "3s",
        "--clients",
        "8",
        "--keep",
        cluster_arg,
    ]);
    assert!(out.status.success(), "demo failed: {}", text(&out));
    let config = cluster.join("node-1.toml");
    let config_arg = config.to_str().unwrap();

    let out = detflow(&["audit", "--config", config_arg]);
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    let matched = shown
        .matches("its rows match the log's re-execution")
        .count();
    assert!(matched >= 1, "{shown}");
    assert!(!shown.contains("DIVERGES"), "{shown}");
    println!("{shown}");

    // A partition of node 1 whose row is changed on disk diverges; the others still match.
    let partitions: Vec<_> = std::fs::read_dir(cluster.join("node-1"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("partition-"))
        })
        .collect();
    let victim = &partitions[0];
    let name = victim.file_name().unwrap().to_str().unwrap().to_owned();
    change_a_row(victim);
    let out = detflow(&["audit", "--config", config_arg]);
    let shown = text(&out);
    assert_eq!(out.status.code(), Some(1), "{shown}");
    let id = name.trim_start_matches("partition-");
    assert!(
        shown.contains(&format!("partition {id}: DIVERGES after epoch")),
        "{shown}"
    );
    assert_eq!(shown.matches("DIVERGES").count(), 1, "{shown}");
    // The changed row is named (its recorded digests, computed before, all match).
    assert!(shown.contains("keys that differ: (\"acct\""), "{shown}");
    assert!(shown.contains("recorded state digests match"), "{shown}");
    println!("{shown}");

    // Errors are explained, not panicked on.
    let out = detflow(&["audit", "--config", "/nonexistent/node.toml"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("/nonexistent/node.toml"),
        "{}",
        text(&out)
    );
}
