//! The serving snapshot: everything a query needs, built together and swapped as one.
//!
//! A [`Snapshot`] bundles the validated config, the loaded zones, the GeoIP reader, the
//! operator state and the precomputed steering table of one generation. It is built off the
//! query path (at start-up and on reload), fully validated before anyone can see it, and then
//! published with a single [`ArcSwap::store`]: a reader sees either the old generation or the
//! new one, never a mix. Building does file IO; serving from it does none.
//!
//! Health flips do not rebuild anything: [`SnapshotStore::update_health`] publishes a copy of
//! the current generation that shares its zones, GeoIP reader, name maps and client maps and
//! differs only in the steering table's region statuses, latency table and weight ramps. The
//! latest [`LiveHealth`] (keyed by region id) is kept in the store, so a reload publishes the
//! new generation with it rather than with all regions unknown, and an update computed
//! against an older generation's region list still lands on the right regions.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use arc_swap::ArcSwap;
use hickory_proto::rr::Name;

use crate::{
    config::{self, ConfigError, model::DnsConfig},
    geo::{GeoDb, GeoError},
    operator_state::{OperatorState, OperatorStateError},
    steering::{LiveHealth, PolicyIdx, SteeringTable, region_statuses_live},
    zone::{Zone, ZoneError, Zones},
};

/// Label of the debug name under a GSLB name: `_why.<name>` explains the decision.
pub const WHY_LABEL: &str = "_why";

/// One consistent generation of serving state.
pub struct Snapshot {
    pub generation: u64,
    pub config: Arc<DnsConfig>,
    /// Shared between the snapshots of one generation (health updates copy the snapshot).
    pub zones: Arc<Zones>,
    pub geo: Option<Arc<GeoDb>>,
    pub operator: OperatorState,
    pub steering: SteeringTable,
    /// GSLB name (lower-case) → its policy.
    pub gslb_by_name: Arc<HashMap<Name, PolicyIdx>>,
    /// `_why.<GSLB name>` (lower-case) → the policy it explains, for policies with `why = true`.
    pub why_by_name: Arc<HashMap<Name, PolicyIdx>>,
    /// GSLB names as text, by policy index, for metric labels.
    gslb_labels: Arc<[Arc<str>]>,
}

