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
    pub soft: libc::rlim_t,
    pub hard: libc::rlim_t,
}

/// Raises the soft open-file limit to the hard limit and returns both as they are now.
#[cfg(unix)]
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
    Ok(Limits {
        soft: limit.rlim_cur,
        hard: limit.rlim_max,
    })
}

/// Raises the limit and says in the log whether it leaves room for `max_visitor_connections`.
pub fn raise_and_report(max_visitor_connections: usize) {
    #[cfg(unix)]
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

/// Whether an accept failed for want of file descriptors (the process's or the system's).
pub fn is_exhaustion(e: &std::io::Error) -> bool {
    #[cfg(unix)]
    {
        matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE))
    }
    #[cfg(not(unix))]
    {
        let _ = e;
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptor_exhaustion_is_told_apart_from_other_accept_errors() {
        assert!(is_exhaustion(&std::io::Error::from_raw_os_error(
            libc::EMFILE
        )));
        assert!(is_exhaustion(&std::io::Error::from_raw_os_error(
            libc::ENFILE
        )));
        assert!(!is_exhaustion(&std::io::Error::from_raw_os_error(
            libc::ECONNABORTED
        )));
    }

    #[test]
    fn a_limit_is_short_when_it_leaves_no_room_beside_the_visitor_connections() {
        assert_eq!(short_of(1024, 20_000), Some(21_024));
        assert_eq!(short_of(21_023, 20_000), Some(21_024));
        assert_eq!(short_of(21_024, 20_000), None);
        assert_eq!(short_of(1_048_576, 20_000), None);
        assert_eq!(short_of(u64::MAX, usize::MAX as u64), None);
    }

    #[test]
    fn the_soft_limit_ends_at_the_hard_limit() {
        let l = raise_to_hard_limit().expect("limits");
        assert_eq!(l.soft, l.hard);
    }
}
