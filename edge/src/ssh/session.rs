//! One SSH client: authentication (the username is the carrier), `tcpip-forward` requests
//! handed to the tunnel setup, the session channel the user reads, and refusals.

use crate::edge::Edge;
use crate::inspector;
use crate::options::TunnelOptions;
use crate::ssh::hello::ClientSoftware;
use crate::ssh::link::{crlf, SessionLink};
use crate::ssh::messages;
use crate::ssh::tunnel_setup::{self, NameTurn, PendingTunnel};
use crate::ssh::username::{parse_username, UserRequest, UsernameError};
use crate::tunnels::ForwardTarget;
use bytes::Bytes;
use russh::server::ChannelOpenHandle;
use russh::server::{Auth, Handler, Msg, Session};
use russh::{Channel, ChannelId};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// The russh handler of one client.
pub struct SshSession {
    edge: Arc<Edge>,
    link: Arc<SessionLink>,
    /// The client program: the help for a session without a forward depends on it.
    software: ClientSoftware,
    user: Option<Result<UserRequest, UsernameError>>,
    forwards_requested: usize,
    next_virtual_port: u32,
    /// The forwards this connection holds, as the client matches visitor channels to its
    /// local targets: by the address and port of its request (or of the reply, for port 0).
    forwards: std::collections::HashSet<(String, u32)>,
    /// Per forward asked for: cancelled by its `cancel-tcpip-forward`, so that a setup still
    /// in flight does not go live after the client let it go.
    setups: std::collections::HashMap<(String, u32), CancellationToken>,
    /// Once a forward without a name was asked for: the first one's answer from control,
    /// which the later ones wait for ([`NameTurn`]).
    first_unnamed: Option<CancellationToken>,
    refused: bool,
    /// The user typed Ctrl-C or Ctrl-D: the session is being closed.
    closing: bool,
    /// Session channels open (as far as the edge knows: the client's closes, and the ones
    /// the edge ended itself, take them out).
    sessions_open: std::collections::HashSet<ChannelId>,
    /// Session channels opened while another one shows the connection's text (a second
    /// `ssh` through OpenSSH's connection sharing, to send options): each is answered and
    /// ended on its own, and the first keeps the text.
    extra_sessions: std::collections::HashSet<ChannelId>,
    /// The channel the client asked a terminal for: Ctrl-C and Ctrl-D typed on it arrive as
    /// bytes 3 and 4 (without one, a local Ctrl-C stops the client itself, and a channel's
    /// bytes are whatever the client pipes in, which may hold any byte). Per channel: one
    /// connection may carry several sessions (OpenSSH's connection sharing).
    terminal: Option<ChannelId>,
    /// The session's span (`ssh`, session id, peer). russh runs this handler on a task of
    /// its own, outside the span the connection was accepted in, so the handler's logs and
    /// the tasks it spawns take it from here.
    span: tracing::Span,
}

impl SshSession {
    /// A handler for a fresh connection from `software`, in the connection's span (the
    /// current one).
    pub fn new(edge: Arc<Edge>, link: Arc<SessionLink>, software: ClientSoftware) -> SshSession {
        let first_port = u32::from(edge.config.public_http_port());
        SshSession {
            edge,
            link,
            software,
            user: None,
            forwards_requested: 0,
            next_virtual_port: first_port,
            forwards: Default::default(),
            setups: Default::default(),
            first_unnamed: None,
            refused: false,
            closing: false,
            sessions_open: Default::default(),
            extra_sessions: Default::default(),
            terminal: None,
            span: tracing::Span::current(),
        }
    }

    fn accept(&mut self, user: &str) -> Auth {
        if self.user.is_none() {
            self.user = Some(parse_username(user));
        }
        Auth::Accept
    }

    /// Prints pending text if the session channel is ready.
    fn flush(&self, session: &mut Session) {
        if let Some((channel, lines)) = self.link.drain_if_ready() {
            write_lines(session, channel, lines);
        }
    }

    /// Tells the user why, then lets the client go ([`SessionLink::refuse`], off the
    /// session's loop: it waits for the client's session channel).
    fn refuse(&mut self, message: &str) {
        self.refused = true;
        tracing::info!(parent: &self.span, reason = message, "refusing client");
        let (link, message) = (self.link.clone(), message.to_string());
        let refusal = async move {
            link.refuse(&format!("nearhop: {message}"), &message).await;
        };
        tokio::spawn(refusal.instrument(self.span.clone()));
    }