/// Why a snapshot could not be built. Every variant names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("zone {origin}: {source}")]
    Zone {
        origin: String,
        source: Box<ZoneError>,
    },
    #[error("{0}")]
    Zones(Box<ZoneError>),
    #[error("GSLB name {name}: {source}")]
    GslbName {
        name: String,
        source: Box<ZoneError>,
    },
    #[error("GSLB name {name}: no configured zone contains it")]
    GslbOutsideZones { name: String },
    #[error("GSLB name {name}: cannot form its debug name {WHY_LABEL}.{name}: {reason}")]
    WhyName { name: String, reason: String },
    #[error(transparent)]
    GeoIp(#[from] GeoError),
    #[error(transparent)]
    OperatorState(#[from] OperatorStateError),
}

impl Snapshot {
    /// Loads the config file and everything it names, and precomputes the steering table.
    pub fn load(config_path: &Path, generation: u64) -> Result<Snapshot, SnapshotError> {
        let config = config::load_dns_config(config_path)?;
        Snapshot::build(config, generation)
    }

    /// Loads zones, GeoIP and operator state named by an already validated config.
    pub fn build(config: DnsConfig, generation: u64) -> Result<Snapshot, SnapshotError> {
        let mut zones = Vec::with_capacity(config.zones.len());
        for source in &config.zones {
            let zone = Zone::load(&source.origin, &source.file).map_err(|source_err| {
                SnapshotError::Zone {
                    origin: source.origin.to_ascii(),
                    source: Box::new(source_err),
                }
            })?;
            zones.push(zone);
        }
        // GSLB names live inside a zone and share its SOA/NS; the zone learns of them so that
        // other types at the name get NODATA and names above them are empty non-terminals.
        register_dynamic_names(&config, &mut zones)?;
        let zones = Zones::new(zones).map_err(|e| SnapshotError::Zones(Box::new(e)))?;

        let geo = match &config.geoip {
            Some(source) => Some(Arc::new(GeoDb::open(&source.path)?)),
            None => None,
        };
        let networks = match &geo {
            Some(db) => Some(db.located_networks()?),
            None => None,
        };
        let operator = match &config.operator_state_file {
            Some(path) => OperatorState::load(path)?,
            None => OperatorState::default(),
        };
        for unknown in operator.unknown_regions(&config) {
            tracing::warn!(region = %unknown, "operator state names a region the config does not have; ignored");
        }
        let steering = SteeringTable::build(&config, networks.as_ref(), &operator);

        let mut gslb_by_name = HashMap::with_capacity(config.gslb.len());
        let mut why_by_name = HashMap::new();
        for (index, gslb) in config.gslb.iter().enumerate() {
            let idx = PolicyIdx(index as u32);
            gslb_by_name.insert(gslb.name.clone(), idx);
            if gslb.policy.why
                && let Ok(why) = why_name(&gslb.name)
            {
                why_by_name.insert(why, idx);
            }
        }

        let gslb_labels = config
            .gslb
            .iter()
            .map(|g| Arc::from(g.name.to_ascii()))
            .collect();
        Ok(Snapshot {
            gslb_labels,
            generation,
            config: Arc::new(config),
            zones: Arc::new(zones),
            geo,
            operator,
            steering,
            gslb_by_name: Arc::new(gslb_by_name),
            why_by_name: Arc::new(why_by_name),
        })
    }

    /// The same generation with `live` (by region id; absent regions are unknown) in the
    /// steering table, weight ramps re-targeted at `now`. Cheap: everything but the region
    /// statuses is shared.
    fn with_health(&self, live: &LiveHealth, now: Instant) -> Snapshot {
        self.with_operator(self.operator.clone(), live, now)
    }

    /// The same generation with `operator` and `live`: statuses, weight ramps and TTL cap are
    /// recomputed, everything else is shared.
    fn with_operator(&self, operator: OperatorState, live: &LiveHealth, now: Instant) -> Snapshot {
        let (regions, latency) = live.for_config(&self.config);
        let steering = self
            .steering
            .with_live(
                region_statuses_live(&self.config, &operator, &regions),
                latency,
                now,
            )
            .with_max_ttl(operator.max_ttl);
        Snapshot {
            generation: self.generation,
            config: Arc::clone(&self.config),
            zones: Arc::clone(&self.zones),
            geo: self.geo.clone(),
            operator,
            steering,
            gslb_by_name: Arc::clone(&self.gslb_by_name),
            why_by_name: Arc::clone(&self.why_by_name),
            gslb_labels: Arc::clone(&self.gslb_labels),
        }
    }

    /// GSLB names as text, by policy index.
    pub fn steering_names(&self) -> &[Arc<str>] {
        &self.gslb_labels
    }

    /// Every file whose change should trigger a reload.
    pub fn watched_files(&self) -> Vec<PathBuf> {
        let mut files = vec![self.config.source.clone()];
        files.extend(self.config.zones.iter().map(|z| z.file.clone()));
        files.extend(self.config.geoip.iter().map(|g| g.path.clone()));
        files.extend(self.config.operator_state_file.iter().cloned());
        files
    }
}

/// Registers every GSLB name (and `_why` name) with its zone: one batch per zone, as a zone
/// rebuilds its index once per batch. The error reported is the one the first offending name
/// in config order gets, as if the names were registered one by one.
fn register_dynamic_names(config: &DnsConfig, zones: &mut [Zone]) -> Result<(), SnapshotError> {
    // Per zone: (position in config order, name as configured).
    let mut per_zone: Vec<Vec<(usize, Name)>> = vec![Vec::new(); zones.len()];
    let mut first_error: Option<(usize, SnapshotError)> = None;
    let mut position = 0;
    for gslb in &config.gslb {
        let Some(zone) = zones.iter().position(|z| z.origin() == &gslb.zone) else {
            first_error = Some((
                position,
                SnapshotError::GslbOutsideZones {
                    name: gslb.name.to_ascii(),
                },
            ));
            break;
        };
        let Some(names) = per_zone.get_mut(zone) else {
            break;
        };
        names.push((position, gslb.name.clone()));
        position += 1;
        if gslb.policy.why {
            match why_name(&gslb.name) {
                Ok(why) => names.push((position, why)),
                Err(error) => {
                    first_error = Some((position, error));
                    break;
                }
            }
            position += 1;
        }
    }
    for (zone, names) in zones.iter_mut().zip(&per_zone) {
        let batch: Vec<Name> = names.iter().map(|(_, name)| name.clone()).collect();
        if let Err((index, source)) = zone.add_dynamic_names(&batch)
            && let Some((position, name)) = names.get(index)
            && first_error
                .as_ref()
                .is_none_or(|(first, _)| position < first)
        {
            first_error = Some((
                *position,
                SnapshotError::GslbName {
                    name: name.to_ascii(),
                    source: Box::new(source),
                },
            ));
        }
    }
    match first_error {
        Some((_, error)) => Err(error),
        None => Ok(()),
    }
}

fn why_name(name: &Name) -> Result<Name, SnapshotError> {
    name.prepend_label(WHY_LABEL)
        .map_err(|e| SnapshotError::WhyName {
            name: name.to_ascii(),
            reason: e.to_string(),
        })
}

/// The published snapshot, and how reloads replace it.
pub struct SnapshotStore {
    current: ArcSwap<Snapshot>,
    config_path: PathBuf,
    next_generation: AtomicU64,
    /// Reloads run one at a time, so a slow older build can never overwrite a newer one.
    reload_lock: Mutex<()>,
    /// The health plane's latest view, by region id. Every publication happens under this
    /// lock and applies it, so a health update and a reload finishing at the same moment can
    /// neither lose the new generation nor the new health. Held only for a cheap copy, never
    /// during a build.
    health: Mutex<LiveHealth>,
}

/// Why an operator change was not applied.
#[derive(Debug, thiserror::Error)]
pub enum OperatorUpdateError {
    #[error("no operator_state file is configured, so the change could not be persisted")]
    NotConfigured,
    #[error(transparent)]
    Save(#[from] crate::operator_state::OperatorStateError),
}

/// The outcome of one reload attempt, for logs, metrics and tests.
#[derive(Debug)]
pub enum ReloadOutcome {
    Loaded {
        generation: u64,
        took: std::time::Duration,
    },
    Rejected(SnapshotError),
}

impl SnapshotStore {
    /// Builds the first snapshot; failure here is fatal to start-up (the caller exits 64).
    pub fn open(config_path: &Path) -> Result<SnapshotStore, SnapshotError> {
        let snapshot = Snapshot::load(config_path, 1)?;
        Ok(SnapshotStore {
            current: ArcSwap::from_pointee(snapshot),
            config_path: config_path.to_path_buf(),
            next_generation: AtomicU64::new(2),
            reload_lock: Mutex::new(()),
            health: Mutex::new(LiveHealth::default()),
        })
    }

    /// Wraps an already built snapshot (tests, benchmarks).
    pub fn from_snapshot(snapshot: Snapshot, config_path: &Path) -> SnapshotStore {
        let next = snapshot.generation + 1;
        SnapshotStore {
            current: ArcSwap::from_pointee(snapshot),
            config_path: config_path.to_path_buf(),
            next_generation: AtomicU64::new(next),
            reload_lock: Mutex::new(()),
            health: Mutex::new(LiveHealth::default()),
        }
    }

    /// The query path's only access: one atomic load.
    pub fn load(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.current.load()
    }

    pub fn load_full(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Rebuilds everything from the files; on any error the current snapshot keeps serving.
    /// Blocking (file IO, GeoIP precomputation): call it off the async workers.
    pub fn reload(&self) -> ReloadOutcome {
        // A poisoned lock only means an earlier reload panicked; the data it guards is `()`.
        let _one_at_a_time = self.reload_lock.lock().unwrap_or_else(|p| p.into_inner());
        let started = Instant::now();
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        match Snapshot::load(&self.config_path, generation) {
            Ok(snapshot) => {
                let health = self.health.lock().unwrap_or_else(|p| p.into_inner());
                let snapshot = if health.ids.is_empty() {
                    snapshot
                } else {
                    // The new generation's ramps start settled: a reload is a fresh start.
                    snapshot.with_health(&health, Instant::now())
                };
                self.current.store(Arc::new(snapshot));
                ReloadOutcome::Loaded {
                    generation,
                    took: started.elapsed(),
                }
            }
            Err(error) => ReloadOutcome::Rejected(error),
        }
    }

    /// Publishes the current generation with `live` (keyed by region id: it may have been
    /// computed against an older generation's region list) and re-targets weight ramps at
    /// `now`. Returns whether anything changed; an unchanged view publishes nothing, so
    /// queries keep their cached snapshot. The generation number stays: it counts
    /// configurations, not health flips.
    pub fn update_health(&self, live: LiveHealth, now: Instant) -> bool {
        // Poisoning would mean a panic while copying a snapshot; the view itself stays valid.
        let mut latest = self.health.lock().unwrap_or_else(|p| p.into_inner());
        if *latest == live {
            return false;
        }
        let current = self.current.load_full();
        let snapshot = current.with_health(&live, now);
        *latest = live;
        self.current.store(Arc::new(snapshot));
        true
    }

    /// Persists `operator` to the configured operator-state file, then publishes it (same
    /// generation, health kept). Fails without publishing when no file is configured or the
    /// write fails: an operator action that a restart would forget must not look applied.
    pub fn update_operator(&self, operator: OperatorState) -> Result<(), OperatorUpdateError> {
        let latest = self.health.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.current.load_full();
        let Some(path) = current.config.operator_state_file.as_deref() else {
            return Err(OperatorUpdateError::NotConfigured);
        };
        operator.save(path)?;
        // The IO shell: operator actions carry no time of their own.
        let snapshot = current.with_operator(operator, &latest, Instant::now());
        self.current.store(Arc::new(snapshot));
        Ok(())
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::steering::{Health, RegionLive};

    fn bundled() -> SnapshotStore {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("zones/meridian.toml");
        SnapshotStore::open(&path).unwrap_or_else(|e| panic!("{e}"))
    }

    /// A view computed against a region list in another order (a reload in between) lands on
    /// the regions it names, and an unchanged view publishes nothing.
    #[test]
    fn health_updates_apply_by_region_id() {
        let store = bundled();
        let down = RegionLive {
            health: Health::Down,
            spilling: false,
            headroom: Some(0.0),
            report_received: None,
        };
        let spilling = RegionLive {
            health: Health::Up,
            spilling: true,
            headroom: Some(0.01),
            report_received: None,
        };
        let live = LiveHealth {
            ids: vec!["ap-south".into(), "eu-west".into(), "gone".into()],
            regions: vec![spilling, down, down],
            latency: Arc::default(),
        };
        let now = Instant::now();
        assert!(store.update_health(live.clone(), now));
        assert!(
            !store.update_health(live, now),
            "unchanged: nothing published"
        );

        let snapshot = store.load_full();
        let status = |id: &str| {
            let idx = snapshot.config.region_by_id(id).unwrap();
            *snapshot.steering.region_status(idx)
        };
        assert_eq!(status("eu-west").health, Health::Down);
        assert!(status("ap-south").spilling);
        assert_eq!(status("ap-south").headroom, Some(0.01));
        assert_eq!(status("us-east").health, Health::Unknown);
        assert_eq!(snapshot.generation, 1);

        // A reload keeps the latest view.
        assert!(matches!(store.reload(), ReloadOutcome::Loaded { .. }));
        let reloaded = store.load_full();
        let idx = reloaded.config.region_by_id("eu-west").unwrap();
        assert_eq!(reloaded.steering.region_status(idx).health, Health::Down);
    }
}
