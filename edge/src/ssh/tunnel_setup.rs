//! Setting up one tunnel with control, off the SSH session's loop: while control works
//! (DNS lag wait included) the session keeps answering keepalives and alive probes, and
//! several forwards of one client are set up at once.

use crate::edge::Edge;
use crate::ssh::link::{SessionLink, SetupGuard};
use crate::ssh::messages;
use crate::ssh::username::UserRequest;
use crate::tunnels::{ForwardTarget, Tunnel};
use crate::visitor::tcp as visitor_tcp;
use nearhop_wire::{
    CloseTunnelRequest, CreateTunnelRequest, CreateTunnelResponse, ErrorCode, TunnelKind,
};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::Instrument;

/// Time a client has after its forwards are set up to open a session channel before it is
/// taken for `ssh -N`.
pub const NO_SESSION_GRACE: Duration = Duration::from_millis(1500);

/// Time from a forward request within which a client that wants to send options has opened
/// its session channel (OpenSSH opens it right after its forwards, without waiting for
/// their replies); a client without one by then is taken for `ssh -N`, which sends none.
pub const OPTIONS_GRACE: Duration = Duration::from_millis(250);

/// Longest wait, from the forward request, for the command (or shell) of a client that
/// opened a session channel; past it the tunnel goes live with the options known so far.
const OPTIONS_BOUND: Duration = Duration::from_secs(5);

/// Told to a client whose tunnel another connection took over.
const REPLACED: &str = "a newer connection took over this name.";

/// One accepted `tcpip-forward`, waiting for control.
pub struct PendingTunnel {
    /// What the username asked for.
    pub user: UserRequest,
    /// The name asked for with the bind address, if any, or why the address is no name.
    pub requested_name: Result<Option<String>, nearhop_wire::NameError>,
    /// The forward as the client will match it.
    pub forward: ForwardTarget,
    /// Its place among the connection's forwards that asked for no name.
    pub turn: NameTurn,
    /// Cancelled when the client cancels the forward (`cancel-tcpip-forward`) while it is
    /// being set up.
    pub cancelled: CancellationToken,
}

/// Where a forward that asked for no name stands among its connection's others: the first
/// one the client asked for gets the account's persistent name, so the others ask control
/// only once the first has been answered (they then get random names, see control's
/// `Naming::AnotherName`). Without that order, whichever setup reached control first got the
/// name, and the persistent URL served a different local port from one run to the next.
pub enum NameTurn {
    /// A forward with a name of its own (or anonymous): no order to keep.
    Any,
    /// The connection's first forward without a name: control is asked at once; dropping
    /// the guard (once control answered) cancels the token the others wait on.
    First(DropGuard),
    /// A later one: control is asked once the first was answered (or its setup ended).
    AfterFirst(CancellationToken),
}

impl NameTurn {
    /// Waits for this forward's turn to ask control.
    async fn wait(&self) {
        if let NameTurn::AfterFirst(first) = self {
            first.cancelled().await;
        }
    }
}

/// How a setup that did not go live ended.
enum NotLive {
    /// Refused, with the sentence for the user.
    Refused(String),
    /// The client cancelled the forward during the setup: nothing to say.
    Cancelled,
}

impl From<String> for NotLive {
    fn from(message: String) -> NotLive {
        NotLive::Refused(message)
    }
}

/// Asks control for the tunnel, installs it and tells the user; on refusal tells the user
/// why, and disconnects when the connection has no other tunnel, live or being set up.
/// Runs as its own task.
pub async fn set_up(
    edge: Arc<Edge>,
    link: Arc<SessionLink>,
    pending: PendingTunnel,
    guard: SetupGuard,
) {
    let started = Instant::now();
    let result = create(&edge, &link, pending, started).await;
    let outcome = match &result {
        Ok(_) => "ok",
        Err(NotLive::Refused(_)) => "refused",
        Err(NotLive::Cancelled) => "cancelled",
    };
    edge.metrics
        .tunnel_setup_seconds
        .with_label_values(&[outcome])
        .observe(started.elapsed().as_secs_f64());
    // Whether other forwards of the connection are coming is known once they were all
    // asked for: a refusal at once (a bad name) may come before the client's next `-R`.
    if result.is_err() {
        link.until_session_channel(OPTIONS_GRACE).await;
    }
    drop(guard);
    match result {
        Ok(lines) => link.tell_without_session(&lines, NO_SESSION_GRACE).await,
        Err(NotLive::Cancelled) => {
            tracing::info!("the client cancelled a forward during its setup");
        }
        // A connection with other tunnels (live, or still being set up) keeps them: this
        // one forward is refused with a line. The last one refused ends the connection.
        Err(NotLive::Refused(message))
            if !edge.tunnels_of(link.id).is_empty() || link.setups_in_flight() > 0 =>
        {
            tracing::info!(reason = %message, "refusing one of the client's forwards");
            let line = format!("nearhop: one of this connection's tunnels was refused: {message}");
            link.say(true, &line).await;
            link.tell_without_session(&[format!("-- {line}")], NO_SESSION_GRACE)
                .await;
        }
        Err(NotLive::Refused(message)) => {
            tracing::info!(reason = %message, "refusing client");
            link.refuse(&format!("nearhop: {message}"), &message).await;
        }
    }
}

