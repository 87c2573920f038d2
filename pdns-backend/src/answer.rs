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
