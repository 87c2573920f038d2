//! Certificates by ACME against Pebble on the real stack (Postgres primary and replicas,
//! `pdns_server` + pdns-backend in every region, control): DNS-01 records written through
//! control's database and served by every region's DNS before validation, certificates
//! stored and handed to edges, forced renewal, custom domains through the user's CNAME, and
//! a failing ACME server that leaves the certificate in service, a region whose DNS does not
//! serve the challenge (no validation asked), two control instances; and the edges serving the
//! certificate, swapped in on renewal while a download runs.
//!
//! Long because each test starts a whole stack (a minute or more of machine time), so each
//! walks a whole story, with the helpers those stories share above them.

use nearhop_stack::dns_client::dig;
use nearhop_stack::edge::url_host_port;
use nearhop_stack::full_stack::{fast_heartbeats, US};
use nearhop_stack::local_service::{blob_byte, LocalService};
use nearhop_stack::metrics::metric_sum;
use nearhop_stack::poll::eventually_within;
use nearhop_stack::ports::free_port;
use nearhop_stack::postgres::psql;
use nearhop_stack::process::ChildGuard;
use nearhop_stack::visitor::curl_tls;
use nearhop_stack::{bin_path, ControlSpec, Stack, StackOptions};
use nearhop_wire::{EdgeCertificates, EdgeHeartbeatResponse, Plan, RegisterEdgeRequest};
use serde_json::Value;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Patience for an issuance: DNS wait, validation and issuance on a busy 2-core machine.
const ISSUANCE: Duration = Duration::from_secs(180);

/// The stack with DNS in every region and Pebble; with `NEARHOP_E2E_KEEP_DIR=/some/dir` the
/// data and logs stay in a fresh directory there.
fn acme_stack() -> Stack {
    acme_stack_with(None)
}

/// [`acme_stack`], with changes to control's settings.
fn acme_stack_with(control_tweak: Option<fn(&mut ControlSpec)>) -> Stack {
    let dir = std::env::var_os("NEARHOP_E2E_KEEP_DIR").map(|root| {
        let stamp = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0);
        std::path::PathBuf::from(root).join(format!("acme-{stamp}"))
    });
    Stack::start(StackOptions {
        with_dns: true,
        acme: true,
        dir,
        control_tweak,
        ..StackOptions::default()
    })
    .expect("the stack with Pebble starts")
}

/// `certificate list` as JSON.
fn certificates(stack: &Stack) -> Vec<Value> {
    let out = stack
        .control
        .cli(&["certificate", "list"])
        .expect("certificate list");
    serde_json::from_str::<Vec<Value>>(out.trim()).expect("certificate list prints JSON")
}

fn row<'a>(rows: &'a [Value], subject: &str) -> Option<&'a Value> {
    rows.iter().find(|r| r["subject"] == subject)
}

/// Waits until `subject` has a certificate in service whose serial is not `old`; its row.
fn wait_issued(stack: &Stack, subject: &str, old: Option<&str>) -> Value {
    eventually_within(&format!("a certificate for {subject}"), ISSUANCE, || {
        let rows = certificates(stack);
        let r = row(&rows, subject).ok_or_else(|| anyhow::anyhow!("no row for {subject}"))?;
        match r["serial"].as_str() {
            Some(s) if r["in_service"] == true && Some(s) != old => Ok(r.clone()),
            _ => anyhow::bail!("not (re)issued yet: {r}"),
        }
    })
}

/// An edge with its own credential, registered in region us.
struct TestEdge {
    id: String,
    credential: String,
}

fn register_edge(stack: &Stack, id: &str) -> TestEdge {
    let credential = stack.control.issue_edge_credential(id).unwrap();
    let res = reqwest::blocking::Client::new()
        .post(format!("{}/v1/edges/register", stack.control.url))
        .bearer_auth(&credential)
        .json(&RegisterEdgeRequest {
            edge_id: id.into(),
            region: "us".into(),
            admin_url: "http://127.0.0.1:9".into(),
            ..Default::default()
        })
        .send()
        .unwrap();
    assert!(res.status().is_success(), "register: {}", res.status());
    TestEdge {
        id: id.into(),
        credential,
    }
}

fn edge_certificates(stack: &Stack, edge: &TestEdge) -> EdgeCertificates {
    let res = reqwest::blocking::Client::new()
        .get(format!(
            "{}/v1/edges/{}/certificates",
            stack.control.url, edge.id
        ))
        .bearer_auth(&edge.credential)
        .send()
        .unwrap();
    assert!(res.status().is_success(), "certificates: {}", res.status());
    res.json().unwrap()
}

