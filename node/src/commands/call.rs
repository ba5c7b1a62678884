//! `detflow call`: one call, its output printed as JSON.

use crate::cli::CallArgs;
use anyhow::{Context, Result};
use detflow_client::{Client, Tls};

/// Makes the call; `Ok(false)` (and the error on stderr) when it did not commit.
pub(crate) async fn run(call: &CallArgs) -> Result<bool> {
    let json: serde_json::Value = serde_json::from_str(&call.args)
        .with_context(|| format!("--args is not JSON: {}", call.args))?;
    let encoded = rmp_serde::to_vec_named(&json)?;
    let client = Client::connect(
        call.connect.connect.clone(),
        Tls::from_dir(&call.connect.certs, "client")?,
    )
    .await?;
    let result = client.call_raw(&call.name, encoded).await;
    client.close();
    match result {
        Ok(output) => {
            let value: serde_json::Value = rmp_serde::from_slice(&output)
                .with_context(|| "the output is not MessagePack".to_string())?;
            println!("{}", serde_json::to_string_pretty(&value)?);
            Ok(true)
        }
        Err(e) => {
            eprintln!("detflow: {e}");
            Ok(false)
        }
    }
}
