//! The DNS front: wire decoding ([`wire`]), the request handler ([`handler`]) and the UDP/TCP
//! listeners ([`server`]). hickory-proto does the wire format of names and records; the
//! transport and the bytes-in → bytes-out path are ours (see `handler` for why).
pub mod handler;
pub mod node;
pub mod notify;
pub mod rrl;
pub mod server;
pub mod transfer;
pub mod tsig;
pub mod wire;