fn heartbeat_generation(stack: &Stack, edge: &TestEdge) -> i64 {
    let res: EdgeHeartbeatResponse = reqwest::blocking::Client::new()
        .post(format!(
            "{}/v1/edges/{}/heartbeat",
            stack.control.url, edge.id
        ))
        .bearer_auth(&edge.credential)
        .json(&serde_json::json!({"tunnel_ids": []}))
        .send()
        .unwrap()
        .error_for_status()
        .unwrap()
        .json()
        .unwrap();
    res.certificates_generation
}

fn openssl(args: &[&str]) -> String {
    let out = Command::new("openssl").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The chain verifies against Pebble's issuing root, and the key is the leaf's.
fn check_chain_and_key(dir: &Path, root: &Path, chain: &str, key: &str) {
    let (chain_path, key_path) = (dir.join("chain.pem"), dir.join("key.pem"));
    std::fs::write(&chain_path, chain).unwrap();
    std::fs::write(&key_path, key).unwrap();
    let (c, r, k) = (
        chain_path.to_str().unwrap(),
        root.to_str().unwrap(),
        key_path.to_str().unwrap(),
    );
    let verified = openssl(&["verify", "-CAfile", r, "-untrusted", c, c]);
    assert!(verified.contains(": OK"), "{verified}");
    assert_eq!(
        openssl(&["x509", "-in", c, "-noout", "-pubkey"]),
        openssl(&["pkey", "-in", k, "-pubout"]),
        "the key is the leaf's"
    );
    std::fs::remove_file(&key_path).unwrap();
}

/// TXT strings of `name` at every region's DNS.
fn txt_everywhere(stack: &Stack, name: &str) -> Vec<String> {
    stack
        .regions
        .iter()
        .flat_map(|r| {
            dig(r.dns_addr(), &["+short", name, "TXT"])
                .unwrap()
                .lines()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .filter(|l| !l.trim().is_empty())
        .collect()
}

fn admin_renew(stack: &Stack, subject: &str) {
    let res = reqwest::blocking::Client::new()
        .post(format!(
            "{}/v1/admin/certificates/{subject}/renew",
            stack.control.url
        ))
        .bearer_auth(&stack.control.admin_secret)
        .send()
        .unwrap();
    assert_eq!(res.status().as_u16(), 202, "{:?}", res.text());
}

#[test]
fn zone_certificates_come_by_dns01_reach_edges_and_a_forced_renewal_replaces_them() {
    let stack = acme_stack();
    let pebble = stack.pebble.as_ref().unwrap();
    let root = pebble.write_issuing_root().unwrap();
    let zones = ["a.tunnel.test", "free.tunnel.test"];
    let first: Vec<Value> = zones.iter().map(|z| wait_issued(&stack, z, None)).collect();
    for (z, r) in zones.iter().zip(&first) {
        assert_eq!(r["names"], serde_json::json!([z, format!("*.{z}")]), "{r}");
        assert_eq!(r["last_error"], Value::Null, "{r}");
    }

    // The challenge went through the records table the backends tail, and is gone: every
    // region's DNS has no TXT left at _acme-challenge.
    let primary = &stack.pg.primary.endpoint;
    for z in zones {
        let logged = psql(
            primary,
            &format!("SELECT count(*) FROM dns_changes WHERE name = '_acme-challenge.{z}'"),
        )
        .unwrap();
        assert!(
            logged.trim().parse::<u32>().unwrap() >= 2,
            "written and removed: {logged}"
        );
        let left = psql(
            primary,
            &format!("SELECT count(*) FROM records WHERE name = '_acme-challenge.{z}'"),
        )
        .unwrap();
        assert_eq!(left.trim(), "0");
        assert!(txt_everywhere(&stack, &format!("_acme-challenge.{z}")).is_empty());
    }
    let log = std::fs::read_to_string(stack.control.log()).unwrap();
    let published: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("challenge records published"))
        .collect();
    assert!(!published.is_empty(), "control published challenge records");
    assert!(
        published.iter().all(|l| l.contains("[]")),
        "every region confirmed before validation: {published:?}"
    );

    // Edges get both, with keys, under the generation the heartbeat tells; only as themselves.
    let edge = register_edge(&stack, "acme-edge-1");
    let other = register_edge(&stack, "acme-edge-2");
    let got = edge_certificates(&stack, &edge);
    assert_eq!(got.certificates.len(), 2, "{got:?}");
    assert!(got.generation >= 2);
    assert_eq!(heartbeat_generation(&stack, &edge), got.generation);
    for c in &got.certificates {
        check_chain_and_key(&stack.dir, &root, &c.chain_pem, &c.key_pem);
        assert!(c.not_after_unix > chrono::Utc::now().timestamp() + 30 * 86_400);
    }
    let http = reqwest::blocking::Client::new();
    let url = format!("{}/v1/edges/{}/certificates", stack.control.url, edge.id);
    assert_eq!(http.get(&url).send().unwrap().status().as_u16(), 401);
    let as_other = http
        .get(&url)
        .bearer_auth(&other.credential)
        .send()
        .unwrap();
    assert_eq!(as_other.status().as_u16(), 403);

    // A forced renewal: a new serial, a new generation, the edges' answer follows.
    admin_renew(&stack, "a.tunnel.test");
    let old = first[0]["serial"].as_str().unwrap();
    let renewed = wait_issued(&stack, "a.tunnel.test", Some(old));
    assert_ne!(renewed["serial"], first[0]["serial"]);
    let after = edge_certificates(&stack, &edge);
    assert!(
        after.generation > got.generation,
        "{} > {}",
        after.generation,
        got.generation
    );
    assert_eq!(heartbeat_generation(&stack, &edge), after.generation);
    let pro_before = got
        .certificates
        .iter()
        .find(|c| c.names[0] == "a.tunnel.test")
        .unwrap();
    let pro_after = after
        .certificates
        .iter()
        .find(|c| c.names[0] == "a.tunnel.test")
        .unwrap();
    assert_ne!(pro_before.chain_pem, pro_after.chain_pem);
    check_chain_and_key(&stack.dir, &root, &pro_after.chain_pem, &pro_after.key_pem);

    let metrics = stack.control.metrics().unwrap();
    assert!(
        metric_sum(
            &metrics,
            "nearhop_control_acme_orders_total",
            &[("kind", "zone"), ("result", "ok")]
        ) >= 3.0
    );
    assert!(metrics.contains(
        "nearhop_control_certificate_expiry_timestamp_seconds{names=\"a.tunnel.test,*.a.tunnel.test\""
    ));

    // No key ever reached the log or the metrics.
    let log = std::fs::read_to_string(stack.control.log()).unwrap();
    assert!(!log.contains("PRIVATE KEY"));
    assert!(!metrics.contains("PRIVATE KEY") && !metrics.contains("BEGIN"));
    for c in &after.certificates {
        for line in c.key_pem.lines().filter(|l| !l.starts_with("-----")) {
            assert!(!log.contains(line), "a key line is in control's log");
        }
    }
}

#[test]
fn a_custom_domain_gets_its_certificate_through_the_users_cname_and_a_failing_server_keeps_it() {
    let mut stack = acme_stack();
    // The documented target: the first 16 bytes of SHA-256(domain), hex, under `_acme.<pro zone>`.
    let digest = Command::new("sh")
        .args(["-c", "printf %s shop.customer.test | sha256sum"])
        .output()
        .unwrap();
    let target = format!(
        "{}._acme.a.tunnel.test",
        &String::from_utf8_lossy(&digest.stdout)[..32]
    );

    // The user's DNS. Pebble asks one server, the stack's us pdns_server, so the user's zone
    // is served there too: a zone of its own in the same tables, with the CNAME the user
    // is told to add. It is in place before the domain is verified, as the guide says.
    let primary = &stack.pg.primary.endpoint;
    psql(
        primary,
        &format!(
            "INSERT INTO domains(name, type) VALUES ('customer.test', 'NATIVE');
             INSERT INTO records(domain_id, name, type, content, ttl) SELECT id, 'customer.test',
               'SOA', 'ns1.customer.test hostmaster.customer.test 1 3600 600 86400 5', 60
               FROM domains WHERE name = 'customer.test';
             INSERT INTO records(domain_id, name, type, content, ttl) SELECT id,
               '_acme-challenge.shop.customer.test', 'CNAME', '{target}', 60
               FROM domains WHERE name = 'customer.test';"
        ),
    )
    .unwrap();
    let us_dns = stack.regions[0].dns_addr();
    eventually_within("the user's CNAME is served", ISSUANCE, || {
        let out = dig(
            us_dns,
            &["+short", "_acme-challenge.shop.customer.test", "CNAME"],
        )?;
        anyhow::ensure!(out.trim().trim_end_matches('.') == target, "{out:?}");
        Ok(())
    });

    let ctl = &stack.control;
    let acct = ctl.create_account(Plan::Pro).unwrap();
    let id = acct.account_id.to_string();
    ctl.cli(&["name", "reserve", "--account", &id, "shop"])
        .unwrap();
    let added: Value = serde_json::from_str(
        ctl.cli(&[
            "domain",
            "add",
            "--account",
            &id,
            "shop.customer.test",
            "--target",
            "shop",
            "--verified",
        ])
        .unwrap()
        .trim(),
    )
    .unwrap();
    assert_eq!(
        added["acme_challenge_cname"],
        serde_json::json!({"name": "_acme-challenge.shop.customer.test", "target": target}),
        "domain add tells the record to add: {added}"
    );
    // The admin API answers with the same record (here for a domain not yet verified).
    let via_api: Value = reqwest::blocking::Client::new()
        .post(format!("{}/v1/admin/accounts/{id}/domains", ctl.url))
        .bearer_auth(&ctl.admin_secret)
        .json(&serde_json::json!({"domain": "www.customer.test", "target": "shop"}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(
        via_api["acme_challenge_cname"]["name"], "_acme-challenge.www.customer.test",
        "the admin API tells the record to add: {via_api}"
    );
    let issued = wait_issued(&stack, "shop.customer.test", None);
    assert_eq!(issued["names"], serde_json::json!(["shop.customer.test"]));
    assert_eq!(
        issued["challenge_cname"],
        serde_json::json!(["_acme-challenge.shop.customer.test", target]),
        "the operator sees the record the user must add"
    );
    let left = psql(
        primary,
        &format!("SELECT count(*) FROM records WHERE name = '{target}'"),
    )
    .unwrap();
    assert_eq!(left.trim(), "0", "the TXT at the target is removed");

    let edge = register_edge(&stack, "acme-edge-1");
    let before = edge_certificates(&stack, &edge);
    let domain_cert = |c: &EdgeCertificates| {
        c.certificates
            .iter()
            .find(|c| c.names == ["shop.customer.test"])
            .cloned()
            .expect("the domain's certificate is handed to edges")
    };
    let root = stack.pebble.as_ref().unwrap().write_issuing_root().unwrap();
    let kept = domain_cert(&before);
    check_chain_and_key(&stack.dir, &root, &kept.chain_pem, &kept.key_pem);

    // The ACME server goes away: a renewal fails, is counted and shown, the certificate
    // stays in service and the generation does not move.
    let errors_before = metric_sum(
        &stack.control.metrics().unwrap(),
        "nearhop_control_acme_orders_total",
        &[("result", "error")],
    );
    stack.pebble.as_mut().unwrap().stop();
    admin_renew(&stack, "shop.customer.test");
    let failed = eventually_within("the renewal fails", ISSUANCE, || {
        let rows = certificates(&stack);
        let r = row(&rows, "shop.customer.test").unwrap().clone();
        if r["failures"].as_i64().unwrap_or(0) >= 1 && r["last_error"].is_string() {
            Ok(r)
        } else {
            anyhow::bail!("no failure yet: {r}")
        }
    });
    assert_eq!(failed["serial"], issued["serial"]);
    assert_eq!(failed["in_service"], true);
    let metrics = stack.control.metrics().unwrap();
    assert!(
        metric_sum(
            &metrics,
            "nearhop_control_acme_orders_total",
            &[("result", "error")]
        ) > errors_before
    );
    assert!(
        metrics.contains("nearhop_control_certificate_failures{subject=\"shop.customer.test\"} 1")
    );
    let after = edge_certificates(&stack, &edge);
    assert_eq!(after.generation, before.generation);
    assert_eq!(domain_cert(&after).chain_pem, kept.chain_pem);
    let why = failed["last_error"].as_str().unwrap();
    assert!(!why.trim().is_empty(), "the failure is shown in words");
}

/// The serial (lowercase hex, no leading zeros) of the certificate an edge shows for `name`.
fn served_serial(ip: std::net::Ipv4Addr, port: u16, name: &str) -> anyhow::Result<String> {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect {ip}:{port} -servername {name} </dev/null 2>/dev/null \
             | openssl x509 -noout -serial"
        ))
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let serial = text
        .trim()
        .strip_prefix("serial=")
        .ok_or_else(|| anyhow::anyhow!("no certificate from {ip}:{port}: {text:?}"))?;
    Ok(normal_serial(serial))
}

fn normal_serial(hex: &str) -> String {
    hex.to_ascii_lowercase().trim_start_matches('0').to_string()
}

#[test]
fn every_edge_serves_the_issued_certificate_and_swaps_in_a_renewal_during_a_download() {
    let dir = std::env::var_os("NEARHOP_E2E_KEEP_DIR").map(|root| {
        let stamp = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0);
        std::path::PathBuf::from(root).join(format!("acme-e2e-{stamp}"))
    });
    let stack = Stack::start(StackOptions {
        with_dns: true,
        with_edges: true,
        acme: true,
        control_tweak: Some(fast_heartbeats),
        dir,
        ..StackOptions::default()
    })
    .expect("the stack with edges and Pebble starts");
    let root = stack.pebble.as_ref().unwrap().write_issuing_root().unwrap();
    let first = wait_issued(&stack, "a.tunnel.test", None);
    let first_serial = normal_serial(first["serial"].as_str().unwrap());

    let local = LocalService::start("local");
    let token = stack.pro_token();
    let (_client, url) = stack
        .http_tunnel(US, "acme-https", Some(&token), local.port)
        .unwrap();
    let (host, _) = url_host_port(&url).unwrap();
    // Every edge serves it (a tunnel held in us, reached at eu and ap by relay), and curl
    // verifies the chain against Pebble's root.
    for r in &stack.regions {
        eventually_within(&format!("HTTPS at {}", r.name), ISSUANCE, || {
            let c = curl_tls(&host, r.ip, r.ports.https, "/hello", Some(&root));
            anyhow::ensure!(
                c.code == 0 && c.status == "200" && c.body.starts_with("hello from local"),
                "{} {} {}",
                c.status,
                c.body,
                c.stderr
            );
            Ok(())
        });
        assert_eq!(
            served_serial(r.ip, r.ports.https, &host).unwrap(),
            first_serial
        );
    }

    // A 40 MB download over HTTPS at 2 MB/s is under way while control renews and the
    // edges swap the certificate in.
    let us = &stack.regions[US];
    let size = 40 * 1024 * 1024;
    let file = stack.dir.join("download.bin");
    // Killed if the test fails before the download ends.
    let mut download = KillOnDrop(
        Command::new("curl")
            .args(["-sS", "--limit-rate", "2M", "--cacert"])
            .arg(&root)
            .arg("--resolve")
            .arg(format!("{host}:{}:{}", us.ports.https, us.ip))
            .arg("-o")
            .arg(&file)
            .arg(format!("https://{host}:{}/blob/{size}", us.ports.https))
            .spawn()
            .unwrap(),
    );
    let pids: Vec<Option<u32>> = stack.edges.iter().map(|e| e.pid()).collect();
    admin_renew(&stack, "a.tunnel.test");
    let renewed = wait_issued(&stack, "a.tunnel.test", first["serial"].as_str());
    let renewed_serial = normal_serial(renewed["serial"].as_str().unwrap());
    for r in &stack.regions {
        eventually_within(
            &format!("the renewal served at {}", r.name),
            ISSUANCE,
            || {
                let s = served_serial(r.ip, r.ports.https, &host)?;
                anyhow::ensure!(s == renewed_serial, "still {s}");
                Ok(())
            },
        );
    }
    assert!(
        download.0.try_wait().unwrap().is_none(),
        "the download was still running when the new certificate was served (else this \
         test proves nothing about it)"
    );
    let status = download.0.wait().unwrap();
    assert!(status.success(), "the download finished without error");
    let got = std::fs::read(&file).unwrap();
    assert_eq!(got.len(), size);
    assert!(
        got.iter().enumerate().all(|(i, b)| *b == blob_byte(i)),
        "the download is intact"
    );
    let now: Vec<Option<u32>> = stack.edges.iter().map(|e| e.pid()).collect();
    assert_eq!(pids, now, "no edge restarted");
    let c = curl_tls(&host, us.ip, us.ports.https, "/hello", Some(&root));
    assert_eq!((c.code, c.status.as_str()), (0, "200"), "{}", c.stderr);
}

/// A child process killed when dropped, unless it has ended.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// `text` without terminal colour sequences (control's log is coloured).
fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[test]
fn two_control_instances_never_work_one_certificate_at_the_same_time() {
    let stack = acme_stack();
    for z in ["a.tunnel.test", "free.tunnel.test"] {
        wait_issued(&stack, z, None);
    }
    // A second control on the same primary, configured as the first but on another port.
    let first_listen = stack.control.url.trim_start_matches("http://").to_string();
    let second_listen = format!("127.0.0.1:{}", free_port(Ipv4Addr::LOCALHOST));
    let config = std::fs::read_to_string(&stack.control.config_path)
        .unwrap()
        .replace(
            &format!("listen = \"{first_listen}\""),
            &format!("listen = \"{second_listen}\""),
        );
    let dir = stack.dir.join("control-2");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("control.toml"), config).unwrap();
    let mut cmd = Command::new(bin_path("nearhop-control").unwrap());
    cmd.arg("--config")
        .arg(dir.join("control.toml"))
        .arg("serve")
        .env("RUST_LOG", "info");
    let second_log = dir.join("control.log");
    let _second = ChildGuard::spawn("nearhop-control 2", cmd, &second_log, libc::SIGTERM).unwrap();
    eventually_within("the second control answers", ISSUANCE, || {
        let r = reqwest::blocking::get(format!("http://{second_listen}/healthz"))?;
        anyhow::ensure!(r.status().is_success(), "{}", r.status());
        Ok(())
    });
    eventually_within("the second control's renewal task looks", ISSUANCE, || {
        let log = std::fs::read_to_string(&second_log)?;
        anyhow::ensure!(log.contains("ACME renewal task started"), "not yet");
        Ok(())
    });

    // Both instances look every second; each forced renewal is worked by exactly one.
    let before: Vec<Value> = ["a.tunnel.test", "free.tunnel.test"]
        .iter()
        .map(|z| row(&certificates(&stack), z).unwrap().clone())
        .collect();
    for z in ["a.tunnel.test", "free.tunnel.test"] {
        admin_renew(&stack, z);
    }
    for (z, b) in ["a.tunnel.test", "free.tunnel.test"].iter().zip(&before) {
        wait_issued(&stack, z, b["serial"].as_str());
    }
    let logs = plain(&format!(
        "{}{}",
        std::fs::read_to_string(stack.control.log()).unwrap(),
        std::fs::read_to_string(&second_log).unwrap()
    ));
    for z in ["a.tunnel.test", "free.tunnel.test"] {
        let attempts = logs
            .lines()
            .filter(|l| {
                l.contains("requesting a certificate")
                    && l.contains(&format!("subject=\"{z}\""))
                    && l.contains("renewal=true")
            })
            .count();
        assert_eq!(
            attempts, 1,
            "one renewal attempt of {z} across both instances"
        );
    }
}