    fn user_ready(&self) -> Option<UserRequest> {
        match &self.user {
            Some(Ok(u)) => Some(u.clone()),
            _ => None,
        }
    }
}

fn write_lines(session: &mut Session, channel: ChannelId, lines: Vec<(bool, String)>) {
    for (error, text) in lines {
        let data = Bytes::from(crlf(&text));
        let r = if error {
            session.extended_data(channel, 1, data)
        } else {
            session.data(channel, data)
        };
        if r.is_err() {
            tracing::debug!("session channel closed before text was printed");
        }
    }
}

impl Handler for SshSession {
    type Error = anyhow::Error;

    async fn auth_none(&mut self, user: &str) -> Result<Auth, Self::Error> {
        Ok(self.accept(user))
    }

    async fn auth_password(&mut self, user: &str, _password: &str) -> Result<Auth, Self::Error> {
        Ok(self.accept(user))
    }

    async fn auth_publickey_offered(
        &mut self,
        _user: &str,
        _key: russh::server::PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(Auth::Accept)
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        _key: russh::server::VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(self.accept(user))
    }

    async fn auth_keyboard_interactive<'a>(
        &'a mut self,
        user: &str,
        _submethods: &str,
        _response: Option<russh::server::Response<'a>>,
    ) -> Result<Auth, Self::Error> {
        Ok(self.accept(user))
    }

    async fn auth_succeeded(&mut self, session: &mut Session) -> Result<(), Self::Error> {
        self.link.set_handle(session.handle());
        self.link.mark_authenticated();
        if let Some(Err(e)) = &self.user {
            let message = format!("{e}. {}", messages::usage_line(self.software));
            self.refuse(&message);
            return Ok(());
        }
        if self.user_ready().is_some_and(|u| u.inspect) {
            self.link.set_options(Arc::new(TunnelOptions {
                inspect: true,
                ..TunnelOptions::default()
            }));
        }
        // A session that never asks for a forward is told how, then let go.
        let (edge, link, software) = (self.edge.clone(), self.link.clone(), self.software);
        let unbound = async move {
            let wait = std::time::Duration::from_secs(edge.config.unbound_session_seconds);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {
                    // A setup still in flight ends the connection itself if it is refused.
                    let none = edge.tunnels_of(link.id).is_empty() && link.setups_in_flight() == 0;
                    if none && !link.has_ended() {
                        let help = messages::usage(software);
                        link.refuse(&format!("nearhop: {help}"), messages::no_forward(software))
                            .await;
                    }
                }
                _ = link.gone.cancelled() => {}
            }
        };
        tokio::spawn(unbound.instrument(self.span.clone()));
        Ok(())
    }

    async fn tcpip_forward(
        &mut self,
        address: &str,
        port: &mut u32,
        session: &mut Session,
    ) -> Result<bool, Self::Error> {
        self.forwards_requested += 1;
        if self.refused {
            return Ok(false);
        }
        let Some(user) = self.user_ready() else {
            return Ok(false);
        };
        if self.forwards_requested > self.edge.config.max_forwards_per_session {
            if self.forwards_requested == self.edge.config.max_forwards_per_session + 1 {
                let message = format!(
                    "at most {} forwards per connection; the others were refused.",
                    self.edge.config.max_forwards_per_session
                );
                self.link.queue(true, format!("nearhop: {message}"));
                self.flush(session);
            }
            return Ok(false);
        }
        if self.edge.shutdown.is_cancelled() {
            self.refuse("this edge is shutting down; please reconnect.");
            return Ok(false);
        }
        // The reply carries the port the client will match visitor channels against. A `tcp`
        // tunnel's public port is bound only once control has authorised the tunnel
        // (tunnel_setup), so a refused client never holds one.
        if *port == 0 {
            // Not a port another forward of this connection holds under the same address:
            // the client could not tell their visitors apart.
            while self
                .forwards
                .contains(&(address.to_string(), self.next_virtual_port))
            {
                self.next_virtual_port += 1;
            }
            *port = self.next_virtual_port;
            self.next_virtual_port += 1;
        } else if self.forwards.contains(&(address.to_string(), *port)) {
            let asked = if address.is_empty() {
                port.to_string()
            } else {
                format!("{address}:{port}")
            };
            let message = format!(
                "-R {asked} was refused: another forward of this connection holds that port \
                 (a -R 0 gets {first} and up), and your ssh would send both tunnels' visitors \
                 to the first one's local port. Ask for another port, or 0.",
                first = self.edge.config.public_http_port()
            );
            self.link.queue(true, format!("nearhop: {message}"));
            self.flush(session);
            return Ok(false);
        }
        self.forwards.insert((address.to_string(), *port));
        let requested_name = nearhop_wire::requested_name(address);
        let turn = match (&requested_name, &self.first_unnamed) {
            (Ok(None), Some(first)) if user.token.is_some() => NameTurn::AfterFirst(first.clone()),
            (Ok(None), None) if user.token.is_some() => {
                let answered = CancellationToken::new();
                self.first_unnamed = Some(answered.clone());
                NameTurn::First(answered.drop_guard())
            }
            _ => NameTurn::Any,
        };
        let cancelled = CancellationToken::new();
        self.setups
            .insert((address.to_string(), *port), cancelled.clone());
        let pending = PendingTunnel {
            user,
            requested_name,
            forward: ForwardTarget {
                address: address.to_string(),
                port: *port,
            },
            turn,
            cancelled,
        };
        // The setup runs as its own task; its logs stay in the session's span.
        // Counted from the request on, so that a sibling forward refused at once sees this
        // one coming (see `tunnel_setup::set_up`).
        let guard = self.link.setup_started();
        let setup = tunnel_setup::set_up(self.edge.clone(), self.link.clone(), pending, guard);
        tokio::spawn(setup.instrument(self.span.clone()));
        Ok(true)
    }

    /// A remote forward of a socket path (`-R /path/sock:localhost:8000`): refused, with a
    /// line saying what to ask for instead (ssh itself says only that it failed).
    async fn streamlocal_forward(
        &mut self,
        socket_path: &str,
        session: &mut Session,
    ) -> Result<bool, Self::Error> {
        let path: String = socket_path.chars().take(100).collect();
        let message = format!(
            "-R {path:?} was refused: nearhop forwards ports, not socket paths. Ask for a \
             port, -R0:localhost:PORT (your local side may be a socket: -R0:/path/to.sock)."
        );
        let line = format!("nearhop: {message}");
        self.link.queue(true, line.clone());
        self.flush(session);
        // Without a session channel (`ssh -N`): when the connection has no tunnel, live or
        // being set up, once its other forwards had time to come, it ends with the sentence
        // (as for a refused name), and otherwise the sentence is told the way the URL is. A
        // session shows the queued line, and the help for a session without a tunnel.
        let (edge, link) = (self.edge.clone(), self.link.clone());
        let told = async move {
            link.until_session_channel(tunnel_setup::OPTIONS_GRACE)
                .await;
            if link.session_channel().is_some() {
                return;
            }
            if edge.tunnels_of(link.id).is_empty() && link.setups_in_flight() == 0 {
                link.refuse(&line, &message).await;
            } else {
                let lines = [format!("-- {line}")];
                link.tell_without_session(&lines, tunnel_setup::NO_SESSION_GRACE)
                    .await;
            }
        };
        tokio::spawn(told.instrument(self.span.clone()));
        Ok(false)
    }

    async fn cancel_tcpip_forward(
        &mut self,
        address: &str,
        port: u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        // Before the live tunnels are looked for: a setup that installs its tunnel meanwhile
        // sees the token afterwards and closes it itself (`tunnel_setup::create`).
        let in_setup = self.setups.remove(&(address.to_string(), port));
        if let Some(setup) = &in_setup {
            setup.cancel();
        }
        let found = self
            .edge
            .tunnels_of(self.link.id)
            .into_iter()
            .filter(|t| t.forward.address == address && t.forward.port == port)
            .collect::<Vec<_>>();
        for tunnel in &found {
            self.edge
                .close_tunnel(tunnel, "client_closed", None, true)
                .await;
        }
        self.forwards.remove(&(address.to_string(), port));
        Ok(!found.is_empty() || in_setup.is_some())
    }

    async fn channel_close(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        // A visitor channel the edge may be waiting to see closed (io::closing_channel).
        self.link.closes.closed_by_peer(channel);
        self.sessions_open.remove(&channel);
        self.extra_sessions.remove(&channel);
        Ok(())
    }

    /// `-L`: only the request inspector (`localhost:4300`), answered by the edge itself on
    /// the channel; any other target is refused with a sentence ssh prints.
    #[allow(clippy::too_many_arguments)]
    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host_to_connect: &str,
        port_to_connect: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let checked = match self.user_ready() {
            Some(_) if !self.refused => inspector::check_target(host_to_connect, port_to_connect),
            _ => Err("this session was refused; the request inspector is not open to it".into()),
        };
        match checked {
            Ok(()) => {
                reply.accept().await;
                let serving =
                    inspector::server::serve(self.edge.clone(), self.link.clone(), channel);
                tokio::spawn(serving.instrument(self.span.clone()));
            }
            Err(sentence) => {
                tracing::debug!(parent: &self.span, host_to_connect, port_to_connect, "refusing a -L channel");
                let reason = russh::ChannelOpenFailure::Other {
                    code: 1, // SSH_OPEN_ADMINISTRATIVELY_PROHIBITED
                    reason: sentence,
                };
                reply.reject(reason).await;
            }
        }
        Ok(())
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        // Input arrives through `data`; the channel object itself is not needed.
        let id = channel.id();
        let shown_on = self.link.session_channel();
        if shown_on.is_some_and(|c| self.sessions_open.contains(&c)) {
            self.extra_sessions.insert(id);
        } else {
            self.link.set_session_channel(id);
        }
        self.sessions_open.insert(id);
        reply.accept().await;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _col_width: u32,
        _row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)?;
        if !self.extra_sessions.contains(&channel) {
            self.terminal = Some(channel);
        }
        Ok(())
    }

    /// No X11 forwarding: refused (a client that asked for a reply gets it, as RFC 4254
    /// asks; russh's default sends none, and Paramiko's `request_x11` waited for ever).
    #[allow(clippy::too_many_arguments)]
    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _single_connection: bool,
        _x11_auth_protocol: &str,
        _x11_auth_cookie: &str,
        _x11_screen_number: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(channel)?;
        Ok(())
    }

    /// Environment variables are not taken (as sshd refuses those outside `AcceptEnv`):
    /// failure, when a reply is wanted (Go's `Session.Setenv`, libssh).
    async fn env_request(
        &mut self,
        channel: ChannelId,
        _variable_name: &str,
        _variable_value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(channel)?;
        Ok(())
    }

    /// The terminal's size does not matter to the edge's output; taken, and answered when
    /// a reply is wanted (RFC 4254 has none, some libraries ask anyway).
    async fn window_change_request(
        &mut self,
        channel: ChannelId,
        _col_width: u32,
        _row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)?;
        Ok(())
    }

    /// There is no process to signal (Ctrl-C comes as a byte on a terminal): failure, when
    /// a reply is wanted.
    async fn signal(
        &mut self,
        channel: ChannelId,
        _signal: russh::Sig,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(channel)?;
        Ok(())
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let name: String = name.chars().filter(|c| !c.is_control()).take(64).collect();
        let sentence = format!(
            "this server makes tunnels and serves no {name:?} subsystem (sftp, scp and file \
             transfers are not available); open a tunnel with ssh -R0:localhost:PORT ..."
        );
        // Accepted so that the sentence reaches the client's stderr on this channel: a
        // client told "failure" (sftp) exits before the disconnect's reason arrives.
        session.channel_success(channel)?;
        write_lines(
            session,
            channel,
            vec![(true, format!("nearhop: {sentence}"))],
        );
        session.exit_status_request(channel, 1)?;
        session.eof(channel)?;
        session.close(channel)?;
        self.sessions_open.remove(&channel);
        self.extra_sessions.remove(&channel);
        // The connection ends with it unless it carries tunnels (an sftp session opened on
        // a shared connection, a library's transport with forwards), or was refused
        // already (that reason stands).
        if !self.refused && self.edge.tunnels_of(self.link.id).is_empty() {
            self.refuse(&sentence);
        }
        Ok(())
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)?;
        if self.extra_sessions.contains(&channel) {
            let line = "nearhop: this connection's first session shows its tunnels; this one has \
                        nothing more to show.";
            self.end_extra_session(channel, session, false, line, 0)?;
            return Ok(());
        }
        self.link.settle_options();
        self.start_output(channel, session);
        Ok(())
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)?;
        let command = String::from_utf8_lossy(data);
        let kind = self.user_ready().map(|u| u.kind).unwrap_or_default();
        match TunnelOptions::parse(&command).and_then(|o| o.check_kind(kind).map(|()| o)) {
            Ok(mut options) => {
                // `inspect` (username) or an inspector already opened stays on.
                options.inspect |= self.link.options().inspect;
                let options = Arc::new(options);
                self.link.set_options(options.clone());
                let tunnels = self.edge.tunnels_of(self.link.id);
                for tunnel in &tunnels {
                    tunnel.set_options(options.clone());
                }
                self.link.settle_options();
                if self.extra_sessions.contains(&channel) {
                    let line = format!(
                        "nearhop: options applied to this connection's {} tunnel(s).",
                        tunnels.len()
                    );
                    self.end_extra_session(channel, session, false, &line, 0)?;
                } else {
                    self.start_output(channel, session);
                }
            }
            // Sent through a second session of a shared connection: that `ssh` is told,
            // and the tunnels keep their options.
            Err(e) if self.extra_sessions.contains(&channel) => {
                self.end_extra_session(channel, session, true, &format!("nearhop: {e}"), 1)?;
            }
            Err(e) => {
                self.link.take_ready();
                self.refuse(&e.to_string());
            }
        }
        Ok(())
    }

    async fn data(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        // Every channel's data passes here, visitors' too; only the session channel is input.
        if self.link.session_channel() != Some(channel) {
            return Ok(());
        }
        // Ctrl-C or Ctrl-D in an interactive session ends it, as users of Pinggy expect.
        let typed = data.iter().find(|b| **b == 3 || **b == 4);
        if let Some(key) = typed.filter(|_| self.terminal == Some(channel) && !self.closing) {
            self.closing = true;
            let exit_status = if *key == 3 { 130 } else { 0 };
            // ssh leaves once its session channel is closed and every forwarded connection
            // has ended, with the session's exit status; a visitor's connection still open
            // (a keep-alive, a WebSocket) would keep it until the disconnect, and the exit
            // status would be 255. So the tunnels close first, then every other channel.
            self.edge
                .close_tunnels_of(self.link.id, "client_closed")
                .await;
            for other in session.channel_ids().into_iter().filter(|c| *c != channel) {
                let _ = session.close(other);
            }
            let link = self.link.clone();
            let closing = async move { link.close_by_user(exit_status).await };
            tokio::spawn(closing.instrument(self.span.clone()));
        }
        Ok(())
    }
}

