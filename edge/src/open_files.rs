//! The edge's open-file limit.
//!
//! Every visitor connection, tunnel session and mesh link is a socket (channels to a
//! tunnel's client and relays to a peer ride on those). A shell on a stock Debian machine
//! starts programs with a soft limit of 1,024 open files (the hard limit is far higher), so
//! `make up` or an edge started by hand would refuse connections past about a thousand
//! visitors while the system allowed many more. Like Go's runtime and nginx's
//! `worker_rlimit_nofile`, the edge raises its soft limit to the hard limit at start; the
//! hard limit stays the operator's (`LimitNOFILE=` in the systemd unit, `ulimit -Hn`).

/// Below this many open files an edge is warned about at start: it holds a few thousand
/// visitors at most.
pub const LOW_LIMIT: libc::rlim_t = 16_384;

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

/// Raises the limit and says in the log what the edge can hold.
pub fn raise_and_report() {
    #[cfg(unix)]
    match raise_to_hard_limit() {
        Ok(l) if l.soft < LOW_LIMIT => tracing::warn!(
            open_files = l.soft,
            "the open-file limit lets this edge hold only about {} visitor connections; \
             raise the hard limit (LimitNOFILE= in the systemd unit, ulimit -Hn) to {} or more",
            l.soft,
            LOW_LIMIT
        ),
        Ok(l) => tracing::info!(open_files = l.soft, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise the open-file limit"),
    }
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
    fn the_soft_limit_ends_at_the_hard_limit() {
        let l = raise_to_hard_limit().expect("limits");
        assert_eq!(l.soft, l.hard);
    }
}
