//! What one lookup answers: the name's records from the store, except that the connect name
//! (a zone apex) answers A/AAAA with the nearest healthy region's address, chosen in
//! [`crate::apex`], and so may a name without records in a zone set to `nearest_edge`. The
//! records are decided here; [`crate::protocol`] shapes them for pdns.

use crate::apex::Choice;
use crate::store::{Domain, Record, Zones};
use std::borrow::Cow;
use std::collections::HashSet;

/// The rules of the computed answers.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    /// TTL of the connect name's A/AAAA (and of the unknown names that answer like it).
    pub apex_ttl: u32,
    /// Zones (storage form) whose unknown names answer like the connect name.
    pub nearest_edge_zones: HashSet<String>,
}

/// A lookup, its name already in storage form (lowercase, no trailing dot).
#[derive(Debug, Clone, Copy)]
pub struct Question<'q> {
    /// The name asked for.
    pub name: &'q str,
    /// The type asked for, upper case; `ANY` for every type.
    pub qtype: &'q str,
    /// The zone pdns expects the answer from; 0 or less for any zone.
    pub zone_id: i64,
}

/// One record of an answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer<'z> {
    /// Record type (`A`, `CNAME`, …).
    pub qtype: &'z str,
    /// Record data in zone-file form.
    pub content: Cow<'z, str>,
    /// Time to live, seconds.
    pub ttl: i64,
    /// The zone's id.
    pub domain_id: i32,
    /// ECS scope prefix length the record is valid for; 0 for records valid for everyone.
    pub scope: u8,
}

impl<'z> Answer<'z> {
    /// A record as the store holds it.
    pub fn stored(r: &'z Record) -> Answer<'z> {
        Answer {
            qtype: &r.qtype,
            content: Cow::Borrowed(&r.content),
            ttl: r.ttl as i64,
            domain_id: r.domain_id,
            scope: 0,
        }
    }
}

impl Answer<'static> {
    /// The marker of an empty non-terminal of zone `domain_id`: a record of type "" without
    /// content, which pdns reads as type 0 (`ENT`) and never puts in a response.
    pub fn empty_non_terminal(domain_id: i32) -> Answer<'static> {
        Answer {
            qtype: "",
            content: Cow::Borrowed(""),
            ttl: 0,
            domain_id,
            scope: 0,
        }
    }
}

impl Question<'_> {
    fn wants(&self, qtype: &str) -> bool {
        self.qtype == "ANY" || self.qtype == qtype
    }

    fn in_zone(&self, domain_id: i32) -> bool {
        self.zone_id <= 0 || domain_id as i64 == self.zone_id
    }
}

/// What answered a lookup.
#[derive(Debug, Clone, PartialEq)]
pub struct Answered<'z> {
    /// The records.
    pub records: Vec<Answer<'z>>,
    /// The zone, when the name has no records of its own and answered like its connect name.
    pub unknown_name_of: Option<&'z str>,
}

/// The records answering `q`. At a zone apex asked for A, AAAA or ANY, `choose` picks the
/// region whose addresses replace the stored A/AAAA, with the apex TTL and the choice's
/// scope; an unknown name of a `nearest_edge` zone ([`unknown_name_zone`]) answers the same.
pub fn lookup<'z>(
    zones: &'z Zones,
    q: Question<'_>,
    choose: impl FnOnce() -> Option<Choice>,
    rules: &Rules,
) -> Answered<'z> {
    let at_apex = zones.zone_at(q.name);
    let unknown = match at_apex {
        Some(_) => None,
        None => unknown_name_zone(zones, q.name, rules),
    };
    let like_apex = at_apex.or(unknown).filter(|d| q.in_zone(d.id));
    let choice = match like_apex {
        Some(_) if q.wants("A") || q.wants("AAAA") => choose(),
        _ => None,
    };
    let mut out: Vec<Answer> = zones
        .records_of(q.name)
        .iter()
        .filter(|r| q.in_zone(r.domain_id) && q.wants(&r.qtype))
        .filter(|r| choice.is_none() || !matches!(&*r.qtype, "A" | "AAAA"))
        .map(Answer::stored)
        .collect();
    if let (Some(c), Some(d)) = (choice, like_apex) {
        let addresses = [("A", c.region.ipv4), ("AAAA", c.region.ipv6)];
        for (qtype, ip) in addresses {
            if let (true, Some(ip)) = (q.wants(qtype), ip) {
                out.push(Answer {
                    qtype,
                    content: Cow::Owned(ip),
                    ttl: rules.apex_ttl as i64,
                    domain_id: d.id,
                    scope: c.scope,
                });
            }
        }
    }
    // A name that exists only because names below it do: pdns's own `ANY` lookup must get
    // something, or it answers NXDOMAIN (and lets a wildcard above match it). gpgsql hands it
    // the typeless row `pdnsutil rectify-zone` writes; that row, when stored, is among the
    // records already. Typed lookups get nothing, as gpgsql's typed query finds nothing.
    if out.is_empty() && q.qtype == "ANY" {
        if let Some(d) = zones.empty_non_terminal_zone(q.name, q.zone_id) {
            out.push(Answer::empty_non_terminal(d.id));
        }
    }
    let unknown_name_of = unknown.filter(|_| !out.is_empty()).map(|d| d.name.as_str());
    Answered {
        records: out,
        unknown_name_of,
    }
}

