//! The record store: the region's zones and records in memory, replaced whole on a full load
//! and patched name by name as changes are tailed from the replica; plus how fresh it is.
//!
//! Long with its tests (about 145 lines): the loading and patching rules are tested next to
//! them.

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

#[cfg(test)]
impl Domain {
    /// A NATIVE zone without replication details, for tests.
    pub fn native(id: i32, name: &str) -> Domain {
        Domain {
            id,
            name: name.into(),
            kind: "NATIVE".into(),
            notified_serial: None,
            last_check: None,
            masters: vec![],
        }
    }
}

#[cfg(test)]
impl Record {
    /// A record of zone `domain_id`, for tests.
    pub fn of(domain_id: i32, qtype: &str, content: &str, ttl: i32) -> Record {
        Record {
            qtype: qtype.into(),
            content: content.into(),
            ttl,
            domain_id,
        }
    }
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

/// A TSIG key (`tsigkeys` row), served to pdns for signed zone transfers and queries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TsigKey {
    /// Key name, lowercase, without the trailing dot.
    pub name: String,
    /// Algorithm as stored (`hmac-sha256`, ...).
    pub algorithm: String,
    /// The secret, base64 as stored.
    pub secret: String,
}

/// Zone-level settings that are not records: `domainmetadata` and `tsigkeys`. Loaded with
/// the zones and reloaded, like the zone list, when the change log says they changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ZoneSettings {
    /// Zone name (storage form) → `(kind, content)` rows.
    pub metadata: HashMap<String, Vec<(String, String)>>,
    /// Every TSIG key, in `id` order.
    pub tsig_keys: Vec<TsigKey>,
}

/// The zones and records at one consistent position.
#[derive(Debug, Default)]
pub struct Zones {
    domains: HashMap<i32, Domain>,
    by_name: HashMap<String, i32>,
    names: HashMap<Box<str>, Vec<Record>>,
    /// For each ancestor of a name that has records, per zone, how many names with records
    /// of that zone lie below it: an ancestor listed here exists in the DNS (an empty
    /// non-terminal of that zone if it has no records there).
    below: HashMap<Box<str>, Vec<(i32, u32)>>,
    records: usize,
}

/// The proper ancestors of a name in storage form (`a.b.c` → `b.c`, `c`).
fn ancestors(name: &str) -> impl Iterator<Item = &str> {
    name.match_indices('.').map(move |(i, _)| &name[i + 1..])
}

/// Whether `name` lies strictly below `apex` (both in storage form; `""` is the root).
fn is_below(name: &str, apex: &str) -> bool {
    if apex.is_empty() {
        return !name.is_empty();
    }
    name.len() > apex.len()
        && name.ends_with(apex)
        && name.as_bytes()[name.len() - apex.len() - 1] == b'.'
}

