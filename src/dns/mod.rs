//! The DNS front: wire decoding, the request handler, and the UDP/TCP listeners.
pub mod wire;
