//! The record store: the region's zones and records in memory, replaced whole on a full load
//! and patched name by name as changes are tailed from the replica; plus how fresh it is.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::RwLock;
use std::time::Instant;
use tokio::sync::watch;

/// One resource record as served (enabled rows only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Record type mnemonic, uppercase (`A`, `CNAME`, `SOA`, ...).
    pub qtype: Box<str>,
    /// Presentation form; MX/SRV priority already prepended.
    pub content: Box<str>,
    /// TTL in seconds.
    pub ttl: i32,
    /// Zone id (`domains.id`).
    pub domain_id: i32,
}

/// One zone (`domains` row).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Domain {
    /// `domains.id`.
    pub id: i32,
    /// Lowercase, without the trailing dot.
    pub name: String,
    /// `domains.type` (NATIVE, MASTER, ...).
    pub kind: String,
    /// `domains.notified_serial`.
    pub notified_serial: Option<i64>,
    /// `domains.last_check`.
    pub last_check: Option<i32>,
    /// `domains.master`, split on commas.
    pub masters: Vec<String>,
}

/// A region's edge addresses and how long ago one of its edges last heartbeated.
#[derive(Debug, Clone, PartialEq)]
pub struct RegionState {
    /// Region name.
    pub name: String,
    /// Edge IPv4 address, presentation form.
    pub ipv4: Option<String>,
    /// Edge IPv6 address, presentation form.
    pub ipv6: Option<String>,
    /// Seconds since the freshest heartbeat of a non-draining edge, at `read_at`; `None`: no edge.
    pub heartbeat_age_secs: Option<f64>,
    /// When the age was read.
    pub read_at: Instant,
}

impl RegionState {
    /// Whether an edge of this region heartbeated within `bound_secs` (measured now).
    pub fn is_healthy(&self, bound_secs: f64) -> bool {
        match self.heartbeat_age_secs {
            Some(age) => age + self.read_at.elapsed().as_secs_f64() <= bound_secs,
            None => false,
        }
    }
}

/// The zones and records at one consistent position.
#[derive(Debug, Default)]
pub struct Zones {
    domains: HashMap<i32, Domain>,
    by_name: HashMap<String, i32>,
    names: HashMap<Box<str>, Vec<Record>>,
    records: usize,
}

impl Zones {
    /// Builds from domains and `(name, record)` rows.
    pub fn new(domains: Vec<Domain>, rows: impl IntoIterator<Item = (String, Record)>) -> Zones {
        let mut zones = Zones::default();
        zones.set_domains(domains);
        for (name, rec) in rows {
            zones.records += 1;
            zones
                .names
                .entry(name.into_boxed_str())
                .or_default()
                .push(rec);
        }
        zones
    }

    /// Replaces the zone list.
    pub fn set_domains(&mut self, domains: Vec<Domain>) {
        self.by_name = domains.iter().map(|d| (d.name.clone(), d.id)).collect();
        self.domains = domains.into_iter().map(|d| (d.id, d)).collect();
    }

    /// Replaces every record of `name` (an empty list removes the name).
    pub fn replace_name(&mut self, name: &str, records: Vec<Record>) {
        let old = if records.is_empty() {
            self.names.remove(name).map(|v| v.len()).unwrap_or(0)
        } else {
            let n = records.len();
            let old = self
                .names
                .insert(name.into(), records)
                .map(|v| v.len())
                .unwrap_or(0);
            self.records += n;
            old
        };
        self.records -= old;
    }

    /// Records of `name` (storage form), all zones.
    pub fn records_of(&self, name: &str) -> &[Record] {
        self.names.get(name).map(|v| v.as_slice()).unwrap_or(&[])
    }

    /// The zone whose apex is `name`.
    pub fn zone_at(&self, name: &str) -> Option<&Domain> {
        self.by_name.get(name).and_then(|id| self.domains.get(id))
    }

    /// The zone by id.
    pub fn domain(&self, id: i32) -> Option<&Domain> {
        self.domains.get(&id)
    }

    /// All zones, by id.
    pub fn domains(&self) -> impl Iterator<Item = &Domain> {
        self.domains.values()
    }