/// The zones (`domain_id`s) that records belong to, each once.
fn zone_ids(records: &[Record]) -> Vec<i32> {
    let mut ids: Vec<i32> = records.iter().map(|r| r.domain_id).collect();
    ids.sort_unstable();
    ids.dedup();
    ids
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
        let present: Vec<(Box<str>, Vec<i32>)> = zones
            .names
            .iter()
            .map(|(n, recs)| (n.clone(), zone_ids(recs)))
            .collect();
        let mut flipped = Vec::new();
        for (name, ids) in present {
            for id in ids {
                zones.note_below(&name, id, true, &mut flipped);
            }
        }
        zones
    }

    /// Counts `name` in (or out of) its ancestors' tallies of names of zone `zone` below them;
    /// the ancestors inside that zone that start or stop being empty non-terminals (their
    /// tally for the zone appears or goes) are added to `flipped`.
    fn note_below(&mut self, name: &str, zone: i32, present: bool, flipped: &mut Vec<String>) {
        let apex = self.domains.get(&zone).map(|d| d.name.as_str());
        for a in ancestors(name) {
            let inside = apex.is_some_and(|z| is_below(a, z));
            if present {
                if !self.below.contains_key(a) {
                    self.below.insert(a.into(), Vec::new());
                }
                let Some(counts) = self.below.get_mut(a) else {
                    continue;
                };
                match counts.iter_mut().find(|(z, _)| *z == zone) {
                    Some((_, n)) => *n += 1,
                    None => {
                        counts.push((zone, 1));
                        if inside {
                            flipped.push(a.to_string());
                        }
                    }
                }
            } else if let Some(counts) = self.below.get_mut(a) {
                if let Some(i) = counts.iter().position(|(z, _)| *z == zone) {
                    if counts[i].1 > 1 {
                        counts[i].1 -= 1;
                    } else {
                        counts.swap_remove(i);
                        if inside {
                            flipped.push(a.to_string());
                        }
                    }
                }
                if counts.is_empty() {
                    self.below.remove(a);
                }
            }
        }
    }

    /// Replaces the zone list.
    pub fn set_domains(&mut self, domains: Vec<Domain>) {
        self.by_name = domains.iter().map(|d| (d.name.clone(), d.id)).collect();
        self.domains = domains.into_iter().map(|d| (d.id, d)).collect();
    }

    /// Replaces every record of `name` (an empty list removes the name). Returns the
    /// ancestors whose answers changed with it: those that became, or stopped being, empty
    /// non-terminals (`_acme-challenge.tun.zone` added makes `tun.zone` exist), which pdns
    /// may hold cached under their own names.
    pub fn replace_name(&mut self, name: &str, records: Vec<Record>) -> Vec<String> {
        let new_zones = zone_ids(&records);
        self.records += records.len();
        let old = if records.is_empty() {
            self.names.remove(name)
        } else {
            self.names.insert(name.into(), records)
        }
        .unwrap_or_default();
        self.records -= old.len();
        let old_zones = zone_ids(&old);
        let mut flipped = Vec::new();
        for z in old_zones.iter().filter(|z| !new_zones.contains(z)) {
            self.note_below(name, *z, false, &mut flipped);
        }
        for z in new_zones.iter().filter(|z| !old_zones.contains(z)) {
            self.note_below(name, *z, true, &mut flipped);
        }
        flipped
    }

    /// Whether some name with records lies below `name` (storage form), in any zone.
    pub fn has_names_below(&self, name: &str) -> bool {
        self.below.contains_key(name)
    }

    /// The zone in which `name` is an empty non-terminal: it lies strictly below the zone's
    /// apex, has no records of that zone, and names with records of that zone lie below it
    /// (`a.b.zone` with records makes `b.zone` exist). The zone is `zone_id` when positive,
    /// else the closest zone enclosing `name`.
    pub fn empty_non_terminal_zone(&self, name: &str, zone_id: i64) -> Option<&Domain> {
        let zone = if zone_id > 0 {
            self.domain(i32::try_from(zone_id).ok()?)?
        } else {
            std::iter::once(name)
                .chain(ancestors(name))
                .chain(std::iter::once(""))
                .find_map(|n| self.zone_at(n))?
        };
        let below = self.below.get(name)?.iter().any(|(z, _)| *z == zone.id);
        let own = self.records_of(name).iter().any(|r| r.domain_id == zone.id);
        (below && !own && is_below(name, &zone.name)).then_some(zone)
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

    /// Whether reads under this snapshot see the work of transaction `xid` (if it committed):
    /// it had ended when the snapshot was taken.
    pub fn sees(&self, xid: u64) -> bool {
        xid < self.xmax && !self.xip.contains(&xid)
    }
}

/// What the memory reflects: the position read before the snapshot it was loaded under, and
/// that snapshot. A commit is in memory once the position reached its LSN **and** the
/// snapshot sees its transaction: on a primary a commit's WAL record is written before the
/// transaction becomes visible, so a position alone can run ahead of what was read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// Every commit whose record ends at or below it had been written when the snapshot was
    /// taken.
    pub lsn: u64,
    /// The snapshot of the last read.
    pub snapshot: Snapshot,
}

impl Applied {
    /// Whether the commit at `lsn` made by transaction `xid` (when known) is in memory.
    pub fn covers(&self, lsn: u64, xid: Option<u64>) -> bool {
        self.lsn >= lsn && xid.is_none_or(|x| self.snapshot.sees(x))
    }
}

