//! GeoIP: client address → location.
//!
//! Owns reading MaxMind DB files (GeoLite2/GeoIP2 City or Country, and our demo database) and
//! building them (`meridian geoip build`). It answers "where is this address, and over which
//! network is that true"; it never decides where to steer a client.
mod error;
pub mod location;
mod reader;
#[cfg(test)]
mod test_support;
mod writer;

pub use error::{CsvProblem, EntryProblem, GeoError};
pub use location::{GeoMatch, LocatedNetworks, Location, LocationId};
pub use reader::{GeoDb, GeoDbInfo};
pub use writer::{
    CSV_BUILD_EPOCH, CSV_COLUMNS, CSV_DATABASE_TYPE, build_database, build_database_from_csv,
};
