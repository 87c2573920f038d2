//! Custom domains: control checks the ownership proof (a TXT record at the user's own DNS,
//! here a stock `pdns_server --launch=gpgsql`) before edges route the domain.

use nearhop_stack::pdns::{Caches, GpgsqlPdns};
use nearhop_stack::ports::free_port;
use nearhop_stack::postgres::psql;
use nearhop_stack::{Stack, StackOptions};
use nearhop_wire::{CreateTunnelRequest, EdgeRoutes, Plan, RegisterEdgeRequest, TunnelKind};
use std::net::Ipv4Addr;

#[test]
fn custom_domain_is_routed_only_after_its_txt_proof_is_published() {
    let stack = Stack::start(StackOptions::default()).expect("stack starts");
    let ctl = &stack.control;
    let acct = ctl.create_account(Plan::Pro).unwrap();
    let id = acct.account_id.to_string();
    ctl.cli(&["name", "reserve", "--account", &id, "storefront"])
        .unwrap();
    let added: serde_json::Value = serde_json::from_str(
        ctl.cli(&[
            "domain",
            "add",
            "--account",
            &id,
            "Shop.Example",
            "--target",
            "storefront",
        ])
        .unwrap()
        .trim(),
    )
    .unwrap();
    assert_eq!(added["verified"], false);
    let token = added["txt_value"].as_str().unwrap().to_string();

    // The user's own DNS: a zone of theirs, served by a stock pdns_server.
    let primary = &stack.pg.primary.endpoint;
    psql(
        primary,
        "INSERT INTO domains(name, type) VALUES ('shop.example', 'NATIVE');
         INSERT INTO records(domain_id, name, type, content, ttl)
           SELECT id, 'shop.example', 'SOA', 'ns1.shop.example hostmaster.shop.example 1 10800 3600 604800 5', 60
           FROM domains WHERE name = 'shop.example';
         INSERT INTO records(domain_id, name, type, content, ttl)
           SELECT id, 'shop.example', 'CNAME', 'storefront.a.tunnel.test', 60
           FROM domains WHERE name = 'shop.example';",
    )
    .unwrap();
    let ip = Ipv4Addr::LOCALHOST;
    let port = free_port(ip);
    let user_dns = GpgsqlPdns::start(
        &stack.path().join("user-dns"),
        ip,
        port,
        primary,
        Caches::Off,
        1,
        1,
    )
    .unwrap();
    let resolver = user_dns.dns_addr().to_string();

    // An edge serves the account's tunnel.
    let http = reqwest::blocking::Client::new();
    let r = http
        .post(format!("{}/v1/edges/register", ctl.url))
        .bearer_auth(&ctl.edge_secret)
        .json(&RegisterEdgeRequest {
            edge_id: "us-1".into(),
            region: "us".into(),
            admin_url: "http://127.0.0.1:9".into(),
            ..Default::default()
        })
        .send()
        .unwrap();
    assert!(r.status().is_success());
    let r = http
        .post(format!("{}/v1/tunnels", ctl.url))
        .bearer_auth(&ctl.edge_secret)
        .json(&CreateTunnelRequest {
            edge_id: "us-1".into(),
            token: Some(acct.token.clone()),
            requested_name: Some("storefront".into()),
            kind: TunnelKind::Http,
            force: false,
            client_addr: "127.0.0.9".into(),
        })
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let routes = || -> EdgeRoutes {
        http.get(format!("{}/v1/edges/us-1/routes", ctl.url))
            .bearer_auth(&ctl.edge_secret)
            .send()
            .unwrap()
            .json()
            .unwrap()
    };

    let err = ctl
        .cli(&["domain", "verify", "shop.example", "--resolver", &resolver])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("does not hold the verification token"),
        "{err}"
    );
    // Unverified, the domain is routed nowhere.
    assert!(
        routes().custom_domains.is_empty(),
        "routed before its proof"
    );
    let unverified = psql(
        primary,
        "SELECT verified_at IS NULL FROM custom_domains WHERE domain = 'shop.example'",
    )
    .unwrap();
    assert_eq!(unverified.trim(), "t");

    psql(
        primary,
        &format!(
            "INSERT INTO records(domain_id, name, type, content, ttl)
               SELECT id, '_nearhop.shop.example', 'TXT', '\"{token}\"', 60
               FROM domains WHERE name = 'shop.example'"
        ),
    )
    .unwrap();
    ctl.cli(&["domain", "verify", "shop.example", "--resolver", &resolver])
        .unwrap();

    // Verified: the edge serving the account's tunnel now gets the route.
    assert_eq!(
        routes().custom_domains,
        vec![(
            "shop.example".to_string(),
            "storefront.a.tunnel.test".to_string()
        )]
    );
}
