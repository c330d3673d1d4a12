//! GeoIP: client address → location.
pub mod location;
pub use location::{GeoMatch, LocatedNetworks, Location, LocationId};
