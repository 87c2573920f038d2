//! Live tunnels on this edge and the SSH sessions that carry them: the map visitors are
//! routed through (host name or custom domain → tunnel) and the map control closes by id.

use crate::options::TunnelOptions;
use bytes::Bytes;
use nearhop_wire::TunnelKind;
use russh::server::{Handle, Msg};
use russh::{Channel, ChannelId};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

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
    /// Options from the command words, for tunnels set up later.
    options: RwLock<Arc<TunnelOptions>>,
    /// The session channel text is printed on, once the client asked for a shell or command.
    output: Mutex<Output>,
    /// Cancelled when the session ends.
    pub gone: CancellationToken,
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
            options: RwLock::new(Arc::default()),
            output: Mutex::new(Output::default()),
            gone: CancellationToken::new(),
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
    }

    /// Records that the client authenticated.
    pub fn mark_authenticated(&self) {
        self.authenticated.store(true, Ordering::SeqCst);
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

    /// Counts a tunnel setup in progress until the guard drops.
    pub fn setup_started(self: &Arc<Self>) -> SetupGuard {
        self.setups_in_flight.fetch_add(1, Ordering::SeqCst);
        SetupGuard(self.clone())
    }

    /// Tells a client that opened no session channel (`ssh -N`) its URL, once its pending
    /// setups are done and it has had `grace` to open one.
    ///
    /// OpenSSH shows such a client nothing the server sends after authentication, except
    /// errors: the refusal of a `forwarded-streamlocal` channel for an unknown path is
    /// printed with the path, so the path carries the text. (The auth banner cannot carry
    /// the URL: it is shown only before authentication succeeds, when the forwards and so
    /// the name are not known yet.)
    pub async fn tell_without_session(&self, text: &str, grace: Duration) {
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
        // OpenSSH prints at most 100 characters of the path.
        let path: String = text.chars().take(100).collect();
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            handle.channel_open_forwarded_streamlocal(path),
        )
        .await;
    }

    /// The session channel, once opened.
    pub fn session_channel(&self) -> Option<ChannelId> {
        lock(&self.output).channel
    }

    /// Remembers the session channel; text is held until [`SessionLink::take_ready`].
    pub fn set_session_channel(&self, channel: ChannelId) {
        lock(&self.output).channel = Some(channel);
    }

    /// Queues a line for the user (stderr when `error`); returns nothing, see `take_ready`.
    pub fn queue(&self, error: bool, text: String) {
        lock(&self.output).pending.push((error, text));
    }

    /// Marks the session channel ready for output and returns the channel and pending text.
    pub fn take_ready(&self) -> Option<(ChannelId, Vec<(bool, String)>)> {
        let mut o = lock(&self.output);
        o.ready = true;
        let channel = o.channel?;
        Some((channel, std::mem::take(&mut o.pending)))
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

/// What the client asked to be forwarded; echoed in every `forwarded-tcpip` channel so that
/// the client's OpenSSH matches the channel to its `-R`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardTarget {
    /// The bind address as sent in `tcpip-forward`.
    pub address: String,
    /// The port as replied (the allocated one when the client asked for 0).
    pub port: u32,
}

/// A live tunnel.
pub struct Tunnel {
    /// Control's id.
    pub id: i64,
    /// Full public name.
    pub hostname: String,
    /// Zone of the name.
    pub zone: String,
    /// Region the record points at.
    pub region: String,
    /// What it carries.
    pub kind: TunnelKind,
    /// Public TCP port (TCP tunnels).
    pub public_port: Option<u16>,
    /// The forward this tunnel answers.
    pub forward: ForwardTarget,
    /// The SSH session carrying it.
    pub session: Arc<SessionLink>,
    options: RwLock<Arc<TunnelOptions>>,
    closed: AtomicBool,
    /// Cancelled when the tunnel closes (stops its TCP listener).
    pub stop: CancellationToken,
}

impl Tunnel {
    /// A tunnel as answered by control.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: i64,
        hostname: String,
        zone: String,
        region: String,
        kind: TunnelKind,
        public_port: Option<u16>,
        forward: ForwardTarget,
        session: Arc<SessionLink>,
        options: Arc<TunnelOptions>,
    ) -> Tunnel {
        Tunnel {
            id,
            hostname,
            zone,
            region,
            kind,
            public_port,
            forward,
            session,
            options: RwLock::new(options),
            closed: AtomicBool::new(false),
            stop: CancellationToken::new(),
        }
    }

    /// The visitor-side options now in force.
    pub fn options(&self) -> Arc<TunnelOptions> {
        self.options
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces the options (the command words may arrive after the forward).
    pub fn set_options(&self, options: Arc<TunnelOptions>) {
        *self.options.write().unwrap_or_else(|e| e.into_inner()) = options;
    }

    /// Marks the tunnel closed; true only for the first caller.
    pub fn mark_closed(&self) -> bool {
        let first = !self.closed.swap(true, Ordering::SeqCst);
        if first {
            self.stop.cancel();
        }
        first
    }

    /// Whether the tunnel is closed.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Opens one `forwarded-tcpip` channel to the client for a visitor connection, with the
    /// visitor's address as originator.
    pub async fn open_channel(&self, visitor: SocketAddr) -> Result<Channel<Msg>, russh::Error> {
        let handle = self.session.handle().ok_or(russh::Error::SendError)?;
        handle
            .channel_open_forwarded_tcpip(
                self.forward.address.clone(),
                self.forward.port,
                visitor.ip().to_string(),
                u32::from(visitor.port()),
            )
            .await
    }
}

