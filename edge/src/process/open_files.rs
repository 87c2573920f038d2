//! The edge's open-file limit.
//!
//! Every visitor connection, tunnel session and mesh link is a socket (channels to a
//! tunnel's client and relays to a peer ride on those). A shell on a stock Debian machine
//! starts programs with a soft limit of 1,024 open files (the hard limit is far higher), so
//! `make up` or an edge started by hand would refuse connections past about a thousand
//! visitors while the system allowed many more. Like Go's runtime and nginx's
//! `worker_rlimit_nofile`, the edge raises its soft limit to the hard limit at start; the
//! hard limit stays the operator's (`LimitNOFILE=` in the systemd unit, `ulimit -Hn`), and
//! the edge warns when it leaves no room for `max_visitor_connections`.

/// Descriptors the edge needs beside its visitor connections: tunnel sessions, mesh links,
/// connections to control and its admin API, listeners, files.
pub const HEADROOM: u64 = 1024;

/// The soft and hard open-file limits after [`raise_to_hard_limit`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The limit the process runs with.
    pub soft: u64,
    /// The most the soft limit may be raised to without privilege.
    pub hard: u64,
}

/// Raises the soft open-file limit to the hard limit and returns both as they are now.
#[cfg(target_os = "linux")]
pub fn raise_to_hard_limit() -> std::io::Result<Limits> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        // Linux caps the hard limit at fs.nr_open, so it is always a limit one can set.
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit reads the struct we own; raising the soft limit up to the
        // hard one needs no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        limit = raised;
    }
    // rlim_t is u32 on 32-bit targets.
    #[allow(clippy::useless_conversion)]
    Ok(Limits {
        soft: u64::from(limit.rlim_cur),
        hard: u64::from(limit.rlim_max),
    })
}

/// Other systems keep the limit they were started with.
#[cfg(not(target_os = "linux"))]
pub fn raise_to_hard_limit() -> std::io::Result<Limits> {
    Err(std::io::Error::from(std::io::ErrorKind::Unsupported))
}

/// Raises the limit and says in the log whether it leaves room for `max_visitor_connections`.
pub fn raise_and_report(max_visitor_connections: usize) {
    match raise_to_hard_limit() {
        Ok(l) => match short_of(l.soft, max_visitor_connections as u64) {
            Some(need) => tracing::warn!(
                open_files = l.soft,
                max_visitor_connections,
                "the open-file limit is below what max_visitor_connections needs: the edge \
                 runs out of descriptors first; raise the hard limit (LimitNOFILE= in the \
                 systemd unit, ulimit -Hn) to {need} or more, or lower max_visitor_connections"
            ),
            None => tracing::info!(open_files = l.soft, "open-file limit"),
        },
        Err(e) => tracing::warn!(error = %e, "could not raise the open-file limit"),
    }
}

/// The limit needed when `limit` leaves no room for `max_visitor_connections` and the
/// edge's own descriptors.
pub fn short_of(limit: u64, max_visitor_connections: u64) -> Option<u64> {
    let need = max_visitor_connections.saturating_add(HEADROOM);
    (limit < need).then_some(need)
}

/// What an accept error says about file descriptors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exhaustion {
    /// The process is at its open-file limit (EMFILE).
    Process,
    /// The whole system is out of open files (ENFILE: `fs.file-max`).
    System,
}

/// Whether an accept failed for want of file descriptors, and whose.
pub fn exhaustion(e: &std::io::Error) -> Option<Exhaustion> {
    #[cfg(unix)]
    {
        match e.raw_os_error() {
            Some(libc::EMFILE) => Some(Exhaustion::Process),
            Some(libc::ENFILE) => Some(Exhaustion::System),
            _ => None,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = e;
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptor_exhaustion_is_told_apart_from_other_accept_errors() {
        let of = |errno| exhaustion(&std::io::Error::from_raw_os_error(errno));
        assert_eq!(of(libc::EMFILE), Some(Exhaustion::Process));
        assert_eq!(of(libc::ENFILE), Some(Exhaustion::System));
        assert_eq!(of(libc::ECONNABORTED), None);
    }

    #[test]
    fn a_limit_is_short_when_it_leaves_no_room_beside_the_visitor_connections() {
        assert_eq!(short_of(1024, 20_000), Some(21_024));
        assert_eq!(short_of(21_023, 20_000), Some(21_024));
        assert_eq!(short_of(21_024, 20_000), None);
        assert_eq!(short_of(1_048_576, 20_000), None);
        assert_eq!(short_of(u64::MAX, usize::MAX as u64), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_soft_limit_ends_at_the_hard_limit() {
        let l = raise_to_hard_limit().expect("limits");
        assert_eq!(l.soft, l.hard);
    }
}
