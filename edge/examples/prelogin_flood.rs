//! Load client for the soak benchmark's pre-login rounds: opens COUNT SSH connections at once
//! to the edge, from source addresses 127.0.1.1 to 127.0.1.250 in turn, completes the key
//! exchange on each (russh client), never authenticates, holds each for HOLD_MS and closes
//! it. Prints one JSON line: how many finished the key exchange and how many the edge
//! refused or closed first.
//!
//! Usage: `prelogin_flood SSH_ADDR COUNT HOLD_MS`.

mod common;

use anyhow::{Context, Result};
use common::TrustAnyKey;
use russh::client;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};
use tokio::net::TcpSocket;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, addr, count, hold_ms] = args.as_slice() else {
        anyhow::bail!("usage: prelogin_flood SSH_ADDR COUNT HOLD_MS");
    };
    let addr: SocketAddr = addr.parse().context("SSH_ADDR")?;
    let count: usize = count.parse().context("COUNT")?;
    let hold = Duration::from_millis(hold_ms.parse().context("HOLD_MS")?);
    common::runtime()?.block_on(async move {
        let config = common::client_config();
        let started = Instant::now();
        let mut tasks = Vec::new();
        for i in 0..count {
            let config = config.clone();
            let source = Ipv4Addr::new(127, 0, 1, (i % 250) as u8 + 1);
            tasks.push(tokio::spawn(async move {
                let socket = TcpSocket::new_v4()?;
                socket.bind((source, 0).into())?;
                let stream = socket.connect(addr).await?;
                let session = client::connect_stream(config, stream, TrustAnyKey).await?;
                tokio::time::sleep(hold).await;
                drop(session);
                Ok::<_, anyhow::Error>(())
            }));
        }
        let (mut exchanged, mut refused) = (0, 0);
        for t in tasks {
            match t.await {
                Ok(Ok(())) => exchanged += 1,
                _ => refused += 1,
            }
        }
        println!(
            "{{\"exchanged\":{exchanged},\"refused\":{refused},\"seconds\":{:.1}}}",
            started.elapsed().as_secs_f64()
        );
        Ok(())
    })
}
