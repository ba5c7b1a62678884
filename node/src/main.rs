//! `detflow`: run nodes, a local demo cluster, calls and benchmarks.

fn main() {
    eprintln!("detflow: not yet implemented");
    std::process::exit(2);
}
