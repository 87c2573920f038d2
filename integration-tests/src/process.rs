//! Child processes that are stopped when their guard is dropped, also when a test panics.

use anyhow::{Context, Result};
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running child process, stopped (signal, then SIGKILL after a grace period) on drop.
pub struct ChildGuard {
    name: String,
    child: Option<Child>,
    stop_signal: i32,
    log: PathBuf,
}

impl ChildGuard {
    /// Starts `cmd` with stdout and stderr appended to `log`. The child gets SIGKILL if the
    /// thread that started it dies without dropping the guard (PR_SET_PDEATHSIG).
    pub fn spawn(name: &str, mut cmd: Command, log: &Path, stop_signal: i32) -> Result<ChildGuard> {
        let out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening log {}", log.display()))?;
        let err = out.try_clone()?;
        cmd.stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .stdin(Stdio::null());
        // SAFETY: prctl is async-signal-safe and touches only the child's own state.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name} ({cmd:?}); is it installed?"))?;
        Ok(ChildGuard {
            name: name.to_string(),
            child: Some(child),
            stop_signal,
            log: log.to_path_buf(),
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// The log file of the process.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// When the process has exited on its own: a sentence saying so (its name, PID, exit
    /// status and the last lines of its log). Reaps it, so it is said once and no zombie
    /// stays behind; a process this guard stopped is not reported.
    pub fn take_exit(&mut self) -> Option<String> {
        let child = self.child.as_mut()?;
        let status = match child.try_wait() {
            Ok(Some(status)) => status,
            Ok(None) | Err(_) => return None,
        };
        let pid = child.id();
        self.child = None;
        Some(format!(
            "{} (pid {pid}) exited by itself ({status}); last lines of {}:\n{}",
            self.name,
            self.log.display(),
            tail(&self.log, 15)
        ))
    }

    /// Fails with the tail of the log if the process has exited.
    pub fn check_running(&mut self) -> Result<()> {
        if self.is_running() {
            return Ok(());
        }
        anyhow::bail!(
            "{} exited; last lines of {}:\n{}",
            self.name,
            self.log.display(),
            tail(&self.log, 30)
        )
    }

    /// Sends a signal (e.g. SIGSTOP/SIGCONT in fault tests).
    pub fn signal(&self, sig: i32) {
        if let Some(c) = self.child.as_ref() {
            // SAFETY: plain kill(2) on a pid we spawned and have not reaped.
            unsafe {
                libc::kill(c.id() as i32, sig);
            }
        }
    }

    /// Stops the process: the stop signal, then SIGKILL after `grace`.
    pub fn stop_within(&mut self, grace: Duration) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        // SAFETY: see `signal`.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGCONT);
            libc::kill(child.id() as i32, self.stop_signal);
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        tracing::warn!(name = %self.name, "did not stop in {grace:?}; killing");
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Stops the process with a 10 s grace period.
    pub fn stop(&mut self) {
        self.stop_within(Duration::from_secs(10));
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The last `n` lines of a log file, for error messages.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Runs a command to completion, failing with its output if it fails.
pub fn run(mut cmd: Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("running {cmd:?}; is it installed?"))?;
    if !out.status.success() {
        anyhow::bail!(
            "{cmd:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Resident memory of process `pid` in KiB (`VmRSS` of /proc/PID/status).
pub fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("process {pid} is gone"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS line in /proc/PID/status")
}

/// File descriptors process `pid` has open.
pub fn open_fds(pid: u32) -> Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))
        .with_context(|| format!("process {pid} is gone"))?
        .count())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shell(script: &str, log: &Path) -> ChildGuard {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", script]);
        ChildGuard::spawn("test shell", cmd, log, libc::SIGTERM).expect("sh runs")
    }

    /// A zombie still has its /proc entry; a reaped process has none.
    fn proc_entry_exists(pid: u32) -> bool {
        Path::new(&format!("/proc/{pid}")).exists()
    }

    #[test]
    fn a_process_that_exits_by_itself_is_reported_once_with_its_log_and_reaped() {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("shell.log");
        let mut guard = shell("echo 'the last words'; exit 3", &log);
        let pid = guard.pid();
        let deadline = Instant::now() + Duration::from_secs(30);
        let report = loop {
            if let Some(report) = guard.take_exit() {
                break report;
            }
            assert!(Instant::now() < deadline, "sh -c 'exit 3' never exited");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(
            report.starts_with(&format!("test shell (pid {pid}) exited by itself")),
            "{report}"
        );
        assert!(report.contains("exit status: 3"), "{report}");
        assert!(report.contains("the last words"), "{report}");
        assert_eq!(guard.take_exit(), None, "said once");
        assert!(!proc_entry_exists(pid), "pid {pid} left as a zombie");
    }

    #[test]
    fn a_running_or_stopped_process_is_not_reported() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut guard = shell("sleep 60", &dir.path().join("sleep.log"));
        assert_eq!(guard.take_exit(), None, "still running");
        guard.stop();
        assert_eq!(
            guard.take_exit(),
            None,
            "stopped by its guard, not by itself"
        );
    }
}
