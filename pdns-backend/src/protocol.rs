//! The PowerDNS remote backend protocol (4.7): method dispatch and JSON shapes, answered from
//! the record store; what a lookup answers is decided in [`crate::answer`]. Transports hand
//! this module one request and send back its one reply.
//!
//! Long with its tests (about 150 lines of them): every method's JSON shape is pinned next
//! to the code that writes it.

use crate::answer::{self, Answer, Question, Rules};
use crate::apex::RegionMap;
use crate::metrics::Metrics;
use crate::store::{Domain, Store, Zones};
use nearhop_wire::storage_name;
use serde::Serialize;
use serde_json::{json, Map, Value};
use std::sync::Arc;
use std::time::Instant;

/// The outcome of one call.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// `{"result": value}`; `false` and `[]` mean "no data".
    Result(Value),
    /// A reply without `result`: pdns turns it into SERVFAIL (and reconnects). Used for every
    /// internal failure, never `false`, so that a failure cannot become NXDOMAIN.
    Failure(String),
}

impl Reply {
    /// The JSON text of the reply.
    pub fn to_json(&self) -> String {
        match self {
            Reply::Result(v) => json!({ "result": v }).to_string(),
            Reply::Failure(msg) => {
                json!({ "log": [format!("nearhop-pdns-backend: {msg}")] }).to_string()
            }
        }
    }
}

/// Methods counted under their own name in metrics; everything else is `other`, so hostile
/// input cannot grow the label set.
const KNOWN_METHODS: &[&str] = &[
    "initialize",
    "lookup",
    "list",
    "getalldomains",
    "getalldomainmetadata",
    "getdomainmetadata",
    "getdomaininfo",
    "gettsigkey",
    "gettsigkeys",
    "directbackendcmd",
];

/// One handler for every transport.
pub struct Backend {
    store: Arc<Store>,
    regions: RegionMap,
    rules: Rules,
    metrics: Arc<Metrics>,
}

#[derive(Serialize)]
struct Rr<'a> {
    qtype: &'a str,
    qname: String,
    content: &'a str,
    ttl: i64,
    domain_id: i32,
    auth: u8,
    #[serde(rename = "scopeMask", skip_serializing_if = "is_zero")]
    scope_mask: u8,
}

fn is_zero(v: &u8) -> bool {
    *v == 0
}

/// One record as pdns reads it, owned by `qname`.
fn rr<'a>(qname: String, a: &'a Answer<'_>) -> Rr<'a> {
    Rr {
        qtype: a.qtype,
        qname,
        content: &a.content,
        ttl: a.ttl,
        domain_id: a.domain_id,
        auth: 1,
        scope_mask: a.scope,
    }
}

/// The records as a `result` array (`what` names the answer if encoding fails).
fn render<'a>(what: &str, rrs: impl Iterator<Item = Rr<'a>>) -> Reply {
    match serde_json::to_value(rrs.collect::<Vec<_>>()) {
        Ok(v) => Reply::Result(v),
        Err(e) => Reply::Failure(format!("encoding {what}: {e}")),
    }
}

impl Backend {
    /// A handler over `store`.
    pub fn new(store: Arc<Store>, regions: RegionMap, rules: Rules, metrics: Arc<Metrics>) -> Self {
        Backend {
            store,
            regions,
            rules,
            metrics,
        }
    }

    /// The metrics (transports count malformed input there).
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Parses one request document and answers it. Malformed input gets a reply without
    /// `result` and a log line naming the transport.
    pub fn handle_document(&self, transport: &str, doc: &[u8]) -> Reply {
        let parsed: Value = match serde_json::from_slice(doc) {
            Ok(v) => v,
            Err(e) => return self.malformed(transport, &format!("request is not JSON: {e}")),
        };
        let Some(method) = parsed.get("method").and_then(Value::as_str) else {
            return self.malformed(transport, "request has no string `method`");
        };
        let empty = Map::new();
        let params = match parsed.get("parameters") {
            Some(Value::Object(m)) => m,
            None | Some(Value::Null) => &empty,
            Some(_) => return self.malformed(transport, "`parameters` is not an object"),
        };
        self.call(method, params)
    }

    fn malformed(&self, transport: &str, why: &str) -> Reply {
        self.metrics
            .bad_requests
            .with_label_values(&[transport])
            .inc();
        tracing::warn!(transport, "refused a malformed request: {why}");
        Reply::Failure(why.to_string())
    }