/// The store shared by the tailer (writer) and the connectors (readers).
pub struct Store {
    zones: RwLock<Zones>,
    regions: RwLock<Vec<RegionState>>,
    settings: RwLock<ZoneSettings>,
    loaded: AtomicBool,
    applied: watch::Sender<Applied>,
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
            settings: RwLock::new(ZoneSettings::default()),
            loaded: AtomicBool::new(false),
            applied: watch::channel(Applied::default()).0,
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

    /// Replaces everything after a full load; [`Store::publish`] then says what it reflects.
    pub fn replace_all(&self, zones: Zones) {
        self.write(|z| *z = zones);
        self.loaded.store(true, Ordering::Release);
    }

    /// Records what the memory now reflects and wakes every waiter (also when nothing moved:
    /// a waiter re-checks). The position never moves back; the snapshot is the one memory
    /// was last read under (publications come in order, from the one tailer).
    pub fn publish(&self, lsn: u64, snapshot: Snapshot) {
        self.applied.send_modify(|cur| {
            cur.lsn = cur.lsn.max(lsn);
            cur.snapshot = snapshot;
        });
    }

    /// Like [`Store::publish`] after a full load: the position may move back (a standby
    /// that restarted at an earlier point, or another server).
    pub fn reset_applied(&self, lsn: u64, snapshot: Snapshot) {
        self.applied.send_modify(|cur| {
            cur.lsn = lsn;
            cur.snapshot = snapshot;
        });
    }

    /// The position applied so far.
    pub fn applied_lsn(&self) -> u64 {
        self.applied.borrow().lsn
    }

