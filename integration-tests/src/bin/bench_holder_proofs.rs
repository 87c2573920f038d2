//! Holder proofs: what control spends signing one (once per tunnel set up) and what a peer
//! edge spends checking one (once per claim in a holdings feed: a snapshot of every name the
//! peer holds when a link comes up, then one per new tunnel), on one core.
//!
//!     cargo build --release --workspace --bins
//!     target/release/bench_holder_proofs [names]      # default 100,000
//!
//! The names are shaped like the free zone's (`k3x9q2.free.tunnel.test`), every proof is
//! checked against the name, edge id, tunnel id and kind it was made for, as an edge does.

use nearhop_wire::holder_proof::{HolderKey, HolderSigner};
use nearhop_wire::TunnelKind;
use std::time::Instant;

fn main() -> anyhow::Result<()> {
    let names: usize = match std::env::args().nth(1) {
        Some(n) => n
            .parse()
            .map_err(|e| anyhow::anyhow!("names must be a count: {e}"))?,
        None => 100_000,
    };
    let signer = HolderSigner::from_secret("bench-admin-secret-0123456789");
    let key = HolderKey::parse(&signer.public_key()).map_err(anyhow::Error::msg)?;
    let claims: Vec<(String, i64)> = (0..names)
        .map(|i| (format!("n{i:06x}.free.tunnel.test"), 1_000_000 + i as i64))
        .collect();

    let started = Instant::now();
    let proofs: Vec<String> = claims
        .iter()
        .map(|(name, id)| signer.prove(name, "eu-1", *id, TunnelKind::Http))
        .collect();
    let signing = started.elapsed();

    let started = Instant::now();
    let mut good = 0usize;
    for ((name, id), proof) in claims.iter().zip(&proofs) {
        good += usize::from(key.verifies(proof, name, "eu-1", *id, TunnelKind::Http));
    }
    let checking = started.elapsed();
    anyhow::ensure!(good == names, "only {good} of {names} proofs checked out");

    let per = |d: std::time::Duration| d.as_secs_f64() * 1e6 / names.max(1) as f64;
    println!("holder proofs, {names} names, one core:");
    println!(
        "  control signs:  {:>8.1} µs each, {:.2} s in all",
        per(signing),
        signing.as_secs_f64()
    );
    println!(
        "  a peer checks:  {:>8.1} µs each, {:.2} s in all (a snapshot of {names} names)",
        per(checking),
        checking.as_secs_f64()
    );
    Ok(())
}
