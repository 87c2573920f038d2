//! The lag race, end to end in three regions: the instant the OpenSSH client prints its
//! URL, a visitor's first lookup through the client's region's DNS (and the other replica
//! region's) already gets the new record, and the first request through the edge it names
//! reaches the client's local service.

mod e2e_support;

use e2e_support::*;
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
fn first_lookup_after_the_url_never_misses_over_200_tunnels_in_a_row() {
    let stack = full_stack();
    let local = LocalService::start("lag-race");
    let token = pro_token(&stack);
    let mut misses = Vec::new();
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
        let mut client = ssh_to(
            &stack,
            region,
            &format!("race-{i}"),
            &tunnel_args(Some(&user), local.port),
        );
        let url = wait_url_fast(&mut client, PATIENCE).expect("URL printed");
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
        // The first visit, through the address the client's region answered.
        if let Some(addr) = first.and_then(|l| l.addr) {
            match http_get(SocketAddr::from((addr, port_of(&url))), &host, "/first") {
                Ok((200, body)) if body.contains("hello from lag-race") => {}
                other => misses.push(format!("round {i}: first visit to {url}: {other:?}")),
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
}
