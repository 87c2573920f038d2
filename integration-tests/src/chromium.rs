//! Headless Chromium driven over the DevTools protocol on a pipe
//! (`--remote-debugging-pipe`: commands on its fd 3, answers on its fd 4, each a JSON text
//! ended by a NUL byte): the real browser of the tests of pages the edge serves.

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::poll::PATIENCE;

/// A headless Chromium; killed when dropped.
pub struct Chromium {
    child: Child,
    to: std::fs::File,
    from: mpsc::Receiver<Value>,
    next_id: u64,
    session: Option<String>,
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe(2) writes.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        bail!("pipe: {}", std::io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just opened and are owned by nothing else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

impl Chromium {
    /// Starts Chromium with its profile in `profile`, its messages in `log`, and `extra`
    /// command-line switches (host mapping, certificate handling).
    pub fn start(profile: &Path, log: &Path, extra: &[String]) -> Result<Chromium> {
        let (cmd_read, cmd_write) = pipe()?;
        let (ans_read, ans_write) = pipe()?;
        let (r, w) = (
            std::os::fd::AsRawFd::as_raw_fd(&cmd_read),
            std::os::fd::AsRawFd::as_raw_fd(&ans_write),
        );
        let mut cmd = Command::new("chromium");
        cmd.args(["--headless", "--no-sandbox", "--disable-gpu"])
            .args(["--remote-debugging-pipe", "--no-first-run"])
            .args(["--disable-dev-shm-usage", "--hide-scrollbars"])
            .arg(format!("--user-data-dir={}", profile.display()))
            .args(extra)
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log)?);
        // SAFETY: only async-signal-safe calls (dup2) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::dup2(r, 3) < 0 || libc::dup2(w, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().context("starting chromium")?;
        drop(cmd_read);
        drop(ans_write);
        let (tx, rx) = mpsc::channel();
        let reader = std::fs::File::from(ans_read);
        std::thread::spawn(move || {
            let mut reader = BufReader::new(reader);
            loop {
                let mut buf = Vec::new();
                match reader.read_until(0, &mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        buf.pop();
                        if let Ok(v) = serde_json::from_slice::<Value>(&buf) {
                            if tx.send(v).is_err() {
                                return;
                            }
                        }
                    }
                }
            }
        });
        Ok(Chromium {
            child,
            to: std::fs::File::from(cmd_write),
            from: rx,
            next_id: 1,
            session: None,
        })
    }

    /// Sends one command (to the page, once attached) and returns its result.
    pub fn call(&mut self, method: &str, params: Value) -> Result<Value> {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = &self.session {
            msg["sessionId"] = json!(s);
        }
        let mut bytes = msg.to_string().into_bytes();
        bytes.push(0);
        self.to.write_all(&bytes)?;
        loop {
            let v = self
                .from
                .recv_timeout(PATIENCE)
                .with_context(|| format!("no answer from chromium to {method}"))?;
            if v["id"] == id {
                if let Some(e) = v.get("error") {
                    bail!("{method}: {e}");
                }
                return Ok(v["result"].clone());
            }
        }
    }

    /// Opens a page at `url` and attaches to it.
    pub fn open(&mut self, url: &str) -> Result<()> {
        let target = self.call("Target.createTarget", json!({ "url": "about:blank" }))?;
        let attached = self.call(
            "Target.attachToTarget",
            json!({ "targetId": target["targetId"], "flatten": true }),
        )?;
        self.session = attached["sessionId"].as_str().map(str::to_string);
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": 1280, "height": 760, "deviceScaleFactor": 1, "mobile": false }),
        )?;
        self.call("Page.enable", json!({}))?;
        let navigated = self.call("Page.navigate", json!({ "url": url }))?;
        if let Some(e) = navigated.get("errorText") {
            bail!("chromium could not open {url}: {e}");
        }
        Ok(())
    }

    /// The value of a JavaScript expression in the page.
    pub fn eval(&mut self, expression: &str) -> Result<Value> {
        let r = self.call(
            "Runtime.evaluate",
            json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
        )?;
        if let Some(e) = r.get("exceptionDetails") {
            bail!("{expression}: {e}");
        }
        Ok(r["result"]["value"].clone())
    }

    /// Waits until `expression` is true in the page.
    pub fn wait_until(&mut self, what: &str, expression: &str) -> Result<()> {
        let deadline = std::time::Instant::now() + PATIENCE;
        loop {
            if self.eval(expression)? == json!(true) {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                let shown = self.eval("document.body.innerText")?;
                bail!("the page never showed {what} ({expression}); it shows:\n{shown}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A PNG of the page as shown.
    pub fn screenshot(&mut self) -> Result<Vec<u8>> {
        use base64::Engine;
        let r = self.call("Page.captureScreenshot", json!({ "format": "png" }))?;
        Ok(base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().context("screenshot data")?)?)
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
