//! `detflow`: run nodes, a local demo cluster, single calls, status and benchmarks, with
//! the built-in services. The command line lives in the library
//! ([`detflow_node::NodeBuilder::main`]) so that an application's own binary, with its
//! services added, is the same tool.

use std::process::ExitCode;

/// mimalloc rather than glibc's malloc: messages, batches and rows are allocated and freed
/// across threads at a high rate (malloc and free were ~7% of a TPC-C profile).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    detflow_node::NodeBuilder::new().main()
}
