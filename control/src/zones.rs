//! Seeds the zones from the configuration: the `domains` rows, each zone's SOA and NS, the
//! address records of its in-zone name servers (`nameserver_addresses`), the regions' edge
//! host records (`us.a.tunnel.test A ...`) and the `regions` table. Idempotent:
//! run at `migrate` and at every `serve` start, so a changed address or TTL takes effect.
//!
//! The apex A/AAAA (the connect name) is not stored: pdns-backend computes it per query from
//! the client's subnet and the regions' health.

use crate::config::{Config, ZoneConfig};
use crate::schema::{domains, records};
use diesel::prelude::*;
use diesel::sql_types::{Nullable, Text};

/// Domain id of a zone, creating the `domains` row if missing.
pub fn ensure_domain(conn: &mut PgConnection, zone: &str) -> QueryResult<i32> {
    diesel::insert_into(domains::table)
        .values((domains::name.eq(zone), domains::kind.eq("NATIVE")))
        .on_conflict_do_nothing()
        .execute(conn)?;
    domains::table
        .filter(domains::name.eq(zone))
        .select(domains::id)
        .first(conn)
}

/// Domain id of a zone: a read, for the hot path (the zones are seeded at start).
pub fn domain_id(conn: &mut PgConnection, zone: &str) -> QueryResult<i32> {
    domains::table
        .filter(domains::name.eq(zone))
        .select(domains::id)
        .first(conn)
}

/// SOA content with all seven fields; `minimum` is the negative-caching TTL. Names are
/// written without the trailing dot, as the generic SQL schema stores them. The contact's
/// label is reserved ([`nearhop_wire::SOA_CONTACT_LABEL`]), so no tunnel takes its name.
pub fn soa_content(zone: &ZoneConfig, serial: u32) -> String {
    format!(
        "{ns} {contact}.{zone} {serial} 10800 3600 604800 {min}",
        ns = zone.nameservers[0].trim_end_matches('.'),
        contact = nearhop_wire::SOA_CONTACT_LABEL,
        zone = zone.name,
        min = zone.negative_ttl
    )
}

/// Writes every zone's infrastructure records and the regions table, one transaction per zone.
pub fn seed(conn: &mut PgConnection, cfg: &Config) -> anyhow::Result<()> {
    conn.transaction::<_, diesel::result::Error, _>(|conn| {
        for r in &cfg.regions {
            diesel::sql_query(
                "INSERT INTO regions (name, ipv4, ipv6) VALUES ($1, $2::inet, $3::inet) \
                 ON CONFLICT (name) DO UPDATE SET ipv4 = EXCLUDED.ipv4, ipv6 = EXCLUDED.ipv6",
            )
            .bind::<Text, _>(&r.name)
            .bind::<Nullable<Text>, _>(r.ipv4.map(|ip| ip.to_string()))
            .bind::<Nullable<Text>, _>(r.ipv6.map(|ip| ip.to_string()))
            .execute(conn)?;
        }
        Ok(())
    })?;
    let serial = chrono::Utc::now().format("%y%m%d%H%M").to_string();
    let serial: u32 = serial.parse().unwrap_or(1);
    for zone in [&cfg.zones.pro, &cfg.zones.free] {
        conn.transaction::<_, diesel::result::Error, _>(|conn| {
            let id = ensure_domain(conn, &zone.name)?;
            let glue = cfg.in_zone_nameserver_records(zone);
            let mut managed: Vec<String> = vec![zone.name.clone()];
            managed.extend(
                cfg.regions
                    .iter()
                    .map(|r| format!("{}.{}", r.name, zone.name)),
            );
            managed.extend(glue.iter().map(|(name, _, _)| name.clone()));
            diesel::delete(
                records::table
                    .filter(records::domain_id.eq(id))
                    .filter(records::name.eq_any(&managed))
                    .filter(records::rtype.eq_any(["SOA", "NS", "A", "AAAA"])),
            )
            .execute(conn)?;
            let mut rows = vec![(
                zone.name.clone(),
                "SOA".to_string(),
                soa_content(zone, serial),
                zone.infra_ttl,
            )];
            for ns in &zone.nameservers {
                rows.push((
                    zone.name.clone(),
                    "NS".into(),
                    ns.trim_end_matches('.').to_string(),
                    zone.infra_ttl,
                ));
            }
            for r in &cfg.regions {
                let host = format!("{}.{}", r.name, zone.name);
                if let Some(ip) = r.ipv4 {
                    rows.push((host.clone(), "A".into(), ip.to_string(), zone.infra_ttl));
                }
                if let Some(ip) = r.ipv6 {
                    rows.push((host.clone(), "AAAA".into(), ip.to_string(), zone.infra_ttl));
                }
            }
            // In-zone name servers' addresses: a resolver following the parent's delegation
            // (NS plus glue) gets them confirmed here, authoritatively.
            for (name, rtype, ip) in glue {
                rows.push((name, rtype.into(), ip, zone.infra_ttl));
            }
            for (name, rtype, content, ttl) in rows {
                diesel::insert_into(records::table)
                    .values((
                        records::domain_id.eq(id),
                        records::name.eq(name),
                        records::rtype.eq(rtype),
                        records::content.eq(content),
                        records::ttl.eq(ttl),
                        records::prio.eq(0),
                        records::disabled.eq(false),
                        records::auth.eq(true),
                    ))
                    .execute(conn)?;
            }
            Ok(())
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn soa_has_seven_fields_and_low_minimum() {
        let z = ZoneConfig {
            name: "a.tunnel.test".into(),
            record_ttl: 10,
            negative_ttl: 5,
            infra_ttl: 60,
            nameservers: vec!["ns1.a.tunnel.test".into()],
            time_limit_minutes: 0,
            creations_per_minute_per_source: 0,
            max_tunnels_per_account: 0,
            max_names_per_account: 0,
            max_anonymous_tunnels_per_source: 0,
        };
        let soa = soa_content(&z, 7);
        assert_eq!(
            soa,
            "ns1.a.tunnel.test hostmaster.a.tunnel.test 7 10800 3600 604800 5"
        );
        assert_eq!(soa.split(' ').count(), 7);
    }
}