    /// Answers `method` (matched case-insensitively) with `params`.
    pub fn call(&self, method: &str, params: &Map<String, Value>) -> Reply {
        let started = Instant::now();
        let lower = method.to_ascii_lowercase();
        let reply = match lower.as_str() {
            "initialize" => Reply::Result(Value::Bool(true)),
            "lookup" => self.lookup(params),
            "list" => self.list(params),
            "getalldomains" => self.get_all_domains(),
            "getalldomainmetadata" => self.get_all_domain_metadata(params),
            "getdomainmetadata" => self.get_domain_metadata(params),
            "getdomaininfo" => self.get_domain_info(params),
            "gettsigkey" => self.get_tsig_key(params),
            "gettsigkeys" => self.get_tsig_keys(),
            "directbackendcmd" => self.direct_backend_cmd(params),
            _ => Reply::Result(Value::Bool(false)),
        };
        let label = if KNOWN_METHODS.contains(&lower.as_str()) {
            lower.as_str()
        } else {
            "other"
        };
        let result = match &reply {
            Reply::Result(Value::Bool(false)) => "false",
            Reply::Result(Value::Array(a)) if a.is_empty() => "empty",
            Reply::Result(_) => "ok",
            Reply::Failure(_) => "error",
        };
        self.metrics.calls.with_label_values(&[label, result]).inc();
        self.metrics
            .call_seconds
            .with_label_values(&[label])
            .observe(started.elapsed().as_secs_f64());
        reply
    }

    fn not_loaded(&self) -> Option<Reply> {
        if self.store.is_loaded() {
            None
        } else {
            Some(Reply::Failure(
                "zones not loaded yet (replica unreachable since start)".into(),
            ))
        }
    }

    fn lookup(&self, params: &Map<String, Value>) -> Reply {
        let Some(qname) = params.get("qname").and_then(Value::as_str) else {
            return Reply::Failure("lookup without a string qname".into());
        };
        let qtype = params
            .get("qtype")
            .and_then(Value::as_str)
            .unwrap_or("ANY")
            .to_ascii_uppercase();
        let zone_id = param_int(params, "zone-id").unwrap_or(-1);
        let real_remote = params
            .get("real-remote")
            .and_then(Value::as_str)
            .unwrap_or("0.0.0.0/0");
        // A name that cannot be valid (too long, empty labels, control bytes) has no records.
        let Some(name) = storage_name(qname) else {
            tracing::debug!(len = qname.len(), "lookup of an invalid name");
            return Reply::Result(Value::Array(vec![]));
        };
        if let Some(r) = self.not_loaded() {
            return r;
        }
        tracing::trace!(%name, %qtype, zone_id, real_remote, "lookup");
        let question = Question {
            name: &name,
            qtype: &qtype,
            zone_id,
        };
        let choose = || {
            self.store
                .with_regions(|rs| self.regions.choose(real_remote, rs))
        };
        let owner = format!("{name}.");
        self.store.read(|zones| {
            let answered = answer::lookup(zones, question, choose, &self.rules);
            if let Some(zone) = answered.unknown_name_of {
                self.metrics
                    .unknown_name_answers
                    .with_label_values(&[zone])
                    .inc();
            }
            render(
                "lookup answer",
                answered.records.iter().map(|a| rr(owner.clone(), a)),
            )
        })
    }

    fn list(&self, params: &Map<String, Value>) -> Reply {
        if let Some(r) = self.not_loaded() {
            return r;
        }
        let id = param_int(params, "domain_id").unwrap_or(-1);
        let zonename = params
            .get("zonename")
            .and_then(Value::as_str)
            .and_then(storage_name);
        self.store.read(|zones| {
            let domain = zones
                .domain(id as i32)
                .filter(|_| id > 0)
                .or_else(|| zonename.as_deref().and_then(|n| zones.zone_at(n)));
            let Some(domain) = domain else {
                return Reply::Result(Value::Bool(false));
            };
            // In name and type order, as gpgsql's list query returns them.
            let mut records = zones.zone_records(domain.id);
            records.sort_by(|a, b| (a.0, &a.1.qtype).cmp(&(b.0, &b.1.qtype)));
            let answers: Vec<(String, Answer)> = records
                .into_iter()
                .map(|(n, r)| (format!("{n}."), Answer::stored(r)))
                .collect();
            render("list", answers.iter().map(|(n, a)| rr(n.clone(), a)))
        })
    }