    /// A receiver that sees every publication.
    pub fn watch_applied(&self) -> watch::Receiver<Applied> {
        self.applied.subscribe()
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

    /// Replaces the zone settings (metadata and TSIG keys).
    pub fn set_settings(&self, settings: ZoneSettings) {
        *self.settings.write().unwrap_or_else(|e| e.into_inner()) = settings;
    }

    /// Metadata rows of a zone.
    pub fn metadata_of(&self, zone: &str) -> Vec<(String, String)> {
        let guard = self.settings.read().unwrap_or_else(|e| e.into_inner());
        guard.metadata.get(zone).cloned().unwrap_or_default()
    }

    /// The TSIG key named `name` (storage form); the first by id if several algorithms share
    /// the name (pdns 4.7 asks by name only).
    pub fn tsig_key(&self, name: &str) -> Option<TsigKey> {
        let guard = self.settings.read().unwrap_or_else(|e| e.into_inner());
        guard.tsig_keys.iter().find(|k| k.name == name).cloned()
    }

    /// Every TSIG key.
    pub fn tsig_keys(&self) -> Vec<TsigKey> {
        let guard = self.settings.read().unwrap_or_else(|e| e.into_inner());
        guard.tsig_keys.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(t: &str, c: &str, d: i32) -> Record {
        Record::of(d, t, c, 10)
    }

    fn zone(id: i32, name: &str) -> Domain {
        Domain::native(id, name)
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
    fn names_below_are_tracked_as_names_come_and_go() {
        let mut z = Zones::new(
            vec![zone(1, "a.test")],
            vec![("x.y.a.test".to_string(), rec("TXT", "\"t\"", 1))],
        );
        assert!(z.has_names_below("y.a.test"));
        assert!(z.has_names_below("a.test"));
        assert!(!z.has_names_below("x.y.a.test"));
        z.replace_name("w.y.a.test", vec![rec("TXT", "\"u\"", 1)]);
        z.replace_name("w.y.a.test", vec![rec("TXT", "\"v\"", 1)]);
        z.replace_name("x.y.a.test", vec![]);
        assert!(z.has_names_below("y.a.test"));
        z.replace_name("w.y.a.test", vec![]);
        z.replace_name("gone.a.test", vec![]);
        assert!(!z.has_names_below("y.a.test"));
        assert!(!z.has_names_below("a.test"));
    }

    #[test]
    fn empty_non_terminals_are_names_of_a_zone_with_only_its_names_below() {
        let mut z = Zones::new(
            vec![zone(1, "a.test"), zone(2, "sub.a.test")],
            vec![
                ("a.test".to_string(), rec("SOA", "ns. h. 1 1 1 1 5", 1)),
                ("x.b.c.a.test".to_string(), rec("A", "192.0.2.1", 1)),
                ("sub.a.test".to_string(), rec("SOA", "ns. h. 1 1 1 1 5", 2)),
                ("q.p.sub.a.test".to_string(), rec("A", "192.0.2.2", 2)),
                (
                    "_acme-challenge.t.a.test".to_string(),
                    rec("TXT", "\"v\"", 1),
                ),
            ],
        );
        let ent = |z: &Zones, n: &str, id: i64| z.empty_non_terminal_zone(n, id).map(|d| d.id);
        assert_eq!(ent(&z, "b.c.a.test", 1), Some(1));
        assert_eq!(ent(&z, "c.a.test", -1), Some(1));
        assert_eq!(ent(&z, "t.a.test", 1), Some(1));
        // Names with records, the apex, names with nothing below, and other zones: no.
        assert_eq!(ent(&z, "x.b.c.a.test", 1), None);
        assert_eq!(ent(&z, "a.test", 1), None);
        assert_eq!(ent(&z, "nothere.a.test", 1), None);
        assert_eq!(ent(&z, "b.c.a.test", 2), None);
        // Below a child zone's apex, the child zone's names decide.
        assert_eq!(ent(&z, "p.sub.a.test", -1), Some(2));
        assert_eq!(ent(&z, "p.sub.a.test", 1), None);
        // Above every zone: nothing.
        assert_eq!(ent(&z, "test", -1), None);
        // It goes when the last name below goes (those ancestors are reported, to be purged
        // from pdns's caches), and stops being empty when it gets records.
        let mut flipped = z.replace_name("x.b.c.a.test", vec![]);
        flipped.sort();
        assert_eq!(flipped, ["b.c.a.test", "c.a.test"]);
        assert_eq!(ent(&z, "c.a.test", 1), None);
        assert_eq!(
            z.replace_name("q.c.a.test", vec![rec("A", "192.0.2.3", 1)]),
            ["c.a.test"]
        );
        assert_eq!(ent(&z, "c.a.test", 1), Some(1));
        // Another name below an existing one changes no ancestor.
        assert!(z
            .replace_name("r.c.a.test", vec![rec("A", "192.0.2.4", 1)])
            .is_empty());
        z.replace_name("c.a.test", vec![rec("TXT", "\"own\"", 1)]);
        assert_eq!(ent(&z, "c.a.test", 1), None);
        // A name moving between zones moves its ancestors' tallies with it.
        z.replace_name("q.p.sub.a.test", vec![rec("A", "192.0.2.2", 1)]);
        assert_eq!(ent(&z, "p.sub.a.test", 2), None);
        assert_eq!(ent(&z, "p.sub.a.test", 1), Some(1));
    }

    #[test]
    fn applied_position_only_moves_forward() {
        let s = Store::new();
        s.publish(10, Snapshot::default());
        s.publish(5, Snapshot::default());
        assert_eq!(s.applied_lsn(), 10);
        // A full load after a reconnect states what memory holds now, even if lower.
        s.reset_applied(7, Snapshot::default());
        assert_eq!(s.applied_lsn(), 7);
    }

    #[test]
    fn a_commit_is_covered_only_once_the_snapshot_sees_it() {
        let applied = Applied {
            lsn: 100,
            snapshot: Snapshot::parse("50:60:52,55").unwrap(),
        };
        assert!(applied.covers(100, None));
        assert!(applied.covers(90, Some(51)));
        assert!(applied.covers(90, Some(59)));
        // In progress when the snapshot was taken, or not ended yet: its WAL record may be
        // below the position while its rows were not visible to the read.
        assert!(!applied.covers(90, Some(52)));
        assert!(!applied.covers(90, Some(60)));
        assert!(!applied.covers(90, Some(70)));
        assert!(!applied.covers(101, Some(51)));
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
        s.publish(20, snap.clone());
        assert_eq!(s.applied_lsn(), 20);
        assert_eq!(s.watch_applied().borrow().snapshot, snap);
    }
}
