//! A builder for ad-hoc `kv.txn` transactions.

use crate::{CallError, Client};
use detflow_protocol::Key;
use detflow_workloads::kv::{AdHoc, KvOutput, KvTxn};

/// Collects micro-operations, then commits them as one transaction.
///
/// ```no_run
/// # async fn demo(client: &detflow_client::Client) -> Result<(), detflow_client::CallError> {
/// use detflow_protocol::Key;
/// let out = client
///     .kv()
///     .get(Key::table("kv").u64(1))
///     .append(Key::table("kv").u64(2), b"event".to_vec())
///     .commit()
///     .await?;
/// println!("{:?}", out.reads);
/// # Ok(()) }
/// ```
pub struct KvBuilder<'c> {
    client: &'c Client,
    txn: KvTxn,
}

impl<'c> KvBuilder<'c> {
    pub(crate) fn new(client: &'c Client) -> KvBuilder<'c> {
        KvBuilder {
            client,
            txn: KvTxn::new(),
        }
    }

    /// Reads `key`.
    pub fn get(mut self, key: Key) -> Self {
        self.txn = self.txn.get(key);
        self
    }

    /// Sets `key` to `value`.
    pub fn put(mut self, key: Key, value: Vec<u8>) -> Self {
        self.txn = self.txn.put(key, value);
        self
    }

    /// Removes `key`.
    pub fn delete(mut self, key: Key) -> Self {
        self.txn = self.txn.delete(key);
        self
    }

    /// Appends `value` to the list stored at `key`.
    pub fn append(mut self, key: Key, value: Vec<u8>) -> Self {
        self.txn = self.txn.append(key, value);
        self
    }

    /// Sets `key` to `new` if it holds `expected`; otherwise the whole transaction aborts.
    pub fn cas(mut self, key: Key, expected: Option<Vec<u8>>, new: Option<Vec<u8>>) -> Self {
        self.txn = self.txn.cas(key, expected, new);
        self
    }

    /// Runs the operations as one transaction, exactly once.
    pub async fn commit(self) -> Result<KvOutput, CallError> {
        self.client.call::<AdHoc>(&self.txn).await
    }
}
