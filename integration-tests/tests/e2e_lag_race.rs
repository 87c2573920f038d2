//! The lag race, end to end in three regions: the instant the OpenSSH client prints its
//! URL, a visitor's first lookup through the client's region's DNS (and the other replica
//! region's) already gets the new record, and the first request through the edge it names
//! reaches the client's local service.
//!
//! A lookup counts as a hit only when it leads somewhere: the CNAME names the client's
//! region's edge host *and* the answer carries that edge's address. A round whose answer has
//! no address has no first visit, and that is a miss, never a skipped check; the local
//! service must have answered exactly one first visit per tunnel.

use nearhop_stack::prelude::*;
use std::net::SocketAddr;
use std::time::Duration;

/// Tunnels in a row; `NEARHOP_E2E_LAG_RACE_TUNNELS` overrides (the bench runs 1,000).
fn tunnels() -> usize {
    std::env::var("NEARHOP_E2E_LAG_RACE_TUNNELS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200)
}

#[test]
fn first_lookup_after_the_url_leads_to_the_edge_and_the_first_visit_reaches_the_service() {
    let stack = full_stack();
    let local = LocalService::start("lag-race");
    let token = stack.pro_token();
    let mut misses = Vec::new();
    let mut visited = 0u64;
    let n = tunnels();
    for i in 0..n {
        // Even rounds: an anonymous free tunnel through ap, a name never seen before (a
        // miss would be NXDOMAIN). Odd rounds: the pro account's persistent name, through
        // ap and eu in turn, so its previous record pointed at the other region (a miss
        // would be a stale CNAME, or NXDOMAIN from the removal of the previous record).
        let (region, user, zone) = if i % 2 == 0 {
            (AP, "http".to_string(), FREE_ZONE)
        } else if (i / 2) % 2 == 0 {
            (AP, token.clone(), PRO_ZONE)
        } else {
            (EU, token.clone(), PRO_ZONE)
        };
        let region_name = stack.regions[region].name.clone();
        let (mut client, url) = stack
            .http_tunnel(region, &format!("race-{i}"), Some(&user), local.port)
            .expect("URL printed");
        let host = host_of(&url);
        // The first lookups: the client's region first, then the other replica region,
        // then the primary's region (its backend reads the primary, where a commit's WAL
        // record is written before the commit is visible: the backend must not confirm a
        // position whose commit it has not read yet).
        let other = if region == AP { EU } else { AP };
        let mut first = None;
        for resolver in [region, other, US] {
            let l = lookup(&stack, resolver, &host).expect("DNS answers");
            if !l.points_at(&region_name, zone) {
                std::thread::sleep(Duration::from_millis(300));
                let again = lookup(&stack, resolver, &host).expect("DNS answers");
                let rname = &stack.regions[resolver].name;
                let status = stack.dns_of(rname).map(|d| d.backend_status());
                let miss = format!(
                    "round {i}: {host} via {rname}'s DNS: {} (want {region_name}.{zone}; \
                     300 ms later: {}; backend {status:?})",
                    l.describe(),
                    again.describe(),
                );
                misses.push(miss);
            }
            first.get_or_insert(l);
        }
        // The first visit, through the address the client's region answered. Without an
        // address the visitor has nowhere to go: that is the race lost, not a round to skip.
        let first = first.expect("three lookups were made");
        match first.addr {
            None => misses.push(format!(
                "round {i}: first visit to {url}: {host} via {region_name}'s DNS gave no address: {}",
                first.describe()
            )),
            Some(addr) => {
                let want = "hello from lag-race /first";
                match http_get(SocketAddr::from((addr, port_of(&url))), &host, "/first") {
                    Ok((200, body)) if body.starts_with(want) => visited += 1,
                    other => misses.push(format!("round {i}: first visit to {url}: {other:?}")),
                }
            }
        }
        client.stop();
    }
    assert!(
        misses.is_empty(),
        "{} misses in {n} tunnels:\n{}",
        misses.len(),
        misses.join("\n")
    );
    // Every round visited, and each visit was answered by the developer's service itself.
    assert_eq!(visited, n as u64, "first visits that reached the service");
    assert_eq!(
        local.served.load(std::sync::atomic::Ordering::Relaxed),
        n as u64,
        "requests the local service answered"
    );
}
