//! The shop on a real local cluster: three `shop-node` processes (the builder with the
//! shop's services), driven through the client library.

// The test owns the clock.
#![allow(clippy::disallowed_methods)]

use detflow_client::{CallError, Client};
use detflow_example_shop::drive;
use detflow_node::local_cluster::LocalCluster;
use detflow_protocol::codec;
use detflow_protocol::message::Rejection;
use std::time::Duration;

#[test]
fn a_cluster_of_shop_nodes_sells_and_keeps_its_books() {
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    runtime.block_on(async {
        let mut cluster = LocalCluster::builder(3, 3, "kv")
            .binary(env!("CARGO_BIN_EXE_shop-node").into())
            .prefix("detflow-shop-test-")
            .start()
            .expect("start the cluster");
        cluster
            .wait_ready(Duration::from_secs(60), |_| {})
            .await
            .expect("the cluster gets ready");
        let tls = cluster.client_tls().expect("client TLS");
        // A service this cluster does not run is a typed refusal, never ordered.
        let client = Client::connect(cluster.gateways(), tls.clone())
            .await
            .expect("a client");
        let unknown = client
            .call_raw("returns.accept", codec::encode(&1u64))
            .await;
        assert!(
            matches!(&unknown, Err(CallError::Rejected(Rejection::UnknownProcedure(p))) if p == "returns.accept"),
            "{unknown:?}"
        );
        client.close();
        let report = tokio::time::timeout(
            Duration::from_secs(120),
            drive(cluster.gateways(), tls, 3, 15, 1),
        )
        .await
        .expect("the drive ends within 2 minutes")
        .expect("the shop's books check");
        assert_eq!(report.placed + report.refused, 45);
        assert!(report.placed > 0, "{report:?}");
        assert_eq!(report.shipped, report.placed, "{report:?}");
        assert_eq!(report.streamed, report.placed, "{report:?}");
        cluster.check_running().expect("every node still runs");
        cluster.stop();
    });
}