    /// Every record of a zone, with owner names (for `list`).
    pub fn zone_records(&self, id: i32) -> Vec<(&str, &Record)> {
        self.names
            .iter()
            .flat_map(|(n, recs)| recs.iter().map(move |r| (&**n, r)))
            .filter(|(_, r)| r.domain_id == id)
            .collect()
    }

    /// Number of records held.
    pub fn record_count(&self) -> usize {
        self.records
    }

    /// The serial of a zone's SOA (third field), 0 when absent.
    pub fn serial(&self, domain: &Domain) -> u32 {
        self.records_of(&domain.name)
            .iter()
            .find(|r| &*r.qtype == "SOA" && r.domain_id == domain.id)
            .and_then(|r| r.content.split_whitespace().nth(2))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }
}

/// A PostgreSQL snapshot (`xmin:xmax:xip,...`): which transactions its reads saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Every transaction below it had ended when the snapshot was taken.
    pub xmin: u64,
    /// Every transaction at or above it had not started.
    pub xmax: u64,
    /// Transactions in progress when the snapshot was taken.
    pub xip: Vec<u64>,
}

impl Snapshot {
    /// Parses `pg_current_snapshot()::text`.
    pub fn parse(text: &str) -> Option<Snapshot> {
        let mut parts = text.splitn(3, ':');
        let xmin = parts.next()?.parse().ok()?;
        let xmax = parts.next()?.parse().ok()?;
        let xip = match parts.next()? {
            "" => Vec::new(),
            list => list
                .split(',')
                .map(|x| x.parse().ok())
                .collect::<Option<Vec<u64>>>()?,
        };
        Some(Snapshot { xmin, xmax, xip })
    }
}

/// The store shared by the tailer (writer) and the connectors (readers).
pub struct Store {
    zones: RwLock<Zones>,
    regions: RwLock<Vec<RegionState>>,
    metadata: RwLock<HashMap<String, Vec<(String, String)>>>,
    loaded: AtomicBool,
    applied_lsn: watch::Sender<u64>,
    started: Instant,
    last_contact_ms: AtomicU64,
    contact_seen: AtomicBool,
}

impl Default for Store {
    fn default() -> Self {
        Store::new()
    }
}

impl Store {
    /// An empty store that answers nothing until the first full load.
    pub fn new() -> Store {
        Store {
            zones: RwLock::new(Zones::default()),
            regions: RwLock::new(Vec::new()),
            metadata: RwLock::new(HashMap::new()),
            loaded: AtomicBool::new(false),
            applied_lsn: watch::channel(0).0,
            started: Instant::now(),
            last_contact_ms: AtomicU64::new(0),
            contact_seen: AtomicBool::new(false),
        }
    }

    /// Whether a full load has completed (before that, lookups must fail, not answer empty).
    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    /// Runs `f` with read access to the zones.
    pub fn read<T>(&self, f: impl FnOnce(&Zones) -> T) -> T {
        let guard = self.zones.read().unwrap_or_else(|e| e.into_inner());
        f(&guard)
    }

    /// Runs `f` with write access to the zones.
    pub fn write<T>(&self, f: impl FnOnce(&mut Zones) -> T) -> T {
        let mut guard = self.zones.write().unwrap_or_else(|e| e.into_inner());
        f(&mut guard)
    }

    /// Replaces everything after a full load at `lsn`.
    pub fn replace_all(&self, zones: Zones, lsn: u64) {
        self.write(|z| *z = zones);
        self.loaded.store(true, Ordering::Release);
        self.set_applied_lsn(lsn);
    }

    /// Records that every commit at or below `lsn` is in memory.
    pub fn set_applied_lsn(&self, lsn: u64) {
        self.applied_lsn.send_if_modified(|cur| {
            if lsn > *cur {
                *cur = lsn;
                true
            } else {
                false
            }
        });
    }

    /// Records the position read before the snapshot the memory now reflects, and wakes every
    /// waiter (also when the position did not move: a transaction that was in progress in the
    /// previous snapshot may be visible in this one).
    pub fn publish(&self, lsn: u64) {
        self.applied_lsn.send_modify(|cur| *cur = (*cur).max(lsn));
    }