/// The edge's live tunnels.
#[derive(Default)]
pub struct Registry {
    inner: RwLock<Maps>,
}

#[derive(Default)]
struct Maps {
    by_host: HashMap<String, Arc<Tunnel>>,
    by_id: HashMap<i64, Arc<Tunnel>>,
    /// Verified custom domain → tunnel host name.
    custom_domains: HashMap<String, String>,
}

impl Registry {
    /// Adds a tunnel; returns the tunnel that held its host name on this edge before, if any.
    pub fn insert(&self, tunnel: Arc<Tunnel>) -> Option<Arc<Tunnel>> {
        let mut m = self.inner.write().unwrap_or_else(|e| e.into_inner());
        m.by_id.insert(tunnel.id, tunnel.clone());
        let old = m.by_host.insert(tunnel.hostname.clone(), tunnel);
        if let Some(old) = &old {
            m.by_id.remove(&old.id);
        }
        old
    }

    /// Removes a tunnel (only if its host name still maps to it).
    pub fn remove(&self, tunnel: &Tunnel) -> bool {
        let mut m = self.inner.write().unwrap_or_else(|e| e.into_inner());
        let was = m.by_id.remove(&tunnel.id).is_some();
        if m.by_host.get(&tunnel.hostname).map(|t| t.id) == Some(tunnel.id) {
            m.by_host.remove(&tunnel.hostname);
        }
        was
    }

    /// The tunnel serving `host` (a tunnel name or a verified custom domain), lowercase,
    /// without port.
    pub fn route(&self, host: &str) -> Option<Arc<Tunnel>> {
        let m = self.inner.read().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = m.by_host.get(host) {
            return Some(t.clone());
        }
        let target = m.custom_domains.get(host)?;
        m.by_host.get(target).cloned()
    }

    /// The tunnel with control's id.
    pub fn by_id(&self, id: i64) -> Option<Arc<Tunnel>> {
        let m = self.inner.read().unwrap_or_else(|e| e.into_inner());
        m.by_id.get(&id).cloned()
    }

    /// Ids of all live tunnels (for the batched heartbeat).
    pub fn ids(&self) -> Vec<i64> {
        let m = self.inner.read().unwrap_or_else(|e| e.into_inner());
        m.by_id.keys().copied().collect()
    }

    /// All live tunnels.
    pub fn all(&self) -> Vec<Arc<Tunnel>> {
        let m = self.inner.read().unwrap_or_else(|e| e.into_inner());
        m.by_id.values().cloned().collect()
    }

    /// Replaces the custom-domain routes.
    pub fn set_custom_domains(&self, pairs: Vec<(String, String)>) {
        let map = pairs
            .into_iter()
            .map(|(d, h)| (d.to_ascii_lowercase(), h.to_ascii_lowercase()))
            .collect();
        let mut m = self.inner.write().unwrap_or_else(|e| e.into_inner());
        m.custom_domains = map;
    }

    /// Number of live tunnels.
    pub fn len(&self) -> usize {
        let m = self.inner.read().unwrap_or_else(|e| e.into_inner());
        m.by_id.len()
    }

    /// Whether no tunnel is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tunnel(id: i64, host: &str) -> Arc<Tunnel> {
        Arc::new(Tunnel::new(
            id,
            host.into(),
            "a.tunnel.test".into(),
            "us".into(),
            TunnelKind::Http,
            None,
            ForwardTarget {
                address: "localhost".into(),
                port: 8080,
            },
            Arc::new(SessionLink::new(1, "127.0.0.1:1".parse().unwrap())),
            Arc::default(),
        ))
    }

    #[test]
    fn routes_by_name_and_custom_domain() {
        let r = Registry::default();
        r.insert(tunnel(1, "blog.a.tunnel.test"));
        r.set_custom_domains(vec![("My.Example".into(), "blog.a.tunnel.test".into())]);
        assert_eq!(r.route("blog.a.tunnel.test").map(|t| t.id), Some(1));
        assert_eq!(r.route("my.example").map(|t| t.id), Some(1));
        assert!(r.route("other.a.tunnel.test").is_none());
    }

    #[test]
    fn a_new_tunnel_for_the_same_name_replaces_the_old_and_old_removal_keeps_it() {
        let r = Registry::default();
        let old = tunnel(1, "blog.a.tunnel.test");
        r.insert(old.clone());
        let replaced = r.insert(tunnel(2, "blog.a.tunnel.test"));
        assert_eq!(replaced.map(|t| t.id), Some(1));
        r.remove(&old);
        assert_eq!(r.route("blog.a.tunnel.test").map(|t| t.id), Some(2));
        assert_eq!(r.ids(), vec![2]);
    }

    #[test]
    fn terminal_text_gets_crlf() {
        assert_eq!(crlf("a\nb"), "a\r\nb\r\n");
        assert_eq!(crlf("a\r\n"), "a\r\n");
    }
}
