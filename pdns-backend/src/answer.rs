//! What one lookup answers: the name's records from the store, except that the connect name
//! (a zone apex) answers A/AAAA with the nearest healthy region's address, chosen in
//! [`crate::apex`]. The records are decided here; [`crate::protocol`] shapes them for pdns.

use crate::apex::Choice;
use crate::store::{Record, Zones};
use std::borrow::Cow;

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

impl Question<'_> {
    fn wants(&self, qtype: &str) -> bool {
        self.qtype == "ANY" || self.qtype == qtype
    }

    fn in_zone(&self, domain_id: i32) -> bool {
        self.zone_id <= 0 || domain_id as i64 == self.zone_id
    }
}

/// The records answering `q`. At a zone apex asked for A, AAAA or ANY, `choose` picks the
/// region whose addresses replace the stored A/AAAA, with `apex_ttl` and the choice's scope.
pub fn lookup<'z>(
    zones: &'z Zones,
    q: Question<'_>,
    choose: impl FnOnce() -> Option<Choice>,
    apex_ttl: u32,
) -> Vec<Answer<'z>> {
    let apex = zones.zone_at(q.name).filter(|d| q.in_zone(d.id));
    let choice = match apex {
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
    if let (Some(c), Some(d)) = (choice, apex) {
        let addresses = [("A", c.region.ipv4), ("AAAA", c.region.ipv6)];
        for (qtype, ip) in addresses {
            if let (true, Some(ip)) = (q.wants(qtype), ip) {
                out.push(Answer {
                    qtype,
                    content: Cow::Owned(ip),
                    ttl: apex_ttl as i64,
                    domain_id: d.id,
                    scope: c.scope,
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Domain, RegionState};
    use std::time::Instant;

    fn zones() -> Zones {
        let rec = |t: &str, c: &str| Record::of(1, t, c, 60);
        Zones::new(
            vec![Domain::native(1, "a.tunnel.test")],
            vec![
                ("a.tunnel.test".to_string(), rec("A", "192.0.2.1")),
                ("a.tunnel.test".to_string(), rec("NS", "ns1.a.tunnel.test.")),
            ],
        )
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

    fn ask(qtype: &str) -> Question<'_> {
        Question {
            name: "a.tunnel.test",
            qtype,
            zone_id: -1,
        }
    }

    #[test]
    fn the_apex_answers_the_chosen_region_instead_of_its_stored_address() {
        let z = zones();
        let got = lookup(&z, ask("A"), || Some(eu()), 10);
        assert_eq!(got.len(), 1);
        assert_eq!(
            (got[0].content.as_ref(), got[0].ttl, got[0].scope),
            ("127.0.0.2", 10, 24)
        );
        let any: Vec<&str> = lookup(&z, ask("ANY"), || Some(eu()), 10)
            .iter()
            .map(|a| a.qtype)
            .collect();
        assert_eq!(any, ["NS", "A", "AAAA"]);
    }

    #[test]
    fn other_types_never_ask_for_a_region() {
        let z = zones();
        let got = lookup(&z, ask("NS"), || panic!("no choice for NS"), 10);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].scope, 0);
    }
}
