//! `allocator::release_free_memory` gives back the memory glibc keeps after a burst, which
//! the trim threshold alone does not: the memory a flood of visitors leaves behind. A test
//! binary of its own, since resident memory is the whole process's.

#![cfg(all(target_os = "linux", target_env = "gnu"))]

use nearhop_edge::process::allocator::{release_free_memory, set_trim_threshold};

const MIB: u64 = 1024 * 1024;

/// The process's resident memory (`/proc/self/statm`).
fn resident() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("resident pages");
    // SAFETY: sysconf reads a constant of the system.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64;
    pages * page
}

#[test]
fn free_memory_between_live_blocks_goes_back_to_the_kernel() {
    // As the edge runs: 8 MiB kept at the top of each arena.
    set_trim_threshold(8 * 1024 * 1024);
    // 64 MiB in 16 KiB blocks (heap memory, below the mmap threshold), written so that
    // every page is resident. Every 64th block lives on, as a few channels of a flood do
    // while the rest are freed: the free memory lies between blocks still in use.
    let mut blocks: Vec<Vec<u8>> = (0..4096)
        .map(|i| vec![(i % 251) as u8 + 1; 16 * 1024])
        .collect();
    let mut i = 0;
    blocks.retain(|_| {
        i += 1;
        i % 64 == 0
    });
    let kept = resident();
    assert!(
        kept >= 60 * MIB,
        "glibc gave the freed memory back by itself: {} MiB resident",
        kept / MIB
    );
    assert!(release_free_memory(), "glibc released nothing");
    let after = resident();
    assert!(
        kept.saturating_sub(after) >= 48 * MIB,
        "resident {} MiB before the trim, {} MiB after",
        kept / MIB,
        after / MIB
    );
    assert_eq!(blocks.len(), 64);
    assert!(
        blocks.iter().all(|b| b[0] != 0),
        "the live blocks are intact"
    );
}
