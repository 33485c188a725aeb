//! API keys: the raw key's format, generation and hashing ([`mod@format`]), and the public view of a
//! key record ([`record`]).

pub mod format;
pub mod record;

pub use format::{KeyId, RawKeyError};
pub use record::{KeyInfo, KeyUpdate, NewKey};
