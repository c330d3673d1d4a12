//! Configuration of the DNS tier: TOML → raw serde structs → validated [`model`].
pub mod model;