    fn get_all_domains(&self) -> Reply {
        if let Some(r) = self.not_loaded() {
            return r;
        }
        self.store.read(|zones| {
            let mut all: Vec<&Domain> = zones.domains().collect();
            all.sort_by_key(|d| d.id);
            Reply::Result(Value::Array(
                all.into_iter().map(|d| domain_info(zones, d)).collect(),
            ))
        })
    }

    fn get_domain_info(&self, params: &Map<String, Value>) -> Reply {
        if let Some(r) = self.not_loaded() {
            return r;
        }
        let Some(name) = params
            .get("name")
            .and_then(Value::as_str)
            .and_then(storage_name)
        else {
            return Reply::Result(Value::Bool(false));
        };
        self.store.read(|zones| match zones.zone_at(&name) {
            Some(d) => Reply::Result(domain_info(zones, d)),
            None => Reply::Result(Value::Bool(false)),
        })
    }

    fn get_all_domain_metadata(&self, params: &Map<String, Value>) -> Reply {
        let Some(name) = params
            .get("name")
            .and_then(Value::as_str)
            .and_then(storage_name)
        else {
            return Reply::Result(json!({}));
        };
        let mut out = Map::new();
        for (kind, content) in self.store.metadata_of(&name) {
            let entry = out.entry(kind).or_insert_with(|| Value::Array(vec![]));
            if let Value::Array(a) = entry {
                a.push(Value::String(content));
            }
        }
        Reply::Result(Value::Object(out))
    }

    fn get_domain_metadata(&self, params: &Map<String, Value>) -> Reply {
        let name = params
            .get("name")
            .and_then(Value::as_str)
            .and_then(storage_name);
        let kind = params.get("kind").and_then(Value::as_str);
        let (Some(name), Some(kind)) = (name, kind) else {
            return Reply::Result(Value::Array(vec![]));
        };
        let values: Vec<Value> = self
            .store
            .metadata_of(&name)
            .into_iter()
            .filter(|(k, _)| k == kind)
            .map(|(_, c)| Value::String(c))
            .collect();
        Reply::Result(Value::Array(values))
    }

    /// `getTSIGKey` (pdns sends it only with `remote-dnssec=yes`): the key's algorithm and
    /// secret, `false` for an unknown name.
    fn get_tsig_key(&self, params: &Map<String, Value>) -> Reply {
        if let Some(r) = self.not_loaded() {
            return r;
        }
        let name = params
            .get("name")
            .and_then(Value::as_str)
            .and_then(storage_name);
        match name.and_then(|n| self.store.tsig_key(&n)) {
            Some(k) => Reply::Result(json!({"algorithm": k.algorithm, "content": k.secret})),
            None => Reply::Result(Value::Bool(false)),
        }
    }

    /// `getTSIGKeys`: every key (pdnsutil list-tsig-keys, the API).
    fn get_tsig_keys(&self) -> Reply {
        if let Some(r) = self.not_loaded() {
            return r;
        }
        let keys: Vec<Value> = self
            .store
            .tsig_keys()
            .into_iter()
            .map(|k| json!({"name": format!("{}.", k.name), "algorithm": k.algorithm, "content": k.secret}))
            .collect();
        Reply::Result(Value::Array(keys))
    }

    fn direct_backend_cmd(&self, params: &Map<String, Value>) -> Reply {
        let query = params.get("query").and_then(Value::as_str).unwrap_or("");
        let answer = match query.trim().to_ascii_uppercase().as_str() {
            "PING" => "PONG".to_string(),
            "STATUS" => format!(
                "loaded={} records={} applied_lsn={} seconds_since_contact={:.3}",
                self.store.is_loaded(),
                self.store.read(Zones::record_count),
                crate::replica::format_lsn(self.store.applied_lsn()),
                self.store.seconds_since_contact()
            ),
            _ => "unknown command (try PING or STATUS)".to_string(),
        };
        Reply::Result(Value::String(answer))
    }
}

fn domain_info(zones: &Zones, d: &Domain) -> Value {
    json!({
        "id": d.id,
        "zone": format!("{}.", d.name),
        "kind": d.kind.to_ascii_lowercase(),
        "serial": zones.serial(d),
        "notified_serial": d.notified_serial.unwrap_or(0),
        "last_check": d.last_check.unwrap_or(0),
        "masters": d.masters,
    })
}

