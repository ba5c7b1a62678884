//! The shop's node: the `detflow` command line with the shop's services compiled in. Every
//! command works as with `detflow` (`shop-node node --config …`, `shop-node certs`,
//! `shop-node status`, …); a cluster of these runs the shop's procedures.

use std::process::ExitCode;

fn main() -> ExitCode {
    detflow_example_shop::services()
        .into_iter()
        .fold(detflow_node::NodeBuilder::new(), |builder, service| {
            builder.service(service)
        })
        .main()
}
