//! Operator region state: drain, force down / force up and weight, as set by an operator.
//!
//! This module owns the persisted file format and nothing else. It is read once per snapshot
//! and handed to the steering core as plain values; it must not reach into health data or the
//! query path. A missing file is the empty state (every region `auto`, weight 100 %), so a
//! fresh install needs no file. Writes are atomic (temporary file in the same folder, fsync,
//! rename) so a crash never leaves a half-written state that would fail the next start.
//!
//! ```json
//! {"version":1,"regions":{"eu-west":{"admin":"drain","weight":50}}}
//! ```

use std::{
    collections::BTreeMap,
    fs,
    io::{self, Write},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::config::model::DnsConfig;

/// The only file format version this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;

/// Largest operator weight multiplier, in percent (10×).
pub const MAX_WEIGHT_PERCENT: u32 = 1000;

/// What the operator asked for a region, whatever its health says.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdminState {
    /// Health decides.
    #[default]
    Auto,
    /// Serve even when health says down (the operator knows better than the probes).
    ForceUp,
    /// Never serve.
    ForceDown,
    /// Stop sending new clients; answers elsewhere get a shorter TTL so clients move sooner.
    Drain,
}

impl AdminState {
    /// The name used in the file and in decision traces.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::ForceUp => "force_up",
            Self::ForceDown => "force_down",
            Self::Drain => "drain",
        }
    }
}

/// Operator state of one region.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionOperatorState {
    #[serde(default)]
    pub admin: AdminState,
    /// Multiplier on the region's capacity in the weighted mode, in percent (0..=1000).
    #[serde(rename = "weight", default = "default_weight_percent")]
    pub weight_percent: u32,
}

fn default_weight_percent() -> u32 {
    100
}

impl Default for RegionOperatorState {
    fn default() -> Self {
        Self {
            admin: AdminState::default(),
            weight_percent: default_weight_percent(),
        }
    }
}

/// Operator state of every region the operator touched; absent regions are at their default.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OperatorState {
    /// Keyed by region id.
    pub regions: BTreeMap<String, RegionOperatorState>,
    /// A cap on every GSLB answer's TTL (seconds, ≥ 1), set ahead of a planned drill so
    /// resolvers' caches turn over quickly once the region is drained.
    pub max_ttl: Option<u32>,
}

/// Mode of a saved state file (the umask cannot widen or narrow it).
#[cfg(unix)]
const STATE_FILE_MODE: u32 = 0o640;

/// The file as stored: the version is checked, then dropped from the model.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile {
    version: u32,
    #[serde(default)]
    regions: BTreeMap<String, RegionOperatorState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_ttl: Option<u32>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OperatorStateError {
    #[error("{path}: {op} failed: {kind}: {message}")]
    Io {
        path: PathBuf,
        op: IoOp,
        kind: io::ErrorKind,
        message: String,
    },
    #[error("{path}:{line}:{column}: {message}")]
    Syntax {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{path}: version {found} is not supported (expected {FORMAT_VERSION})")]
    UnsupportedVersion { path: PathBuf, found: u32 },
    #[error(
        "{path}: regions.{region}.weight = {weight} is out of range (0..={MAX_WEIGHT_PERCENT})"
    )]
    WeightOutOfRange {
        path: PathBuf,
        region: String,
        weight: u32,
    },
    #[error("{path}: max_ttl = 0 is not allowed (at least 1 second)")]
    ZeroMaxTtl { path: PathBuf },
}

/// Which file operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoOp {
    Read,
    Write,
    Sync,
    Rename,
}

impl std::fmt::Display for IoOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Sync => "fsync",
            Self::Rename => "rename",
        })
    }
}

fn io_error(path: &Path, op: IoOp, error: &io::Error) -> OperatorStateError {
    OperatorStateError::Io {
        path: path.to_path_buf(),
        op,
        kind: error.kind(),
        message: error.to_string(),
    }
}

impl OperatorState {
    /// Reads the state file; a missing file is the empty state.
    pub fn load(path: &Path) -> Result<Self, OperatorStateError> {
        match fs::read_to_string(path) {
            Ok(text) => Self::parse(&text, path),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(io_error(path, IoOp::Read, &e)),
        }
    }

