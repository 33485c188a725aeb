//! The binary protocol: the wire format ([`frame`], and a check's answer in [`result`]), one end of a connection ([`connection`]:
//! buffers and end of stream) and an async pipelining client ([`client`]). The byte-level
//! specification is `docs/PROTOCOL.md`.

pub mod client;
pub mod connection;
pub mod frame;
pub mod result;
