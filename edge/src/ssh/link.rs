//! One client's SSH session as the rest of the edge sees it (`SessionLink`): its handle,
//! its options, the text queued for the user's terminal, and the alive probe.

use crate::io::closing_channel::PeerCloses;
use crate::options::TunnelOptions;
use crate::ssh::messages;
use bytes::Bytes;
use russh::server::Handle;
use russh::ChannelId;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// How the wait for a session's options ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptionsKnown {
    /// The command (with its options) or the shell request came.
    Settled,
    /// No session channel within the grace: a `-N` client, which sends no options.
    NoSession,
    /// A session channel, but no command or shell within the bound.
    NoCommand,
    /// The session ended.
    Gone,
}

/// How long a refusal waits for the client's session channel to show text: OpenSSH opens it
/// right after its forwards; `ssh -N` never does, and gets the disconnect message alone.
const REFUSAL_SESSION_WAIT: Duration = Duration::from_millis(1500);

/// How long a refused client whose session channel was closed has to leave by itself before
/// it is disconnected.
const REFUSAL_LINGER: Duration = Duration::from_secs(2);

/// Locks a mutex, recovering the data if a panicking thread poisoned it.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One client's SSH connection as the rest of the edge sees it.
pub struct SessionLink {
    /// Edge-local id, for logs.
    pub id: u64,
    /// The client's address.
    pub peer: SocketAddr,
    handle: OnceLock<Handle>,
    ended: AtomicBool,
    authenticated: AtomicBool,
    setups_in_flight: AtomicUsize,
    /// The session is being ended ([`SessionLink::refuse`], [`SessionLink::close_by_user`]).
    ending: AtomicBool,
    /// Held while lines are told to a client without a session channel, one setup's at a
    /// time ([`SessionLink::tell_without_session`]).
    telling: tokio::sync::Mutex<()>,
    /// Options from the command words, for tunnels set up later.
    options: RwLock<Arc<TunnelOptions>>,
    /// Set once the options are known: the command or the shell request came.
    options_settled: AtomicBool,
    /// Woken when the client authenticates, the options settle or the session channel opens.
    session_news: Notify,
    /// The session channel text is printed on, once the client asked for a shell or command.
    output: Mutex<Output>,
    /// Cancelled when the session ends.
    pub gone: CancellationToken,
    /// Visitor channels the edge is done with, waiting for the client to close them.
    pub closes: Arc<PeerCloses>,
}

#[derive(Default)]
struct Output {
    channel: Option<ChannelId>,
    ready: bool,
    pending: Vec<(bool, String)>,
}

impl SessionLink {
    /// A link for a freshly accepted connection.
    pub fn new(id: u64, peer: SocketAddr) -> SessionLink {
        SessionLink {
            id,
            peer,
            handle: OnceLock::new(),
            ended: AtomicBool::new(false),
            authenticated: AtomicBool::new(false),
            setups_in_flight: AtomicUsize::new(0),
            ending: AtomicBool::new(false),
            telling: tokio::sync::Mutex::new(()),
            options: RwLock::new(Arc::default()),
            options_settled: AtomicBool::new(false),
            session_news: Notify::new(),
            output: Mutex::new(Output::default()),
            gone: CancellationToken::new(),
            closes: Arc::default(),
        }
    }

    /// Records the session's handle (first call wins).
    pub fn set_handle(&self, handle: Handle) {
        let _ = self.handle.set(handle);
    }

    /// The session's handle, once known.
    pub fn handle(&self) -> Option<&Handle> {
        self.handle.get()
    }

    /// Marks the session as over.
    pub fn mark_ended(&self) {
        self.ended.store(true, Ordering::SeqCst);
        self.gone.cancel();
        self.closes.session_ended();
    }

    /// Records that the client authenticated.
    pub fn mark_authenticated(&self) {
        self.authenticated.store(true, Ordering::SeqCst);
        self.session_news.notify_waiters();
    }

