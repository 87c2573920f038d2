//! `nearhop-stack`: starts the whole local three-region stack in the foreground (`make up`):
//! Postgres primary (us, 127.0.0.1) and streaming replicas (eu 127.0.0.2, ap 127.0.0.3),
//! a `pdns_server` + pdns-backend per region, control, an edge per region. Ctrl-C stops
//! everything it started.

use anyhow::{Context, Result};
use clap::Parser;
use nearhop_stack::{Stack, StackOptions};
use nearhop_wire::Plan;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "nearhop-stack",
    about = "Run nearhop's local three-region stack"
)]
struct Cli {
    /// Where data and logs go; emptied at start.
    #[arg(long, default_value = ".stack")]
    dir: PathBuf,
    /// Lag-race bound in ms (0 turns the wait off).
    #[arg(long, default_value_t = 3000)]
    lag_wait_ms: u64,
    /// fsync in Postgres (off is faster on a laptop, on is what production runs).
    #[arg(long)]
    fsync: bool,
    /// Edges per region: the first on the region's address, each further one on
    /// 127.0.N.<region's last byte> with the same ports; every edge serves every tunnel.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=8))]
    edges_per_region: u8,
    /// Run Pebble (the ACME test server) and have control obtain the zones' certificates
    /// from it, through DNS-01 in the stack's own DNS; the edges serve those instead of the
    /// self-signed dev certificate.
    #[arg(long)]
    acme: bool,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    if cli.dir.exists() {
        std::fs::remove_dir_all(&cli.dir)
            .with_context(|| format!("emptying {}", cli.dir.display()))?;
    }
    let dir = std::path::absolute(&cli.dir)?;
    eprintln!("starting the stack in {} ...", dir.display());
    let stack = Stack::start(StackOptions {
        fixed_ports: true,
        with_dns: true,
        with_edges: true,
        fsync: cli.fsync,
        lag_wait_ms: cli.lag_wait_ms,
        dir: Some(dir.clone()),
        edge_https: true,
        edges_per_region: cli.edges_per_region,
        acme: cli.acme,
        // Every edge has its own credential: nothing here may act as any edge.
        control_tweak: Some(|spec| spec.legacy_edge_secret = false),
        ..Default::default()
    })?;
    let demo = stack.control.create_account(Plan::Pro)?;
    let cfg = stack.control.config_path.display().to_string();
    let us = &stack.regions[0];
    println!();
    println!("nearhop stack ready (data and logs in {})", dir.display());
    println!();
    println!(
        "Demo pro account {} created; its token: {}",
        demo.account_id, demo.token
    );
    println!("Expose a local port (here 8000) through the nearest edge:");
    for r in &stack.regions {
        println!(
            "  {:>2}: ssh -p {} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
             -R0:localhost:8000 {}@{}",
            r.name, r.ports.ssh, demo.token, r.ip
        );
    }
    println!(
        "  anonymous free tunnel: ssh -p {} -o StrictHostKeyChecking=no \
         -o UserKnownHostsFile=/dev/null -R0:localhost:8000 http@{}",
        us.ports.ssh, us.ip
    );
    println!();
    println!("Accounts and tokens:");
    println!("  target/debug/nearhop-control --config {cfg} account create --plan pro --name you");
    println!("  target/debug/nearhop-control --config {cfg} token create --account ID");
    println!();
    println!("Resolve through each region's DNS:");
    for r in &stack.regions {
        println!(
            "  {:>2}: dig @{} -p {} -b {} a.tunnel.test A   (the connect name: nearest region)",
            r.name, r.ip, r.ports.dns, r.ip
        );
    }
    println!("  a tunnel: dig @127.0.0.3 -p 5300 NAME.a.tunnel.test CNAME");
    println!("Visit a tunnel: curl -H 'Host: NAME.a.tunnel.test' http://127.0.0.3:8080/");
    println!(
        "  through any other edge too (it relays to the edge holding the tunnel): curl -H 'Host: NAME.a.tunnel.test' http://127.0.0.1:8080/"
    );
    match &stack.pebble {
        Some(pebble) => {
            let root = pebble.write_issuing_root()?;
            println!(
                "  over HTTPS (certificates control obtains from Pebble; trust Pebble's root): curl --cacert {} --resolve NAME.a.tunnel.test:8443:127.0.0.3 https://NAME.a.tunnel.test:8443/",
                root.display()
            );
            println!(
                "  Pebble: directory {}, log {}; control's certificates: target/debug/nearhop-control --config {cfg} certificate list",
                pebble.directory_url,
                pebble.log().display()
            );
        }
        None => println!(
            "  over HTTPS (the stack's own certificate): curl --cacert {} --resolve NAME.a.tunnel.test:8443:127.0.0.3 https://NAME.a.tunnel.test:8443/",
            dir.join("tls/zone-cert.pem").display()
        ),
    }
    println!(
        "  a tls tunnel (TOKEN+tls@..., your service holds the certificate): curl -k --resolve NAME.a.tunnel.test:8443:127.0.0.3 https://NAME.a.tunnel.test:8443/"
    );
    println!();
    println!("Metrics:");
    println!("  control      {}/metrics", stack.control.url);
    for r in &stack.regions {
        println!(
            "  {:>2} backend   http://{}:{}/metrics    edge http://{}:{}/metrics",
            r.name, r.ip, r.ports.backend_http, r.ip, r.ports.admin
        );
    }
    for e in stack.edges.iter().skip(stack.regions.len()) {
        println!(
            "  {:>2} edge {}  http://{}:{}/metrics  (visitors: http://{}:{}/)",
            e.spec.region, e.spec.edge_id, e.spec.ip, e.spec.admin, e.spec.ip, e.spec.http
        );
    }
    println!();
    println!("Ctrl-C stops everything.");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut stack = stack;
    rt.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        // Made once: a signal that comes while the exits are looked at is not lost.
        let mut term = signal(SignalKind::terminate())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut look = tokio::time::interval(std::time::Duration::from_secs(2));
        loop {
            tokio::select! {
                _ = interrupt.recv() => return Ok::<(), anyhow::Error>(()),
                _ = term.recv() => return Ok(()),
                _ = look.tick() => {
                    for exit in stack.take_exits() {
                        eprintln!("\n{exit}\nThe rest of the stack goes on; Ctrl-C stops it, `make up` starts it afresh.");
                    }
                }
            }
        }
    })?;
    eprintln!("stopping ...");
    drop(stack);
    eprintln!("stopped");
    Ok(())
}
