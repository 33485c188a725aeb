//! The binary protocol: the wire format ([`frame`]) and an async pipelining client ([`client`]).
//! The byte-level specification is `docs/PROTOCOL.md`.

pub mod client;
pub mod frame;
