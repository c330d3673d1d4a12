//! Configuration of the relay tier: TOML → raw serde structs → validated [`model`].
pub mod model;
