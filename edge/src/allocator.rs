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

/// Sets glibc's trim threshold; 0 leaves glibc's own (dynamic) default.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn set_trim_threshold(bytes: usize) {
    if bytes == 0 {
        return;
    }
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: mallopt only changes the allocator's parameters; it is called from `main`
    // before any other thread exists.
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