impl SshSession {
    /// Answers a session channel opened beside the one that shows the connection's text
    /// with `line` (stderr when `error`), then ends it with `exit_status`.
    fn end_extra_session(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
        error: bool,
        line: &str,
        exit_status: u32,
    ) -> Result<(), russh::Error> {
        write_lines(session, channel, vec![(error, line.to_string())]);
        session.exit_status_request(channel, exit_status)?;
        session.eof(channel)?;
        session.close(channel)?;
        self.sessions_open.remove(&channel);
        self.extra_sessions.remove(&channel);
        Ok(())
    }

    /// The client asked for a shell or a command: the session channel shows text from now on.
    fn start_output(&mut self, channel: ChannelId, session: &mut Session) {
        if let Some((ch, lines)) = self.link.take_ready() {
            write_lines(session, ch, lines);
        } else {
            self.link.set_session_channel(channel);
            if let Some((ch, lines)) = self.link.take_ready() {
                write_lines(session, ch, lines);
            }
        }
        // OpenSSH, PuTTY and Dropbear send every -R before they ask for a shell or command,
        // so by now a session of theirs without a forward asked for none. A library's caller
        // may ask later: the check `unbound_session_seconds` after authentication covers it.
        if self.forwards_requested == 0 && !self.refused && self.software.forwards_come_first() {
            self.refuse(&messages::usage(self.software));
        }
    }
}