/// A short wait for the regions' DNS, so that a region that does not serve the challenge
/// fails the attempt in seconds.
fn short_dns_wait(spec: &mut ControlSpec) {
    spec.extra_toml.push_str("acme_dns_wait_ms = 2000\n");
}

#[test]
fn a_challenge_not_served_by_every_region_is_never_validated_and_is_retried() {
    let mut stack = acme_stack_with(Some(short_dns_wait));
    let first = wait_issued(&stack, "a.tunnel.test", None);
    wait_issued(&stack, "free.tunnel.test", None);

    // eu's pdns-backend stops: eu's DNS cannot serve the challenge record, so control must
    // not ask Pebble (which asks us's DNS, where the record is) to validate.
    let eu = stack.regions.iter().position(|r| r.name == "eu").unwrap();
    stack.dns[eu].stop_backend();
    admin_renew(&stack, "a.tunnel.test");
    let failed = eventually_within("the attempt fails on eu's DNS", ISSUANCE, || {
        let rows = certificates(&stack);
        let r = row(&rows, "a.tunnel.test").unwrap().clone();
        anyhow::ensure!(r["failures"].as_i64() >= Some(1), "no failure yet: {r}");
        Ok(r)
    });
    let why = failed["last_error"].as_str().unwrap();
    assert!(
        why.contains("region(s) eu did not serve the challenge records")
            && why.contains("validation not asked"),
        "{why}"
    );
    assert_eq!(
        failed["serial"], first["serial"],
        "the certificate stays in service"
    );
    let left = psql(
        &stack.pg.primary.endpoint,
        "SELECT count(*) FROM records WHERE name = '_acme-challenge.a.tunnel.test'",
    )
    .unwrap();
    assert_eq!(
        left.trim(),
        "0",
        "the record is removed after the failure too"
    );

    // eu's DNS back: the retry (backoff from 2 s) goes through.
    stack.dns[eu].start_backend().unwrap();
    let renewed = wait_issued(&stack, "a.tunnel.test", first["serial"].as_str());
    assert_eq!(renewed["failures"], 0);
    assert_eq!(renewed["last_error"], Value::Null);
}
