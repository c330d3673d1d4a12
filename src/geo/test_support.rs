//! Helpers shared by the GeoIP tests: the committed demo files, and databases written to
//! temporary files (the reader maps files, so tests need real ones).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::config::model::Coordinates;

use super::location::Location;

pub(crate) fn repo_file(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// A file under the system temp folder, removed on drop.
pub(crate) struct TempFile {
    pub(crate) path: PathBuf,
}

impl TempFile {
    pub(crate) fn with_contents(bytes: &[u8]) -> TempFile {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "meridian-geo-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, bytes).expect("write temp file");
        TempFile { path }
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

pub(crate) fn location(
    continent: &str,
    country: &str,
    subdivision: Option<&str>,
    coordinates: Option<(f64, f64)>,
) -> Location {
    Location {
        country: Some(country.into()),
        subdivision: subdivision.map(Into::into),
        continent: Some(continent.into()),
        coordinates: coordinates.map(|(latitude, longitude)| Coordinates {
            latitude,
            longitude,
        }),
    }
}
