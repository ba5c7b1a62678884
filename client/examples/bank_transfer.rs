//! A transfer and two balance reads against a running cluster.
//!
//! ```sh
//! detflow demo --keep /tmp/detflow-demo --duration 60s &   # or any cluster
//! cargo run -p detflow-client --example bank_transfer -- 127.0.0.1:7001 /tmp/detflow-demo/certs
//! ```

use detflow_client::{CallError, Client, Tls};
use detflow_protocol::Key;
use detflow_workloads::bank::{Balance, BalanceArgs, Transfer, TransferArgs};
use std::net::SocketAddr;
use std::path::PathBuf;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let gateway: SocketAddr = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:7001".into())
        .parse()?;
    let certs = PathBuf::from(args.next().unwrap_or_else(|| "certs".into()));

    let client = Client::connect(vec![gateway], Tls::from_dir(&certs, "client")?).await?;
    match client
        .call::<Transfer>(&TransferArgs {
            from: 1,
            to: 2,
            amount_cents: 250,
        })
        .await
    {
        Ok(out) => println!(
            "moved 2.50: account 1 has {} cents, account 2 has {}",
            out.from_balance_cents, out.to_balance_cents
        ),
        Err(CallError::Aborted(reason)) => println!("the transfer aborted: {reason}"),
        Err(e) => return Err(e.into()),
    }
    for account in [1, 2] {
        let b = client.call::<Balance>(&BalanceArgs { account }).await?;
        println!("account {account}: {} cents", b.balance_cents);
    }
    // An ad-hoc transaction: read one key and append to a list, atomically.
    let out = client
        .kv()
        .get(Key::table("kv").u64(1))
        .append(Key::table("kv").u64(2), b"hello".to_vec())
        .commit()
        .await;
    println!("kv.txn: {out:?}");
    client.close();
    Ok(())
}
