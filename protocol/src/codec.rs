//! MessagePack encoding of arguments, outputs, values and messages.

use serde::{Serialize, de::DeserializeOwned};

/// A value that does not decode as the expected type.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DecodeError(pub String);

/// Encodes `value` as MessagePack.
///
/// Encoding into a `Vec` fails only for types whose `Serialize` fails (maps with non-string
/// keys are fine in MessagePack); such a type is a programming error, so this panics.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    #[allow(clippy::expect_used)]
    rmp_serde::to_vec(value).expect("MessagePack encoding into a Vec cannot fail for our types")
}

/// Encodes `value` as MessagePack with struct fields named (maps, not arrays), so a reader
/// that does not know the type (`detflow call`, a log inspector) still sees field names.
/// Either form decodes into the struct.
pub fn encode_named<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    #[allow(clippy::expect_used)]
    rmp_serde::to_vec_named(value)
        .expect("MessagePack encoding into a Vec cannot fail for our types")
}

/// Decodes MessagePack bytes as `T`.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    rmp_serde::from_slice(bytes).map_err(|e| DecodeError(e.to_string()))
}
