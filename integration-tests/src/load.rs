//! Steady visitor load: visitors resolving and fetching a tunnel URL in a loop on a thread,
//! counting what got through, for the fault tests and `bench_e2e`.

use crate::dns_client::{query_a, QTYPE_A};
use crate::edge::url_host_port;
use crate::visitor::http_get;
use crate::Stack;
use anyhow::{ensure, Context, Result};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What a load saw.
#[derive(Debug, Clone, Default)]
pub struct LoadStats {
    /// Requests answered 200 by the tunnel's local service.
    pub ok: u64,
    /// Lookups or requests that failed.
    pub errors: u64,
    /// The first few failures, for the report.
    pub samples: Vec<String>,
    /// The last few failures.
    pub last_samples: std::collections::VecDeque<String>,
    /// When the last failure happened.
    pub last_error_at: Option<Instant>,
}

/// Visitors resolving and fetching a tunnel URL in a loop on a thread, every `pause`, until
/// stopped. Each iteration is a fresh lookup and a fresh connection, as a new visitor.
pub struct Load {
    stop: Arc<AtomicBool>,
    stats: Arc<Mutex<LoadStats>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Where a load's visitors resolve and connect.
#[derive(Debug, Clone)]
pub struct VisitorPlan {
    /// The region DNS address and the source address queries come from.
    pub dns: SocketAddr,
    /// Source address of the queries.
    pub source: Ipv4Addr,
    /// The tunnel's URL.
    pub url: String,
    /// What the body must contain (the local service's tag).
    pub expect: String,
    /// Each region's edge address and visitor HTTP port (see [`crate::visitor::edge_http_port`]).
    pub edge_ports: Vec<(Ipv4Addr, u16)>,
}

impl Load {
    /// Starts visitors of `plan` on a thread.
    pub fn start(plan: VisitorPlan, pause: Duration) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Mutex::new(LoadStats::default()));
        let (stop2, stats2) = (stop.clone(), stats.clone());
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                let r = visit_once(&plan);
                let mut s = stats2.lock().unwrap();
                match r {
                    Ok(()) => s.ok += 1,
                    Err(e) => {
                        s.errors += 1;
                        let text = format!("{e:#}");
                        if s.samples.len() < 5 {
                            s.samples.push(text.clone());
                        }
                        if s.last_samples.len() == 5 {
                            s.last_samples.pop_front();
                        }
                        s.last_samples.push_back(text);
                        s.last_error_at = Some(Instant::now());
                    }
                }
                drop(s);
                std::thread::sleep(pause);
            }
        });
        Load {
            stop,
            stats,
            thread: Some(thread),
        }
    }

    /// A snapshot of the counts so far.
    pub fn stats(&self) -> LoadStats {
        self.stats.lock().unwrap().clone()
    }

    /// Stops the visitors and returns what they saw.
    pub fn stop(mut self) -> LoadStats {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.stats()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn visit_once(plan: &VisitorPlan) -> Result<()> {
    let (host, port) = url_host_port(&plan.url)?;
    let resp = query_a(plan.dns, plan.source, &host)?;
    let addr: Ipv4Addr = resp
        .data_of(QTYPE_A)
        .into_iter()
        .next()
        .with_context(|| format!("lookup of {host}: rcode {}, no address", resp.rcode))?
        .parse()?;
    let port = plan
        .edge_ports
        .iter()
        .find(|(ip, _)| *ip == addr)
        .map(|(_, p)| *p)
        .unwrap_or(port);
    let (status, body) = http_get(SocketAddr::from((addr, port)), &host, "/load")?;
    ensure!(status == 200, "status {status}: {body}");
    ensure!(body.contains(&plan.expect), "unexpected body {body:?}");
    Ok(())
}

/// A visitor plan for a resolver in region `resolver`.
pub fn plan_in(stack: &Stack, resolver: usize, url: &str, tag: &str) -> VisitorPlan {
    let r = &stack.regions[resolver];
    VisitorPlan {
        dns: r.dns_addr(),
        source: r.ip,
        url: url.to_string(),
        expect: format!("hello from {tag}"),
        edge_ports: stack.regions.iter().map(|r| (r.ip, r.ports.http)).collect(),
    }
}
