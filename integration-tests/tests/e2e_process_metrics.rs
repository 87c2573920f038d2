//! Every process exports the conventional `process_*` series operators watch (resident
//! memory, CPU seconds, open file descriptors against their limit, start time), and the
//! edge's descriptors go back to where they were once a burst of visitors has gone: those
//! that finished, those that left half way through a request, and those that closed right
//! after sending one. An edge started with a low soft open-file limit (a stock shell's
//! 1,024) raises it to the hard limit.

use nearhop_stack::prelude::*;
use std::io::Write;
use std::net::TcpStream;
use std::time::{SystemTime, UNIX_EPOCH};

/// Checks the process series in one exposition and returns its open descriptors.
fn process_series(who: &str, text: &str) -> f64 {
    let value = |name: &str| {
        metric(text, name, &[]).unwrap_or_else(|| panic!("{who} exports no {name}:\n{text}"))
    };
    let resident = value("process_resident_memory_bytes");
    assert!(
        resident > 1024.0 * 1024.0,
        "{who}: resident memory {resident}"
    );
    assert!(value("process_virtual_memory_bytes") >= resident, "{who}");
    assert!(value("process_cpu_seconds_total") >= 0.0, "{who}");
    let open = value("process_open_fds");
    let max = value("process_max_fds");
    assert!(
        open >= 3.0 && open < max,
        "{who}: {open} of {max} descriptors"
    );
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    let started = value("process_start_time_seconds");
    assert!(
        started <= now && started > now - 3600.0,
        "{who}: started at {started}, now {now}"
    );
    open
}

/// Lowers this process's soft open-file limit to 1,024 (what a shell on a stock Debian
/// machine gives), so that the processes the test starts begin with it; returns the hard
/// limit.
fn stock_shell_open_file_limit() -> f64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write the struct we own.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        let lowered = libc::rlimit {
            rlim_cur: limit.rlim_max.min(1024),
            rlim_max: limit.rlim_max,
        };
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lowered), 0);
    }
    limit.rlim_max as f64
}

#[test]
fn every_process_exports_its_process_series_and_visitors_leave_no_descriptor_behind() {
    let hard = stock_shell_open_file_limit();
    let stack = full_stack_with(StackOptions {
        control_tweak: Some(fast_heartbeats),
        ..StackOptions::default()
    });
    stack.wait_mesh_linked().expect("the edges link up");
    let local = LocalService::start("fds");
    let (_client, url) = stack
        .http_tunnel(EU, "fds", Some("http"), local.port)
        .expect("URL");
    let host = host_of(&url);
    let (status, body) = http_get(stack.regions[AP].http_addr(), &host, "/").expect("visit");
    assert_eq!(status, 200, "ap relays the tunnel to eu: {body}");

    process_series("control", &stack.control.metrics().expect("control"));
    for region in [US, EU, AP] {
        let dns = stack.dns_of(&stack.regions[region].name).expect("dns");
        let text = dns.backend_metrics().expect("backend");
        process_series("pdns-backend", &text);
        assert!(
            text.contains("nearhop_pdns_backend_calls_total"),
            "the backend's own series keep their prefix"
        );
    }
    let mut before = Vec::new();
    for region in [EU, AP] {
        let text = stack.edges[region].metrics().expect("edge");
        before.push(process_series("edge", &text));
        if hard > 1024.0 {
            assert_eq!(
                metric(&text, "process_max_fds", &[]),
                Some(hard),
                "the edge raised its soft open-file limit to the hard limit"
            );
        } else {
            eprintln!("hard open-file limit {hard}: nothing to raise, not checked");
        }
    }

    // A burst at the holder (eu) and through the relaying edge (ap).
    for region in [EU, AP] {
        let addr = stack.regions[region].http_addr();
        for round in 0..100 {
            let (status, body) = http_get(addr, &host, "/").expect("visit");
            assert_eq!(status, 200, "{body}");
            // Left half way through a request head.
            let mut s = TcpStream::connect(addr).expect("connect");
            s.write_all(format!("GET /{round} HTTP/1.1\r\nHost: {host}\r\n").as_bytes())
                .expect("write");
            drop(s);
            // Closed right after a whole request, before its answer.
            let mut s = TcpStream::connect(addr).expect("connect");
            s.write_all(format!("GET /{round} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
                .expect("write");
            drop(s);
        }
    }

    // Every one of those sockets (and the channels behind them) is let go again. A few
    // descriptors of slack, since the mesh links and the control client reconnect on their
    // own: a leak of 4 or fewer in 300 visits per edge goes unseen.
    for (i, region) in [EU, AP].into_iter().enumerate() {
        eventually("the edge's descriptors go back", || {
            let text = stack.edges[region].metrics()?;
            let open = metric(&text, "process_open_fds", &[]).unwrap_or(f64::MAX);
            anyhow::ensure!(
                open <= before[i] + 4.0,
                "{} has {open} descriptors open, {} before the burst",
                stack.regions[region].name,
                before[i]
            );
            Ok(())
        });
    }
    let (status, _) = http_get(stack.regions[EU].http_addr(), &host, "/").expect("visit");
    assert_eq!(status, 200, "the tunnel serves on");
}
