//! Tuning of the C allocator the edge runs on.
//!
//! A bulk download through a tunnel allocates a buffer for every SSH packet (up to 32 KiB)
//! on the thread that reads the client's socket and frees it on the thread that writes to
//! the visitor. glibc gives the free memory at the top of a thread's arena back to the
//! kernel as soon as more than `M_TRIM_THRESHOLD` (128 KiB, raised as large blocks come and
//! go) is free, so the kernel had to fault in and zero fresh pages for most packets: a
//! quarter of the edge's CPU time in a profile of a 1.5 GB download
//! (docs/benchmarks.md, Edge). Keeping up to `malloc_trim_threshold_bytes` free per arena
//! lets those pages be reused.
//!
//! Setting the threshold also stops glibc from raising its mmap threshold as large blocks
//! come and go, so blocks of 128 KiB or more (the SSH read buffer at its largest sizes) are
//! always mapped and unmapped on their own; those are allocated once per burst, not per
//! packet, and the benchmark runs above include that cost.
//!
//! The threshold only governs the top of each arena. After a burst (a flood of visitors,
//! thousands of channels) most freed memory lies below blocks still in use, and glibc
//! keeps all of it: a probe saw the edge at 468 MB of resident memory with 57 MB in use.
//! [`release_free_memory`] (`malloc_trim(0)`) gives back every whole free page in every
//! arena; [`release_periodically`] runs it every `malloc_trim_interval_seconds`.

/// Sets glibc's trim threshold; 0 leaves glibc's own (dynamic) default.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn set_trim_threshold(bytes: usize) {
    if bytes == 0 {
        return;
    }
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: mallopt only changes the allocator's parameters, under glibc's own locks; the
    // edge calls it from `main` before any other thread exists.
    let ok = unsafe { libc::mallopt(libc::M_TRIM_THRESHOLD, value) };
    if ok != 1 {
        tracing::warn!(
            bytes,
            "glibc refused the malloc trim threshold; keeping its default"
        );
    }
}

/// Other C libraries keep their own policy.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn set_trim_threshold(_bytes: usize) {}

/// Gives every whole free page of every arena back to the kernel (`malloc_trim(0)`);
/// returns whether glibc released any memory.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn release_free_memory() -> bool {
    // SAFETY: malloc_trim takes the arenas' own locks; it may run on any thread at any time.
    unsafe { libc::malloc_trim(0) == 1 }
}

/// Other C libraries keep their own policy.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn release_free_memory() -> bool {
    false
}

/// Whether [`release_free_memory`] can give anything back here (glibc only).
pub const CAN_RELEASE: bool = cfg!(all(target_os = "linux", target_env = "gnu"));

/// Calls [`release_free_memory`] every `every` on a blocking thread (it walks every arena,
/// holding each one's lock for a moment) until `stop` is cancelled; counts each run and
/// the time it took.
pub async fn release_periodically(
    every: std::time::Duration,
    stop: tokio_util::sync::CancellationToken,
    runs: prometheus::IntCounter,
    seconds: prometheus::Counter,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        let started = std::time::Instant::now();
        let released = tokio::task::spawn_blocking(release_free_memory)
            .await
            .unwrap_or(false);
        let took = started.elapsed();
        runs.inc();
        seconds.inc_by(took.as_secs_f64());
        tracing::debug!(released, took_ms = took.as_millis() as u64, "malloc_trim");
    }
}