/// Sets the tunnel up; what a client without a session channel is to be told when it went
/// live ([`messages::without_session`]).
async fn create(
    edge: &Arc<Edge>,
    link: &Arc<SessionLink>,
    pending: PendingTunnel,
    started: Instant,
) -> Result<Vec<String>, NotLive> {
    let PendingTunnel {
        user,
        requested_name,
        forward,
        turn,
        cancelled,
    } = pending;
    let requested_name = requested_name.map_err(|e| {
        format!(
            "the name {:?} asked for with -R is not allowed: {e}; {}.",
            forward.address,
            nearhop_wire::ALLOWED_NAMES
        )
    })?;
    let req = CreateTunnelRequest {
        edge_id: edge.config.edge_id.clone(),
        token: user.token.clone(),
        requested_name,
        kind: user.kind,
        force: user.force,
        client_addr: link.peer.ip().to_string(),
    };
    turn.wait().await;
    if cancelled.is_cancelled() {
        return Err(NotLive::Cancelled);
    }
    if link.has_ended() {
        return Err("the client left during setup".to_string().into());
    }
    let resp = edge.control.create_tunnel(&req).await.map_err(|e| {
        // A refusal of the user's request (a bad token, a name in use) is control working;
        // anything else (no answer, control unable, or refusing the edge itself: a wrong
        // credential, a version mismatch) is an error of the link to control.
        let users_own = matches!(
            e.code(),
            Some(
                ErrorCode::BadToken
                    | ErrorCode::InvalidName
                    | ErrorCode::NameOwned
                    | ErrorCode::NameInUse
                    | ErrorCode::NameBanned
                    | ErrorCode::RateLimited
                    | ErrorCode::PlanLimit
                    | ErrorCode::NotFound
                    | ErrorCode::Conflict
            )
        );
        let failed = !users_own;
        if failed {
            edge.metrics
                .control_errors_total
                .with_label_values(&["create_tunnel"])
                .inc();
        }
        if e.code().is_some() {
            tracing::info!(error = %e, "control refused a setup");
        } else {
            tracing::warn!(error = %e, "control could not be asked to set up a tunnel");
        }
        e.user_message()
    })?;
    // No visitor may reach the tunnel before its options (`b:`, `k:`, `w:`) apply: they come
    // with the command, after the forwards.
    let known = tokio::select! {
        known = link.options_known(started, OPTIONS_GRACE, OPTIONS_BOUND) => Some(known),
        _ = cancelled.cancelled() => None,
    };
    tracing::debug!(
        ?known,
        waited_ms = started.elapsed().as_millis() as u64,
        "options known"
    );
    if link.has_ended() {
        give_back(edge, &resp, "client_closed");
        return Err("the client left during setup".to_string().into());
    }
    if cancelled.is_cancelled() {
        // Given back before the connection's next forward without a name asks control, so
        // that it gets the name this one had.
        give_back_now(edge, resp.tunnel_id, "client_closed").await;
        return Err(NotLive::Cancelled);
    }
    // This one goes live: the connection's next forwards without a name may ask control.
    drop(turn);
    // A public TCP port only for a tunnel control authorised: a refused client (over its
    // plan's or its address's limit) never holds one of the edge's ports.
    let (listener, port) = if user.kind == TunnelKind::Tcp {
        match visitor_tcp::bind_public_port(&edge.config).await {
            Ok((l, p)) => (Some(l), Some(p)),
            Err(e) => {
                tracing::warn!(error = %e, "no free public TCP port");
                give_back(edge, &resp, "client_closed");
                return Err(NotLive::Refused(
                    "this edge has no free public TCP port right now; please try \
                     again later or in another region."
                        .into(),
                ));
            }
        }
    } else {
        (None, None)
    };
    let tunnel = Arc::new(
        Tunnel::new(
            resp.tunnel_id,
            resp.hostname.to_ascii_lowercase(),
            resp.zone.clone(),
            resp.region.clone(),
            user.kind,
            port,
            forward,
            link.clone(),
            link.options(),
        )
        .with_holder_proof(resp.holder_proof.clone()),
    );
    install(edge, &tunnel, &resp).await;
    // A cancel that came while this was being installed: the session's handler cancels the
    // token before it looks for live tunnels to close, and this looks at the token after
    // the install, so one of the two closes it.
    if cancelled.is_cancelled() {
        edge.close_tunnel(&tunnel, "client_closed", None, true)
            .await;
        return Err(NotLive::Cancelled);
    }
    // Like the DNS, every edge must know the holder before the URL goes out.
    if !edge.peers_caught_up(PEERS_BOUND).await {
        edge.metrics
            .relay_errors_total
            .with_label_values(&["announce_timeout"])
            .inc();
        tracing::warn!(host = %tunnel.hostname, "a peer edge did not confirm the new tunnel in time; printing the URL anyway");
    }
    // The command's options may have arrived while control worked; the session updates
    // installed tunnels, so re-reading after the install cannot miss them.
    tunnel.set_options(link.options());
    if let Some(listener) = listener {
        visitor_tcp::spawn_listener(edge.clone(), tunnel.clone(), listener);
    }
    // Cancelled (and closed by the session's handler) since the install, or closed for
    // another reason meanwhile: nothing to announce.
    if cancelled.is_cancelled() || tunnel.is_closed() {
        return Err(NotLive::Cancelled);
    }
    link.say(
        false,
        &messages::tunnel_ready(
            &tunnel,
            &resp,
            &edge.config,
            edge.certificates.covers(&tunnel.hostname),
            user.qr,
        ),
    )
    .await;
    Ok(messages::without_session(
        &messages::public_url(&tunnel, &edge.config),
        &resp,
    ))
}

