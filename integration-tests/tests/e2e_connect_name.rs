//! The connect name (each zone's apex) sends a client to the nearest healthy region: the
//! answer depends on the resolver's address or its EDNS Client Subnet, on every region's
//! DNS, and a region whose edge stopped drops out of the answers until it is back.

use nearhop_stack::dns_client::dig;
use nearhop_stack::prelude::*;
use std::time::Duration;

/// The apex A answer of `zone` from region `dns`'s DNS, asked from `source` (and `ecs`).
fn apex(stack: &Stack, dns: usize, zone: &str, source: usize, ecs: Option<&str>) -> String {
    let src = stack.regions[source].ip.to_string();
    let subnet = ecs.map(|s| format!("+subnet={s}"));
    let mut args = vec!["+short", "-b", src.as_str(), zone, "A"];
    if let Some(s) = &subnet {
        args.push(s);
    }
    dig(stack.regions[dns].dns_addr(), &args)
        .expect("dig")
        .trim()
        .to_string()
}

/// Every region's DNS, for both zones, answers `want[region]` to clients of each region,
/// by source address and by ECS subnet (`10.<n>.0.0/16`).
fn apex_answers(stack: &Stack, want: [usize; 3]) -> anyhow::Result<()> {
    for zone in [PRO_ZONE, FREE_ZONE] {
        for dns in [US, EU, AP] {
            for client in [US, EU, AP] {
                let expected = stack.regions[want[client]].ip.to_string();
                let by_source = apex(stack, dns, zone, client, None);
                let ecs = format!("10.{}.7.0/24", client + 1);
                // The ECS query comes from another region's resolver: the subnet wins.
                let by_ecs = apex(stack, dns, zone, (client + 1) % 3, Some(&ecs));
                anyhow::ensure!(
                    by_source == expected && by_ecs == expected,
                    "{zone} on {}'s DNS for a client in {}: by source {by_source}, \
                     by ECS {by_ecs}, want {expected}",
                    stack.regions[dns].name,
                    stack.regions[client].name
                );
            }
        }
    }
    Ok(())
}

#[test]
fn connect_name_answers_the_nearest_healthy_region_and_drops_a_stopped_edge() {
    let mut stack = full_stack_dropping_silent_regions();
    apex_answers(&stack, [US, EU, AP]).unwrap();

    stack.stop_edge("ap", Duration::from_secs(10));
    // ap's clients go to their next preference, us; the others keep their own region.
    eventually("ap drops out of the connect name", || {
        apex_answers(&stack, [US, EU, US])
    });

    stack.restart_edge("ap").expect("ap's edge starts again");
    eventually("ap is back in the connect name", || {
        apex_answers(&stack, [US, EU, AP])
    });
}