    /// Parses the file contents; `path` is only used to name the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, OperatorStateError> {
        let file: StateFile =
            serde_json::from_str(text).map_err(|e| OperatorStateError::Syntax {
                path: path.to_path_buf(),
                line: e.line(),
                column: e.column(),
                message: e.to_string(),
            })?;
        if file.version != FORMAT_VERSION {
            return Err(OperatorStateError::UnsupportedVersion {
                path: path.to_path_buf(),
                found: file.version,
            });
        }
        if let Some((region, state)) = file
            .regions
            .iter()
            .find(|(_, s)| s.weight_percent > MAX_WEIGHT_PERCENT)
        {
            return Err(OperatorStateError::WeightOutOfRange {
                path: path.to_path_buf(),
                region: region.clone(),
                weight: state.weight_percent,
            });
        }
        if file.max_ttl == Some(0) {
            return Err(OperatorStateError::ZeroMaxTtl {
                path: path.to_path_buf(),
            });
        }
        Ok(Self {
            regions: file.regions,
            max_ttl: file.max_ttl,
        })
    }

    /// The file contents for this state (pretty, stable key order).
    pub fn to_json(&self) -> String {
        let file = StateFile {
            version: FORMAT_VERSION,
            regions: self.regions.clone(),
            max_ttl: self.max_ttl,
        };
        // Serialising a struct of strings, enums and integers cannot fail.
        let mut text = serde_json::to_string_pretty(&file).unwrap_or_default();
        text.push('\n');
        text
    }

    /// Writes the state atomically: a temporary file next to `path`, fsync, rename, then a
    /// best-effort fsync of the folder so the rename itself survives a crash. The file is
    /// 0640 whatever the umask: the service and its group (operators running `meridian
    /// check`) read it; nobody else may read or change what the node serves.
    pub fn save(&self, path: &Path) -> Result<(), OperatorStateError> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let file_name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "operator-state".to_owned());
        let tmp = dir.join(format!(".{file_name}.tmp.{}", std::process::id()));

        let write = || -> Result<(), OperatorStateError> {
            let mut options = fs::OpenOptions::new();
            options.write(true).create(true).truncate(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt as _;
                options.mode(STATE_FILE_MODE);
            }
            let mut f = options
                .open(&tmp)
                .map_err(|e| io_error(&tmp, IoOp::Write, &e))?;
            // Again after `open`: the umask narrowed the mode, and a temporary left by a
            // crashed earlier run kept its own.
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt as _;
                f.set_permissions(fs::Permissions::from_mode(STATE_FILE_MODE))
                    .map_err(|e| io_error(&tmp, IoOp::Write, &e))?;
            }
            f.write_all(self.to_json().as_bytes())
                .map_err(|e| io_error(&tmp, IoOp::Write, &e))?;
            f.sync_all().map_err(|e| io_error(&tmp, IoOp::Sync, &e))?;
            fs::rename(&tmp, path).map_err(|e| io_error(path, IoOp::Rename, &e))
        };
        if let Err(e) = write() {
            // Leave no stray temporary behind; the original file is untouched.
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        if let Ok(d) = fs::File::open(dir) {
            // Not every platform can fsync a directory; the data itself is already durable.
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// The state of one region (its default when the operator never touched it).
    pub fn region(&self, id: &str) -> RegionOperatorState {
        self.regions.get(id).copied().unwrap_or_default()
    }

    /// Region ids in the state that the configuration does not know (sorted). Not an error:
    /// a region removed from the config keeps its state until the operator clears it; the
    /// caller warns.
    pub fn unknown_regions(&self, config: &DnsConfig) -> Vec<String> {
        self.regions
            .keys()
            .filter(|id| config.region_by_id(id).is_none())
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> &'static Path {
        Path::new("/etc/meridian/state.json")
    }

    /// (region, admin, weight) as parsed.
    type Expected = &'static [(&'static str, AdminState, u32)];

    #[test]
    fn parses_valid_files() {
        let cases: &[(&str, Expected)] = &[
            (r#"{"version":1}"#, &[]),
            (r#"{"version":1,"regions":{}}"#, &[]),
            (
                r#"{"version":1,"regions":{"eu-west":{"admin":"drain","weight":50}}}"#,
                &[("eu-west", AdminState::Drain, 50)],
            ),
            (
                r#"{"version":1,"regions":{"a":{"admin":"force_up"},"b":{"weight":0},"c":{"admin":"force_down","weight":1000},"d":{"admin":"auto"}}}"#,
                &[
                    ("a", AdminState::ForceUp, 100),
                    ("b", AdminState::Auto, 0),
                    ("c", AdminState::ForceDown, 1000),
                    ("d", AdminState::Auto, 100),
                ],
            ),
        ];
        for (text, want) in cases {
            let state = OperatorState::parse(text, p()).unwrap();
            let got: Vec<_> = state
                .regions
                .iter()
                .map(|(k, v)| (k.as_str(), v.admin, v.weight_percent))
                .collect();
            assert_eq!(&got, want, "{text}");
        }
    }

    #[test]
    fn rejects_invalid_files_naming_the_key() {
        let path = p().to_path_buf();
        let weight = OperatorState::parse(
            r#"{"version":1,"regions":{"eu-west":{"weight":1001}}}"#,
            p(),
        );
        assert_eq!(
            weight,
            Err(OperatorStateError::WeightOutOfRange {
                path: path.clone(),
                region: "eu-west".into(),
                weight: 1001
            })
        );
        assert_eq!(
            OperatorState::parse(r#"{"version":2}"#, p()),
            Err(OperatorStateError::UnsupportedVersion {
                path: path.clone(),
                found: 2
            })
        );
        let syntax_cases = [
            (
                r#"{"version":1,"regions":{"a":{"admin":"drain","wieght":5}}}"#,
                "wieght",
            ),
            (r#"{"version":1,"extra":true}"#, "extra"),
            (
                r#"{"version":1,"regions":{"a":{"admin":"sleep"}}}"#,
                "sleep",
            ),
            (r#"{"version":1,"regions":{"a":{"weight":-1}}}"#, "-1"),
            (r#"{"regions":{}}"#, "version"),
            ("{", "EOF"),
        ];
        for (text, key) in syntax_cases {
            match OperatorState::parse(text, p()) {
                Err(OperatorStateError::Syntax {
                    path: got, message, ..
                }) => {
                    assert_eq!(got, path);
                    assert!(message.contains(key), "{text}: {message}");
                }
                other => panic!("{text}: {other:?}"),
            }
        }
    }

    #[test]
    fn missing_file_is_empty_state_and_save_round_trips() {
        let dir = std::env::temp_dir().join(format!("meridian-opstate-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state.json");
        let _ = fs::remove_file(&path);
        assert_eq!(OperatorState::load(&path), Ok(OperatorState::default()));

        let mut state = OperatorState::default();
        state.regions.insert(
            "eu-west".into(),
            RegionOperatorState {
                admin: AdminState::Drain,
                weight_percent: 50,
            },
        );
        state.save(&path).unwrap();
        assert_eq!(OperatorState::load(&path), Ok(state.clone()));
        // Overwrite in place.
        state.regions.clear();
        state.save(&path).unwrap();
        assert_eq!(OperatorState::load(&path), Ok(state.clone()));
        // 0640 whatever the mode of the file it replaced.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o666)).unwrap();
            state.save(&path).unwrap();
            let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
            assert_eq!(mode, 0o640);
        }
        // No temporary left behind.
        let names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, vec!["state.json".to_owned()]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn save_into_missing_folder_is_an_error_naming_the_file() {
        let path = std::env::temp_dir()
            .join(format!("meridian-no-such-dir-{}", std::process::id()))
            .join("state.json");
        match OperatorState::default().save(&path) {
            Err(OperatorStateError::Io { op, kind, .. }) => {
                assert_eq!(op, IoOp::Write);
                assert_eq!(kind, io::ErrorKind::NotFound);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn region_defaults_and_unknown_regions() {
        let config = crate::steering::tests::config_with_regions(&["eu-west", "us-east"]);
        let state = OperatorState::parse(
            r#"{"version":1,"regions":{"eu-west":{"admin":"drain"},"mars-1":{},"ap-x":{}}}"#,
            p(),
        )
        .unwrap();
        assert_eq!(state.region("eu-west").admin, AdminState::Drain);
        assert_eq!(state.region("us-east"), RegionOperatorState::default());
        assert_eq!(state.unknown_regions(&config), vec!["ap-x", "mars-1"]);
    }
}