/// Longest wait for the peer edges to read a new tunnel's name before its URL is printed.
const PEERS_BOUND: std::time::Duration = std::time::Duration::from_secs(1);

/// Makes the tunnel routable, closing what it replaced on this edge.
async fn install(edge: &Arc<Edge>, tunnel: &Arc<Tunnel>, resp: &CreateTunnelResponse) {
    edge.metrics
        .tunnels_active
        .with_label_values(&[&tunnel.zone, tunnel.kind.as_str()])
        .inc();
    if let Some(old) = edge.registry.insert(tunnel.clone()) {
        // Same name, same edge: a reconnect or a force that control already settled.
        edge.close_tunnel(&old, "replaced", Some(REPLACED), false)
            .await;
    }
    if let Some(replaced) = &resp.replaced_tunnel {
        if replaced.edge_id == edge.config.edge_id && replaced.tunnel_id != tunnel.id {
            if let Some(old) = edge.registry.by_id(replaced.tunnel_id) {
                edge.close_tunnel(&old, "replaced", Some(REPLACED), false)
                    .await;
            }
        }
    }
    let edge = edge.clone();
    tokio::spawn(
        async move { crate::control::sync::refresh_routes(&edge).await }.in_current_span(),
    );
    tracing::info!(tunnel = tunnel.id, host = %tunnel.hostname, kind = tunnel.kind.as_str(), "tunnel live");
}

/// Closes a tunnel control created that the edge will not serve after all (in a task of its
/// own).
fn give_back(edge: &Arc<Edge>, resp: &CreateTunnelResponse, reason: &'static str) {
    let (edge, id) = (edge.clone(), resp.tunnel_id);
    tokio::spawn(async move { give_back_now(&edge, id, reason).await }.in_current_span());
}

/// Closes tunnel `id` at control, which created it for a setup that did not go live.
async fn give_back_now(edge: &Edge, id: i64, reason: &str) {
    let req = CloseTunnelRequest {
        edge_id: edge.config.edge_id.clone(),
        reason: nearhop_wire::CloseReason::parse(reason),
    };
    if let Err(e) = edge.control.close_tunnel(id, &req).await {
        tracing::warn!(tunnel = id, error = %e, "giving a tunnel back to control");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The later unnamed forwards of a connection wait until the first one's turn is given
    /// up (dropped once control answered it and it went live, or its setup ended), and a
    /// forward that joins after that does not wait at all.
    #[tokio::test]
    async fn later_unnamed_forwards_ask_control_only_after_the_first() {
        let answered = CancellationToken::new();
        let first = NameTurn::First(answered.clone().drop_guard());
        let second = NameTurn::AfterFirst(answered.clone());
        let third = NameTurn::AfterFirst(answered.clone());
        let waiting = tokio::spawn(async move {
            second.wait().await;
            third.wait().await;
        });
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !waiting.is_finished(),
            "the second went before the first was answered"
        );
        drop(first);
        tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .expect("the others go once the first's turn is given up")
            .expect("no panic");
        let late = NameTurn::AfterFirst(answered);
        tokio::time::timeout(Duration::from_secs(10), late.wait())
            .await
            .expect("a forward after the first's answer does not wait");
        NameTurn::Any.wait().await;
    }
}
