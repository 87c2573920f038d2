//! Load client for the edge benchmark: opens N SSH sessions (russh client), each with one
//! `tcpip-forward` for a named tunnel, keeps them idle, and prints one JSON line when all are
//! up. Usage: `idle_tunnels ADDR COUNT CONCURRENCY TOKEN[,TOKEN...] NAMES_PER_TOKEN`.
//! Session i uses token i / NAMES_PER_TOKEN and the name `idle<i>`. Runs until killed.

mod common;

use common::TrustAnyKey;
use russh::client;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, addr, count, concurrency, tokens, per_token] = args.as_slice() else {
        anyhow::bail!(
            "usage: idle_tunnels ADDR COUNT CONCURRENCY TOKEN[,TOKEN...] NAMES_PER_TOKEN"
        );
    };
    let addr: std::net::SocketAddr = addr.parse()?;
    let count: usize = count.parse()?;
    let per_token: usize = per_token.parse()?;
    let tokens: Vec<String> = tokens.split(',').map(str::to_string).collect();
    let gate = Arc::new(Semaphore::new(concurrency.parse()?));
    common::runtime()?.block_on(async move {
        let config = common::client_config();
        let started = Instant::now();
        let mut tasks = Vec::new();
        for i in 0..count {
            let token = tokens
                .get(i / per_token.max(1))
                .cloned()
                .ok_or_else(|| anyhow::anyhow!("not enough tokens for {count} tunnels"))?;
            let (config, gate) = (config.clone(), gate.clone());
            tasks.push(tokio::spawn(async move {
                let _permit = gate.acquire_owned().await?;
                let t0 = Instant::now();
                let mut handle = client::connect(config, addr, TrustAnyKey).await?;
                let auth = handle.authenticate_none(token).await?;
                anyhow::ensure!(auth.success(), "authentication refused");
                handle.tcpip_forward(format!("idle{i}"), 0).await?;
                Ok::<_, anyhow::Error>((handle, t0.elapsed()))
            }));
        }
        let mut handles = Vec::new();
        let mut setup_ms = Vec::new();
        let mut failed = 0;
        for t in tasks {
            match t.await {
                Ok(Ok((h, d))) => {
                    handles.push(h);
                    setup_ms.push(d.as_secs_f64() * 1000.0);
                }
                Ok(Err(e)) => {
                    failed += 1;
                    eprintln!("tunnel failed: {e:#}");
                }
                Err(e) => {
                    failed += 1;
                    eprintln!("task failed: {e}");
                }
            }
        }
        setup_ms.sort_by(|a, b| a.total_cmp(b));
        let pct = |p: f64| {
            setup_ms
                .get(((setup_ms.len() as f64 - 1.0) * p).round() as usize)
                .copied()
                .unwrap_or(0.0)
        };
        println!(
            "{{\"up\":{},\"failed\":{failed},\"seconds\":{:.1},\"setup_p50_ms\":{:.1},\"setup_p99_ms\":{:.1}}}",
            handles.len(),
            started.elapsed().as_secs_f64(),
            pct(0.5),
            pct(0.99)
        );
        loop {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        #[allow(unreachable_code)]
        Ok::<_, anyhow::Error>(())
    })
}