/// An integer parameter sent as a number or as a numeric string (the http connector sends
/// everything as strings).
fn param_int(params: &Map<String, Value>, key: &str) -> Option<i64> {
    match params.get(key)? {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Record, RegionState};

    fn backend() -> Backend {
        let store = Arc::new(Store::new());
        let domains = vec![Domain::native(1, "a.tunnel.test")];
        let rec = |t: &str, c: &str| Record::of(1, t, c, 10);
        let rows = vec![
            (
                "a.tunnel.test".to_string(),
                rec(
                    "SOA",
                    "ns1.a.tunnel.test. hostmaster.a.tunnel.test. 3 10800 3600 604800 5",
                ),
            ),
            ("a.tunnel.test".to_string(), rec("NS", "ns1.a.tunnel.test.")),
            ("us.a.tunnel.test".to_string(), rec("A", "127.0.0.1")),
            (
                "blog.a.tunnel.test".to_string(),
                rec("CNAME", "us.a.tunnel.test."),
            ),
        ];
        store.replace_all(Zones::new(domains, rows));
        store.publish(1, crate::store::Snapshot::default());
        store.set_regions(vec![RegionState {
            name: "us".into(),
            ipv4: Some("127.0.0.1".into()),
            ipv6: None,
            heartbeat_age_secs: Some(0.0),
            read_at: Instant::now(),
        }]);
        Backend::new(
            store,
            RegionMap::new(vec![], "us".into(), 30.0),
            Rules {
                apex_ttl: 10,
                nearest_edge_zones: ["a.tunnel.test".to_string()].into(),
            },
            Arc::new(Metrics::new()),
        )
    }

    fn lookup(b: &Backend, qname: &str, qtype: &str, zone_id: i64) -> Value {
        let req = json!({"method":"lookup","parameters":{"qname":qname,"qtype":qtype,
            "zone-id":zone_id,"remote":"127.0.0.1","local":"127.0.0.1","real-remote":"127.0.0.1/32"}});
        match b.handle_document("test", req.to_string().as_bytes()) {
            Reply::Result(v) => v,
            Reply::Failure(m) => panic!("failure: {m}"),
        }
    }

    #[test]
    fn lookup_matches_names_case_insensitively_with_trailing_dot() {
        let b = backend();
        let v = lookup(&b, "BLOG.A.Tunnel.Test.", "ANY", 1);
        assert_eq!(v[0]["qtype"], "CNAME");
        assert_eq!(v[0]["content"], "us.a.tunnel.test.");
        assert_eq!(v[0]["ttl"], 10);
        assert_eq!(v[0]["domain_id"], 1);
    }

    #[test]
    fn lookup_of_a_specific_type_filters_and_wrong_zone_id_is_empty() {
        let b = backend();
        assert_eq!(
            lookup(&b, "a.tunnel.test.", "SOA", -1)
                .as_array()
                .map(Vec::len),
            Some(1)
        );
        assert_eq!(lookup(&b, "blog.a.tunnel.test.", "A", -1), json!([]));
        assert_eq!(lookup(&b, "blog.a.tunnel.test.", "ANY", 7), json!([]));
    }

    #[test]
    fn apex_any_carries_the_region_address_with_a_scope_mask() {
        let b = backend();
        let v = lookup(&b, "a.tunnel.test.", "ANY", 1);
        let a = v
            .as_array()
            .and_then(|a| a.iter().find(|r| r["qtype"] == "A"))
            .expect("apex A");
        assert_eq!(a["content"], "127.0.0.1");
        assert_eq!(a["scopeMask"], 32);
    }

    #[test]
    fn unknown_names_of_a_nearest_edge_zone_answer_the_region_and_are_counted() {
        let b = backend();
        let v = lookup(&b, "NotYet.a.tunnel.test.", "ANY", 1);
        assert_eq!(v[0]["qtype"], "A");
        assert_eq!(v[0]["qname"], "notyet.a.tunnel.test.");
        assert_eq!(v[0]["content"], "127.0.0.1");
        assert_eq!(v[0]["ttl"], 10);
        assert_eq!(v[0]["scopeMask"], 32);
        assert_eq!(lookup(&b, "notyet.a.tunnel.test.", "TXT", 1), json!([]));
        let text = b.metrics().render();
        assert!(
            text.contains(
                "nearhop_pdns_backend_unknown_name_answers_total{zone=\"a.tunnel.test\"} 1"
            ),
            "{text}"
        );
    }

    #[test]
    fn overlong_and_garbage_names_are_no_data_not_failures() {
        let b = backend();
        let long = format!("{}.a.tunnel.test.", "x".repeat(300));
        assert_eq!(lookup(&b, &long, "ANY", -1), json!([]));
        assert_eq!(lookup(&b, "a..b.", "ANY", -1), json!([]));
    }

    #[test]
    fn malformed_documents_get_a_reply_without_result() {
        let b = backend();
        for doc in [
            &b"{not json"[..],
            b"\xff\xfe\x00",
            b"[1,2]",
            b"{\"method\":1}",
        ] {
            let r = b.handle_document("test", doc);
            assert!(matches!(r, Reply::Failure(_)), "{r:?}");
            assert!(!r.to_json().contains("\"result\""));
        }
    }

    #[test]
    fn unknown_methods_answer_false() {
        let b = backend();
        let r = b.handle_document("test", br#"{"method":"feedRecord","parameters":{}}"#);
        assert_eq!(r, Reply::Result(Value::Bool(false)));
    }

    #[test]
    fn lookups_before_the_first_load_fail_instead_of_answering_empty() {
        let b = Backend::new(
            Arc::new(Store::new()),
            RegionMap::new(vec![], "us".into(), 30.0),
            Rules {
                apex_ttl: 10,
                nearest_edge_zones: ["a.tunnel.test".to_string()].into(),
            },
            Arc::new(Metrics::new()),
        );
        let r = b.handle_document(
            "test",
            br#"{"method":"lookup","parameters":{"qname":"x.a.tunnel.test.","qtype":"ANY"}}"#,
        );
        assert!(matches!(r, Reply::Failure(_)));
    }

    #[test]
    fn get_all_domains_reports_the_serial_and_a_dotted_zone() {
        let b = backend();
        let r = b.call("getAllDomains", &Map::new());
        let Reply::Result(v) = r else {
            panic!("failure")
        };
        assert_eq!(v[0]["zone"], "a.tunnel.test.");
        assert_eq!(v[0]["serial"], 3);
        assert_eq!(v[0]["kind"], "native");
    }

    #[test]
    fn tsig_keys_are_served_by_name_in_any_case_and_unknown_ones_are_false() {
        let b = backend();
        b.store.set_settings(crate::store::ZoneSettings {
            metadata: Default::default(),
            tsig_keys: vec![crate::store::TsigKey {
                name: "xfr-key".into(),
                algorithm: "hmac-sha256".into(),
                secret: "c2VjcmV0".into(),
            }],
        });
        let ask = |name: &str| {
            b.handle_document(
                "test",
                json!({"method":"getTSIGKey","parameters":{"name":name}})
                    .to_string()
                    .as_bytes(),
            )
        };
        assert_eq!(
            ask("XFR-Key."),
            Reply::Result(json!({"algorithm":"hmac-sha256","content":"c2VjcmV0"}))
        );
        assert_eq!(ask("other."), Reply::Result(Value::Bool(false)));
        assert_eq!(
            b.call("getTSIGKeys", &Map::new()),
            Reply::Result(
                json!([{"name":"xfr-key.","algorithm":"hmac-sha256","content":"c2VjcmV0"}])
            )
        );
    }

    #[test]
    fn an_empty_non_terminal_answers_a_typeless_record_to_any_only() {
        let b = backend();
        b.store.write(|z| {
            z.replace_name(
                "_acme-challenge.blog.a.tunnel.test",
                vec![Record::of(1, "TXT", "\"token\"", 10)],
            )
        });
        b.store.write(|z| {
            z.replace_name(
                "x.deep.a.tunnel.test",
                vec![Record::of(1, "A", "192.0.2.9", 10)],
            )
        });
        assert_eq!(
            lookup(&b, "Deep.a.tunnel.test.", "ANY", 1),
            json!([{"qtype":"","qname":"deep.a.tunnel.test.","content":"","ttl":0,"domain_id":1,"auth":1}])
        );
        assert_eq!(lookup(&b, "deep.a.tunnel.test.", "A", 1), json!([]));
        // A name with records keeps them; the ENT marker is only for names without any.
        let blog = lookup(&b, "blog.a.tunnel.test.", "ANY", 1);
        assert_eq!(blog.as_array().map(Vec::len), Some(1));
        assert_eq!(blog[0]["qtype"], "CNAME");
    }

    #[test]
    fn ping_answers_pong() {
        let b = backend();
        let mut p = Map::new();
        p.insert("query".into(), Value::String("PING".into()));
        assert_eq!(b.call("directBackendCmd", &p), Reply::Result(json!("PONG")));
    }
}