    /// The position applied so far.
    pub fn applied_lsn(&self) -> u64 {
        *self.applied_lsn.borrow()
    }

    /// A receiver that sees every advance of the applied position.
    pub fn watch_applied(&self) -> watch::Receiver<u64> {
        self.applied_lsn.subscribe()
    }

    /// Notes a successful exchange with the database.
    pub fn touch(&self) {
        let ms = self.started.elapsed().as_millis() as u64;
        self.last_contact_ms.store(ms, Ordering::Relaxed);
        self.contact_seen.store(true, Ordering::Relaxed);
    }

    /// Seconds since the database last answered (since start if it never did).
    pub fn seconds_since_contact(&self) -> f64 {
        let now = self.started.elapsed().as_millis() as u64;
        let last = if self.contact_seen.load(Ordering::Relaxed) {
            self.last_contact_ms.load(Ordering::Relaxed)
        } else {
            0
        };
        now.saturating_sub(last) as f64 / 1000.0
    }

    /// Replaces the regions' state.
    pub fn set_regions(&self, regions: Vec<RegionState>) {
        *self.regions.write().unwrap_or_else(|e| e.into_inner()) = regions;
    }

    /// Runs `f` over the regions' state.
    pub fn with_regions<T>(&self, f: impl FnOnce(&[RegionState]) -> T) -> T {
        let guard = self.regions.read().unwrap_or_else(|e| e.into_inner());
        f(&guard)
    }

    /// Replaces the domain metadata (zone name → (kind, content) rows).
    pub fn set_metadata(&self, meta: HashMap<String, Vec<(String, String)>>) {
        *self.metadata.write().unwrap_or_else(|e| e.into_inner()) = meta;
    }

    /// Metadata rows of a zone.
    pub fn metadata_of(&self, zone: &str) -> Vec<(String, String)> {
        let guard = self.metadata.read().unwrap_or_else(|e| e.into_inner());
        guard.get(zone).cloned().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(t: &str, c: &str, d: i32) -> Record {
        Record {
            qtype: t.into(),
            content: c.into(),
            ttl: 10,
            domain_id: d,
        }
    }

    fn zone(id: i32, name: &str) -> Domain {
        Domain {
            id,
            name: name.into(),
            kind: "NATIVE".into(),
            notified_serial: None,
            last_check: None,
            masters: vec![],
        }
    }

    #[test]
    fn replacing_a_name_keeps_the_record_count_exact() {
        let mut z = Zones::new(
            vec![zone(1, "a.test")],
            vec![
                ("a.test".to_string(), rec("SOA", "ns. h. 7 1 1 1 5", 1)),
                ("x.a.test".to_string(), rec("CNAME", "us.a.test.", 1)),
            ],
        );
        assert_eq!(z.record_count(), 2);
        z.replace_name(
            "x.a.test",
            vec![rec("A", "1.2.3.4", 1), rec("A", "1.2.3.5", 1)],
        );
        assert_eq!(z.record_count(), 3);
        z.replace_name("x.a.test", vec![]);
        assert_eq!(z.record_count(), 1);
        assert!(z.records_of("x.a.test").is_empty());
        assert_eq!(z.serial(z.zone_at("a.test").expect("zone")), 7);
    }

    #[test]
    fn applied_position_only_moves_forward() {
        let s = Store::new();
        s.set_applied_lsn(10);
        s.set_applied_lsn(5);
        assert_eq!(s.applied_lsn(), 10);
    }

    #[test]
    fn snapshots_parse_and_publish_with_the_position() {
        let snap = Snapshot::parse("100:105:101,103").unwrap();
        assert_eq!(
            (snap.xmin, snap.xmax, snap.xip.clone()),
            (100, 105, vec![101, 103])
        );
        assert_eq!(Snapshot::parse("7:7:").unwrap().xip, Vec::<u64>::new());
        assert!(Snapshot::parse("7:x:").is_none());
        let s = Store::new();
        s.publish(20);
        assert_eq!(s.applied_lsn(), 20);
    }
}
