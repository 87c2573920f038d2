//! Two name servers in one region, both confirmed: DNS wants at least two authoritative
//! servers per zone, and a visitor's resolver may ask either first. Control takes every
//! pdns-backend of a region (`backend_url` as a list) and hands a tunnel's URL out only once
//! each of them serves the new record.
//!
//! The stack: us (primary, control, an edge) and eu (a streaming replica) with a real
//! `pdns_server` + pdns-backend each, plus eu's second name server, another real
//! `pdns_server` + pdns-backend on 127.0.0.12 reading the same eu replica. With eu's second
//! backend stopped (SIGSTOP, by the PID of the process this test started), the new name
//! reaches eu's first name server but the OpenSSH client is given no URL; once the backend
//! runs again, the URL comes and both of eu's name servers answer the name at once.

use nearhop_stack::control::ControlSpec;
use nearhop_stack::dns_client::query_a;
use nearhop_stack::edge::find_url;
use nearhop_stack::pdns::{PdnsRegion, PdnsSpec};
use nearhop_stack::postgres::psql;
use nearhop_stack::prelude::*;
use nearhop_stack::stack::{apex_map, unknown_names};
use nearhop_stack::visitor::Lookup;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::OnceLock;
use std::time::Duration;

/// Base URL of eu's second backend, known before the stack (and control's config) is made.
static EU_SECOND_BACKEND: OnceLock<String> = OnceLock::new();

/// Control's regions, with eu's two backends as one list (`backend_url = [..., ...]`).
fn eu_has_two_backends(spec: &mut ControlSpec) {
    let second = EU_SECOND_BACKEND
        .get()
        .expect("the second backend's URL is set before the stack starts");
    let mut regions = String::new();
    for r in spec.regions.drain(..) {
        let mut urls: Vec<String> = r.backend_url.into_iter().collect();
        if r.name == "eu" {
            urls.push(second.clone());
        }
        regions.push_str(&format!(
            "[[regions]]\nname = \"{}\"\nipv4 = \"{}\"\nbackend_url = {urls:?}\n",
            r.name, r.ipv4
        ));
    }
    spec.extra_toml.push_str(&regions);
}

/// Sends SIGCONT to the paused backend however the test ends, so that it can be stopped.
struct ResumeOnDrop<'a>(&'a PdnsRegion);

impl Drop for ResumeOnDrop<'_> {
    fn drop(&mut self) {
        self.0.signal_backend(libc::SIGCONT);
    }
}

/// What the name server at `dns` answers for `host` A, asked from eu's address.
fn ask(dns: SocketAddr, host: &str, us_edge: Ipv4Addr) -> Lookup {
    let resp = query_a(dns, Ipv4Addr::new(127, 0, 0, 2), host).expect("the name server answers");
    let addr: Option<Ipv4Addr> = resp
        .data_of(nearhop_stack::dns_client::QTYPE_A)
        .into_iter()
        .next()
        .and_then(|a| a.parse().ok());
    Lookup {
        rcode: resp.rcode,
        cname: resp
            .data_of(nearhop_stack::dns_client::QTYPE_CNAME)
            .into_iter()
            .next(),
        addr,
        addr_region: addr.filter(|a| *a == us_edge).map(|_| "us".to_string()),
    }
}

#[test]
fn a_url_is_printed_only_once_both_name_servers_of_a_region_serve_the_name() {
    let second_ip = Ipv4Addr::new(127, 0, 0, 12);
    let mut second = PdnsSpec::for_tests("eu", second_ip, String::new());
    EU_SECOND_BACKEND
        .set(format!("http://{second_ip}:{}", second.backend_http_port))
        .expect("set once");
    let stack = full_stack_with(StackOptions {
        regions: vec![
            ("us".into(), Ipv4Addr::new(127, 0, 0, 1)),
            ("eu".into(), Ipv4Addr::new(127, 0, 0, 2)),
        ],
        // Far above the test's steps: a URL must come from both confirming, never the bound.
        lag_wait_ms: 60_000,
        control_tweak: Some(eu_has_two_backends),
        ..StackOptions::default()
    });
    second.database = stack.pg.endpoint_of("eu").expect("eu's replica").conninfo();
    second.apex_prefixes = apex_map(&stack.regions);
    second.default_region = "us".into();
    second.unknown_names = unknown_names();
    let eu_second = PdnsRegion::start(&stack.path().join("dns-eu-2"), &second)
        .expect("eu's second name server starts");
    let resume = ResumeOnDrop(&eu_second);
    let us_edge = stack.regions[US].ip;
    let eu_servers = [stack.regions[EU].dns_addr(), eu_second.dns_addr()];
    let local = LocalService::start("two-name-servers");

    // Both of eu's name servers running: each answers the name the moment its URL is out.
    let token = stack.pro_token();
    let (mut first, url) = stack
        .http_tunnel(US, "both-running", Some(&token), local.port)
        .expect("URL printed");
    let first_host = host_of(&url);
    for dns in eu_servers {
        let l = ask(dns, &first_host, us_edge);
        assert!(
            l.points_at("us", PRO_ZONE),
            "{dns} answered {} for {first_host}, the moment {url} was printed",
            l.describe()
        );
    }
    first.stop();

    // eu's second backend stopped: the new record reaches eu's first name server, but no URL.
    eu_second.signal_backend(libc::SIGSTOP);
    let token = stack.pro_token();
    let mut waiting = stack.ssh_to(
        US,
        "second-paused",
        &SshArgs::http_tunnel(Some(&token), local.port),
    );
    let primary = &stack.pg.primary.endpoint;
    let host: String = eventually("control writes the new tunnel's record", || {
        let name = psql(
            primary,
            &format!(
                "SELECT name FROM records WHERE type = 'CNAME' AND content = 'us.{PRO_ZONE}' \
                 AND name <> '{first_host}' ORDER BY id DESC LIMIT 1"
            ),
        )?;
        anyhow::ensure!(!name.trim().is_empty(), "no new record yet");
        Ok(name.trim().to_string())
    });
    eventually("eu's first name server serves the new name", || {
        let l = ask(eu_servers[0], &host, us_edge);
        anyhow::ensure!(l.points_at("us", PRO_ZONE), "{}", l.describe());
        Ok(())
    });
    // Everything but eu's second name server has the record now; the client must still wait.
    let early = waiting.wait_for("http://", Duration::from_secs(1));
    assert!(
        early.is_err(),
        "the URL was printed while eu's second name server could not serve {host}: {}",
        waiting.output()
    );
    assert!(find_url(&waiting.output()).is_none());

    // Running again: it loads the record, control confirms, the URL comes; both answer at once.
    drop(resume);
    let url = waiting
        .wait_for_url_polling(PATIENCE, Duration::from_millis(1))
        .expect("the URL once eu's second name server serves the name");
    assert_eq!(host_of(&url), host);
    for dns in eu_servers {
        let l = ask(dns, &host, us_edge);
        assert!(
            l.points_at("us", PRO_ZONE),
            "{dns} answered {} for {host}, the moment {url} was printed",
            l.describe()
        );
    }
    // Confirmed by both, not given up on: no lag-race timeout was counted for eu.
    let metrics = reqwest::blocking::get(format!("{}/metrics", stack.control.url))
        .and_then(|r| r.text())
        .expect("control's metrics");
    assert_eq!(
        metric(
            &metrics,
            "nearhop_lag_wait_timeouts_total",
            &[("region", "eu")]
        )
        .unwrap_or(0.0),
        0.0
    );
    waiting.stop();
}