    /// Waits until the client authenticated (true) or the session ended (false).
    pub async fn until_authenticated(&self) -> bool {
        loop {
            let news = self.session_news.notified();
            tokio::pin!(news);
            news.as_mut().enable();
            if self.authenticated() {
                return true;
            }
            tokio::select! {
                _ = &mut news => {}
                _ = self.gone.cancelled() => return self.authenticated(),
            }
        }
    }

    /// Whether the client authenticated.
    pub fn authenticated(&self) -> bool {
        self.authenticated.load(Ordering::SeqCst)
    }

    /// Whether the session is over.
    pub fn has_ended(&self) -> bool {
        self.ended.load(Ordering::SeqCst)
    }

    /// The options of the session's command (defaults until it arrives).
    pub fn options(&self) -> Arc<TunnelOptions> {
        self.options
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Records the options of the session's command.
    pub fn set_options(&self, options: Arc<TunnelOptions>) {
        *self.options.write().unwrap_or_else(|e| e.into_inner()) = options;
    }

    /// The client asked for its command (whose options were set just before) or a shell:
    /// the session's options are final.
    pub fn settle_options(&self) {
        self.options_settled.store(true, Ordering::SeqCst);
        self.session_news.notify_waiters();
    }

    /// Waits until the session's options are known, so that no visitor reaches a tunnel
    /// before its `b:`, `k:` and `w:` apply: until the command or shell request came; for a
    /// client that opened no session channel within `grace` of `since` (its forward), at
    /// once (`ssh -N` sends no options); for one that opened a channel but asks for nothing,
    /// at most `bound`.
    pub async fn options_known(
        &self,
        since: Instant,
        grace: Duration,
        bound: Duration,
    ) -> OptionsKnown {
        let bound = tokio::time::Instant::from_std(since + bound);
        let grace = tokio::time::Instant::from_std(since + grace);
        loop {
            let news = self.session_news.notified();
            tokio::pin!(news);
            news.as_mut().enable();
            if self.options_settled.load(Ordering::SeqCst) {
                return OptionsKnown::Settled;
            }
            let has_channel = self.session_channel().is_some();
            let until = if has_channel { bound } else { grace.min(bound) };
            if tokio::time::Instant::now() >= until {
                return if has_channel {
                    OptionsKnown::NoCommand
                } else {
                    OptionsKnown::NoSession
                };
            }
            tokio::select! {
                _ = &mut news => {}
                _ = tokio::time::sleep_until(until) => {}
                _ = self.gone.cancelled() => return OptionsKnown::Gone,
            }
        }
    }

    /// Tunnel setups of this session still waiting for control.
    pub fn setups_in_flight(&self) -> usize {
        self.setups_in_flight.load(Ordering::SeqCst)
    }

    /// Counts a tunnel setup in progress until the guard drops.
    pub fn setup_started(self: &Arc<Self>) -> SetupGuard {
        self.setups_in_flight.fetch_add(1, Ordering::SeqCst);
        SetupGuard(self.clone())
    }

    /// Tells a client that opened no session channel (`ssh -N`) `lines` (its URL, a
    /// refusal), once its pending setups are done and it has had `grace` to open one.
    ///
    /// OpenSSH shows such a client nothing the server sends after authentication, except
    /// errors: the refusal of a `forwarded-streamlocal` channel for an unknown path is
    /// printed with the first 100 bytes of the path, so paths carry the text, a line of at
    /// most 100 bytes each ([`messages::path_lines`]), in order. (The auth banner cannot
    /// carry the URL: it is shown only before authentication succeeds, when the forwards and
    /// so the name are not known yet.)
    pub async fn tell_without_session(&self, lines: &[String], grace: Duration) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(grace) => {}
                _ = self.gone.cancelled() => return,
            }
            if self.setups_in_flight.load(Ordering::SeqCst) == 0 {
                break;
            }
        }
        if lock(&self.output).channel.is_some() || self.has_ended() {
            return;
        }
        let Some(handle) = self.handle() else {
            return;
        };
        // One at a time: each waits for the client's refusal, so they are printed in order,
        // and one setup's lines at a time, so that a note follows its own URL.
        let _turn = self.telling.lock().await;
        for path in lines.iter().flat_map(|l| messages::path_lines(l)) {
            let opened = tokio::time::timeout(
                Duration::from_secs(5),
                handle.channel_open_forwarded_streamlocal(path),
            )
            .await;
            match opened {
                // Refused, as OpenSSH refuses a path it does not forward: printed.
                Ok(Err(_)) => {}
                // A client that took the channel prints nothing of it: no use going on.
                Ok(Ok(channel)) => {
                    let _ = channel.close().await;
                    return;
                }
                Err(_) => return,
            }
        }
    }

    /// The session channel, once opened.
    pub fn session_channel(&self) -> Option<ChannelId> {
        lock(&self.output).channel
    }

    /// Remembers the session channel; text is held until [`SessionLink::take_ready`].
    pub fn set_session_channel(&self, channel: ChannelId) {
        lock(&self.output).channel = Some(channel);
        self.session_news.notify_waiters();
    }

    /// Queues a line for the user (stderr when `error`); returns nothing, see `take_ready`.
    pub fn queue(&self, error: bool, text: String) {
        lock(&self.output).pending.push((error, text));
    }

    /// Marks the session channel ready for output and returns the channel and pending text.
    pub fn take_ready(&self) -> Option<(ChannelId, Vec<(bool, String)>)> {
        let taken = {
            let mut o = lock(&self.output);
            o.ready = true;
            let channel = o.channel;
            channel.map(|c| (c, std::mem::take(&mut o.pending)))
        };
        self.session_news.notify_waiters();
        taken
    }

    /// Waits until `done` holds (true), up to `wait`, or the session ends (false unless `done`
    /// holds then). `done` is looked at again whenever the session has news.
    async fn wait_until(&self, wait: Duration, done: impl Fn(&Self) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let news = self.session_news.notified();
            tokio::pin!(news);
            news.as_mut().enable();
            if done(self) {
                return true;
            }
            if self.has_ended() {
                return false;
            }
            tokio::select! {
                _ = &mut news => {}
                _ = tokio::time::sleep_until(deadline) => return done(self),
                _ = self.gone.cancelled() => return false,
            }
        }
    }

    /// Waits until the client opened its session channel (OpenSSH does so right after
    /// sending every `-R`), up to `wait`, or the session ends.
    pub async fn until_session_channel(&self, wait: Duration) {
        self.wait_until(wait, |l| l.session_channel().is_some())
            .await;
    }

    /// The session channel, once it shows text (the client asked for a shell or command).
    fn ready_channel(&self) -> Option<ChannelId> {
        let o = lock(&self.output);
        o.channel.filter(|_| o.ready)
    }

    /// Refuses the client: `line` on its session channel (stderr), where it has one, then
    /// exit status 1 and the channel's close, so that every client shows the sentence
    /// (Dropbear's `dbclient` and Paramiko show no disconnect message, and a refusal right
    /// after the forwards comes before OpenSSH opens its session channel); then, unless the
    /// client has left by itself, the disconnect with `message` (which OpenSSH prints also
    /// with `-N`).
    pub async fn refuse(&self, line: &str, message: &str) {
        self.end_session(true, line, 1, message).await;
    }

    /// The user closed the session from the keyboard (Ctrl-C or Ctrl-D typed on its
    /// terminal): says goodbye, and ends the session with `exit_status` (130 for Ctrl-C, as a
    /// shell reports an interrupted command; 0 for Ctrl-D), which `ssh` exits with, so that
    /// a reconnect loop tells a deliberate end from a dropped network (255).
    pub async fn close_by_user(&self, exit_status: u32) {
        self.end_session(
            false,
            "Closing your tunnel. Bye.",
            exit_status,
            "Closed by you.",
        )
        .await;
    }

    /// Prints `line` on the session channel once it is ready (stderr when `error`), ends the
    /// channel with `exit_status` and lets the client leave by itself; then, or without a
    /// session channel, disconnects it with `message`.
    async fn end_session(&self, error: bool, line: &str, exit_status: u32, message: &str) {
        // Once: a refusal racing a Ctrl-C would send a second line and exit status.
        if self.ending.swap(true, Ordering::SeqCst) {
            return;
        }
        let ready = self
            .wait_until(REFUSAL_SESSION_WAIT, |l| l.ready_channel().is_some())
            .await;
        if let Some(channel) = self.ready_channel().filter(|_| ready) {
            self.say(error, line).await;
            if let Some(handle) = self.handle() {
                let _ = handle.exit_status_request(channel, exit_status).await;
                let _ = handle.eof(channel).await;
                let _ = handle.close(channel).await;
            }
            tokio::select! {
                _ = tokio::time::sleep(REFUSAL_LINGER) => {}
                _ = self.gone.cancelled() => return,
            }
        }
        self.disconnect(message).await;
    }

    /// The pending text and channel, if the channel is ready (for use inside a handler).
    pub fn drain_if_ready(&self) -> Option<(ChannelId, Vec<(bool, String)>)> {
        let mut o = lock(&self.output);
        if !o.ready {
            return None;
        }
        let channel = o.channel?;
        Some((channel, std::mem::take(&mut o.pending)))
    }

    /// Prints text to the user from outside the session's handler (e.g. a close from control).
    /// Held until the session channel is ready, if it is not yet.
    pub async fn say(&self, error: bool, text: &str) {
        let target = {
            let mut o = lock(&self.output);
            match (o.ready, o.channel) {
                (true, Some(c)) => Some(c),
                _ => {
                    o.pending.push((error, text.to_string()));
                    None
                }
            }
        };
        if let (Some(channel), Some(handle)) = (target, self.handle()) {
            let data = Bytes::from(crlf(text));
            let sent = if error {
                handle.extended_data(channel, 1, data).await
            } else {
                handle.data(channel, data).await
            };
            if sent.is_err() {
                tracing::debug!(session = self.id, "session gone before text was printed");
            }
        }
    }

    /// Disconnects the client with a message that OpenSSH prints (also with `-N`).
    pub async fn disconnect(&self, message: &str) {
        if let Some(handle) = self.handle() {
            let _ = handle
                .disconnect(
                    russh::Disconnect::ByApplication,
                    one_line(message),
                    "en".into(),
                )
                .await;
        }
    }

    /// Probes the client with a global request that wants a reply. Any reply, even a
    /// refusal, proves the client is alive; no reply within `bound` proves nothing, and is
    /// reported as dead.
    pub async fn probe_alive(&self, bound: Duration) -> bool {
        let Some(handle) = self.handle() else {
            return false;
        };
        if self.has_ended() {
            return false;
        }
        // OpenSSH answers an unknown global request with REQUEST_FAILURE, so this is a
        // keepalive that russh lets us await (its own keepalive cannot be awaited).
        let probe = handle.cancel_forward_tcpip("nearhop-alive-probe".into(), 0);
        match tokio::time::timeout(bound, probe).await {
            Ok(_) => !self.has_ended(),
            Err(_) => false,
        }
    }
}

/// Marks the end of a tunnel setup (see [`SessionLink::setup_started`]).
pub struct SetupGuard(Arc<SessionLink>);

impl Drop for SetupGuard {
    fn drop(&mut self) {
        self.0.setups_in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Text for an SSH terminal: lines end in CRLF (a pty in raw mode does not add the CR).
pub fn crlf(text: &str) -> String {
    let mut out = text.replace("\r\n", "\n").replace('\n', "\r\n");
    if !out.ends_with("\r\n") {
        out.push_str("\r\n");
    }
    out
}

/// A disconnect description is one line.
pub fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_text_gets_crlf() {
        assert_eq!(crlf("a\nb"), "a\r\nb\r\n");
        assert_eq!(crlf("a\r\n"), "a\r\n");
    }
}