/// The zone whose connect-name answer the unknown name `name` gets, if any: `name` is one
/// label directly below the apex of a zone set to `nearest_edge`, that label is one a tunnel
/// could hold (so not `_acme-challenge`, `www`, `mail`: [`nearhop_wire::normalize_label`]),
/// and the name has no records and no names below it (it does not exist in any other way).
///
/// One label only: that is where tunnels live and what a wildcard certificate covers. It
/// also keeps delegations out, since the only ancestor inside the zone is the apex, and a
/// delegation at the name itself is a record of its own (pdns answers names below a
/// delegation with a referral before it asks for their records anyway).
///
/// Only A/AAAA (and ANY) are computed, so any other type asked of such a name is NOERROR
/// with no data: the name exists, it just has no record of that type.
pub fn unknown_name_zone<'z>(zones: &'z Zones, name: &str, rules: &Rules) -> Option<&'z Domain> {
    let (label, parent) = name.split_once('.')?;
    let zone = zones.zone_at(parent)?;
    let usable = rules.nearest_edge_zones.contains(&zone.name)
        && zones.records_of(name).is_empty()
        && !zones.has_names_below(name)
        && nearhop_wire::normalize_label(label).is_ok_and(|l| l == label);
    usable.then_some(zone)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Domain, RegionState};
    use std::time::Instant;

    fn zones() -> Zones {
        let pro = |t: &str, c: &str| Record::of(1, t, c, 60);
        let free = |t: &str, c: &str| Record::of(2, t, c, 60);
        let row = |n: &str, r: Record| (n.to_string(), r);
        Zones::new(
            vec![
                Domain::native(1, "a.tunnel.test"),
                Domain::native(2, "free.tunnel.test"),
            ],
            vec![
                row("a.tunnel.test", pro("A", "192.0.2.1")),
                row("a.tunnel.test", pro("NS", "ns1.a.tunnel.test.")),
                row("us.a.tunnel.test", pro("A", "127.0.0.1")),
                row("blog.a.tunnel.test", pro("CNAME", "us.a.tunnel.test.")),
                row("note.a.tunnel.test", pro("TXT", "\"kept\"")),
                row("sub.a.tunnel.test", pro("NS", "ns.elsewhere.example.")),
                row(
                    "_x._tcp.ent.a.tunnel.test",
                    pro("SRV", "0 0 1 us.a.tunnel.test."),
                ),
                row("free.tunnel.test", free("NS", "ns1.free.tunnel.test.")),
            ],
        )
    }

    fn pro_on() -> Rules {
        Rules {
            apex_ttl: 10,
            nearest_edge_zones: ["a.tunnel.test".to_string()].into(),
        }
    }

    fn eu() -> Choice {
        Choice {
            region: RegionState {
                name: "eu".into(),
                ipv4: Some("127.0.0.2".into()),
                ipv6: Some("::2".into()),
                heartbeat_age_secs: Some(0.0),
                read_at: Instant::now(),
            },
            scope: 24,
        }
    }

    fn ask<'q>(name: &'q str, qtype: &'q str) -> Question<'q> {
        Question {
            name,
            qtype,
            zone_id: -1,
        }
    }

    /// `qtype content ttl/scope` of each record, in answer order.
    fn shown(a: &Answered) -> Vec<String> {
        a.records
            .iter()
            .map(|r| format!("{} {} {}/{}", r.qtype, r.content, r.ttl, r.scope))
            .collect()
    }

    #[test]
    fn the_apex_answers_the_chosen_region_instead_of_its_stored_address() {
        let z = zones();
        let got = lookup(&z, ask("a.tunnel.test", "A"), || Some(eu()), &pro_on());
        assert_eq!(shown(&got), ["A 127.0.0.2 10/24"]);
        assert_eq!(got.unknown_name_of, None);
        let any: Vec<&str> = lookup(&z, ask("a.tunnel.test", "ANY"), || Some(eu()), &pro_on())
            .records
            .iter()
            .map(|a| a.qtype)
            .collect();
        assert_eq!(any, ["NS", "A", "AAAA"]);
    }

    #[test]
    fn other_types_never_ask_for_a_region() {
        let z = zones();
        let got = lookup(
            &z,
            ask("a.tunnel.test", "NS"),
            || panic!("no choice for NS"),
            &pro_on(),
        );
        assert_eq!(got.records.len(), 1);
        assert_eq!(got.records[0].scope, 0);
    }

    /// The decision table of unknown names: (name, qtype, rules on for the pro zone?) →
    /// records answered.
    #[test]
    fn unknown_names_answer_like_the_connect_name_only_where_nothing_else_exists() {
        let z = zones();
        let off = Rules {
            apex_ttl: 10,
            ..Rules::default()
        };
        let apex_a = ["A 127.0.0.2 10/24"];
        let apex_any = ["A 127.0.0.2 10/24", "AAAA ::2 10/24"];
        let none: [&str; 0] = [];
        let cases: &[(&str, &str, &Rules, &[&str])] = &[
            // A name with records of its own answers them, whatever the setting.
            (
                "blog.a.tunnel.test",
                "CNAME",
                &pro_on(),
                &["CNAME us.a.tunnel.test. 60/0"],
            ),
            ("blog.a.tunnel.test", "A", &pro_on(), &none),
            ("us.a.tunnel.test", "A", &pro_on(), &["A 127.0.0.1 60/0"]),
            // No records at all: the connect name's A/AAAA when on, nothing (NXDOMAIN) when off.
            ("nothere.a.tunnel.test", "A", &pro_on(), &apex_a),
            (
                "nothere.a.tunnel.test",
                "AAAA",
                &pro_on(),
                &["AAAA ::2 10/24"],
            ),
            ("nothere.a.tunnel.test", "ANY", &pro_on(), &apex_any),
            ("nothere.a.tunnel.test", "A", &off, &none),
            // Other types of such a name: no data (pdns's own ANY lookup finds the A/AAAA,
            // so the name exists and the answer is NOERROR without records).
            ("nothere.a.tunnel.test", "TXT", &pro_on(), &none),
            ("nothere.a.tunnel.test", "CNAME", &pro_on(), &none),
            ("nothere.a.tunnel.test", "MX", &pro_on(), &none),
            ("nothere.a.tunnel.test", "SOA", &pro_on(), &none),
            ("nothere.a.tunnel.test", "NS", &pro_on(), &none),
            // A name with only other types keeps NOERROR/NODATA for A.
            ("note.a.tunnel.test", "A", &pro_on(), &none),
            (
                "note.a.tunnel.test",
                "ANY",
                &pro_on(),
                &["TXT \"kept\" 60/0"],
            ),
            // A delegation: its NS only; below it (and any deeper name) nothing.
            ("sub.a.tunnel.test", "A", &pro_on(), &none),
            (
                "sub.a.tunnel.test",
                "ANY",
                &pro_on(),
                &["NS ns.elsewhere.example. 60/0"],
            ),
            ("x.sub.a.tunnel.test", "A", &pro_on(), &none),
            ("deep.er.a.tunnel.test", "A", &pro_on(), &none),
            // An empty non-terminal exists already: nothing computed; pdns's own ANY lookup
            // gets the typeless marker (NOERROR/NODATA), a typed lookup nothing.
            ("ent.a.tunnel.test", "A", &pro_on(), &none),
            ("ent.a.tunnel.test", "ANY", &pro_on(), &["  0/0"]),
            ("_tcp.ent.a.tunnel.test", "ANY", &pro_on(), &["  0/0"]),
            ("_tcp.ent.a.tunnel.test", "TXT", &pro_on(), &none),
            // Labels no tunnel can hold.
            ("_acme-challenge.a.tunnel.test", "A", &pro_on(), &none),
            ("www.a.tunnel.test", "A", &pro_on(), &none),
            ("xn--bcher-kva.a.tunnel.test", "A", &pro_on(), &none),
            // Another zone, not set: NXDOMAIN; out of every zone: nothing.
            ("nothere.free.tunnel.test", "A", &pro_on(), &none),
            ("nothere.example", "A", &pro_on(), &none),
            ("a.tunnel.test.example", "A", &pro_on(), &none),
            // The apex itself is the connect name either way.
            ("a.tunnel.test", "A", &off, &apex_a),
        ];
        for (name, qtype, rules, want) in cases {
            let got = lookup(&z, ask(name, qtype), || Some(eu()), rules);
            assert_eq!(shown(&got), *want, "{name} {qtype}");
            let counted = name.starts_with("nothere.a.") && !want.is_empty();
            assert_eq!(got.unknown_name_of.is_some(), counted, "{name} {qtype}");
        }
    }

    #[test]
    fn unknown_names_follow_the_zone_pdns_asks_in() {
        let z = zones();
        let mut q = ask("nothere.a.tunnel.test", "A");
        q.zone_id = 2;
        assert!(lookup(&z, q, || Some(eu()), &pro_on()).records.is_empty());
        q.zone_id = 1;
        assert_eq!(lookup(&z, q, || Some(eu()), &pro_on()).records.len(), 1);
    }

    #[test]
    fn a_name_that_gets_a_record_stops_being_unknown() {
        let mut z = zones();
        let q = ask("later.a.tunnel.test", "A");
        assert_eq!(
            shown(&lookup(&z, q, || Some(eu()), &pro_on())),
            ["A 127.0.0.2 10/24"]
        );
        z.replace_name(
            "later.a.tunnel.test",
            vec![Record::of(1, "CNAME", "us.a.tunnel.test.", 10)],
        );
        let cname = lookup(
            &z,
            ask("later.a.tunnel.test", "ANY"),
            || Some(eu()),
            &pro_on(),
        );
        assert_eq!(shown(&cname), ["CNAME us.a.tunnel.test. 10/0"]);
        assert_eq!(cname.unknown_name_of, None);
    }
}
