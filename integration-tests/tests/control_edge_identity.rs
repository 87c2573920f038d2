//! Each edge proves who it is: credentials issued by the real CLI bind a caller to one edge
//! id; an edge cannot register, heartbeat, read the peer list, set up or close tunnels as
//! another; revocation refuses the edge at once and drops it from its peers' lists, and the
//! shared secret cannot act as a revoked edge either; a pinned credential registers only in
//! its region; an edge on the shared secret is told no peers. During a rotation of control's
//! holder key, every answer to an edge carries the previous key too, and the previous key
//! signs until the grace after control's first answer has passed. The tests play the edges.

use nearhop_stack::process::run;
use nearhop_stack::{ControlSpec, Stack, StackOptions};
use nearhop_wire::holder_proof::{HolderKey, HolderSigner};
use nearhop_wire::{
    ApiError, CreateTunnelRequest, CreateTunnelResponse, EdgeHeartbeatResponse, EdgePeers,
    ErrorCode, PeerEdge, RegisterEdgeRequest, RegisterEdgeResponse, TunnelKind,
};
use reqwest::blocking::Client;
use serde::Serialize;
use std::time::Duration;

const KEY_A: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOmVmXMX/Lin3AckbWCF78kLBdOckFCqIduokQX2/jjW edge-a";
const KEY_B: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJgbbT6wI1Z7VpefolVgwlIgZOfSjHLe8K0gFqLb4j81";
const KEY_C: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHkqvXXo0QszbFAhY7A6+NLoZ3SZPedh5RGIAZLXJsL2";

/// One edge's side of the API, with the credential it holds.
struct Edge {
    http: Client,
    base: String,
    credential: String,
}

impl Edge {
    /// A caller of `stack`'s control with `credential` (an edge's, or the shared secret).
    fn of(stack: &Stack, http: &Client, credential: String) -> Edge {
        Edge {
            http: http.clone(),
            base: stack.control.url.clone(),
            credential,
        }
    }

    fn post<T: Serialize>(&self, path: &str, body: &T) -> (u16, String) {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.credential)
            .json(body)
            .send()
            .expect("control answers");
        (r.status().as_u16(), r.text().unwrap_or_default())
    }

    fn get(&self, path: &str) -> (u16, String) {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.credential)
            .send()
            .expect("control answers");
        (r.status().as_u16(), r.text().unwrap_or_default())
    }

    /// The peer list alone (`GET /v1/edges/{id}/peers`), as an edge asks for it when a
    /// peer it does not know dials it.
    fn peer_list(&self, edge_id: &str) -> EdgePeers {
        let (status, text) = self.get(&format!("/v1/edges/{edge_id}/peers"));
        assert_eq!(status, 200, "{text}");
        serde_json::from_str(&text).unwrap()
    }

    fn register(&self, reg: &RegisterEdgeRequest) -> (u16, String) {
        self.post("/v1/edges/register", reg)
    }

    fn heartbeat(&self, edge_id: &str, ids: &[i64]) -> (u16, String) {
        self.post(
            &format!("/v1/edges/{edge_id}/heartbeat"),
            &serde_json::json!({ "tunnel_ids": ids }),
        )
    }

    fn peers(&self, edge_id: &str) -> Vec<PeerEdge> {
        let (status, text) = self.heartbeat(edge_id, &[]);
        assert_eq!(status, 200, "{text}");
        let hb: EdgeHeartbeatResponse = serde_json::from_str(&text).unwrap();
        hb.peers
    }

    fn create(&self, edge_id: &str) -> (u16, String) {
        self.post(
            "/v1/tunnels",
            &CreateTunnelRequest {
                edge_id: edge_id.into(),
                token: None,
                requested_name: None,
                kind: TunnelKind::Http,
                force: false,
                client_addr: "127.0.0.9:50000".into(),
            },
        )
    }

    fn close(&self, tunnel_id: i64, edge_id: &str) -> (u16, String) {
        self.post(
            &format!("/v1/tunnels/{tunnel_id}/close"),
            &serde_json::json!({ "edge_id": edge_id, "reason": "client_closed" }),
        )
    }
}

fn registration(edge_id: &str, mesh_addr: &str, host_key: &str) -> RegisterEdgeRequest {
    RegisterEdgeRequest {
        edge_id: edge_id.into(),
        region: "us".into(),
        admin_url: "http://127.0.0.1:9".into(),
        mesh_addr: Some(mesh_addr.into()),
        host_key: Some(host_key.into()),
        admin_key: Some(format!("{edge_id}-admin-key-0123456789abcdef0123456789")),
    }
}

fn refused(status_and_text: (u16, String), status: u16, code: ErrorCode) -> String {
    let (got, text) = status_and_text;
    assert_eq!(got, status, "{text}");
    let e: ApiError = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(e.error.code, code, "{text}");
    e.error.message
}

fn issue(stack: &Stack, edge_id: &str) -> String {
    issue_in(stack, edge_id, Some("us"))
}

/// Issues a credential for `edge_id` with the CLI, pinned to `region` if given.
fn issue_in(stack: &Stack, edge_id: &str, region: Option<&str>) -> String {
    let mut args = vec!["edge", "issue", edge_id];
    if let Some(r) = region {
        args.extend(["--region", r]);
    }
    let out = stack.control.cli(&args).expect("edge issue");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["edge_id"], edge_id);
    let c = v["credential"].as_str().unwrap().to_string();
    assert!(c.starts_with("nhe_") && c.len() >= 36, "{c}");
    c
}

fn psql(stack: &Stack, sql: &str) -> String {
    let mut cmd = std::process::Command::new("psql");
    cmd.arg(stack.pg.primary.endpoint.conninfo())
        .args(["-XAtqc", sql]);
    run(cmd).expect("psql").trim().to_string()
}

#[test]
fn each_edge_acts_only_as_itself_and_revocation_drops_it_from_the_mesh() {
    let stack = Stack::start(StackOptions {
        regions: vec![("us".into(), std::net::Ipv4Addr::LOCALHOST)],
        ..Default::default()
    })
    .expect("stack starts");
    let http = Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let edge = |credential: String| Edge::of(&stack, &http, credential);
    let a = edge(issue(&stack, "a-1"));
    let b = edge(issue(&stack, "b-1"));
    let forged = edge(format!("nhe_{}", "x".repeat(32)));

    // Only hashes are stored.
    let stored = psql(
        &stack,
        "SELECT count(*) FROM edge_credentials WHERE hint LIKE 'nhe_%'",
    );
    assert_eq!(stored, "2");
    assert_eq!(
        psql(
            &stack,
            &format!(
                "SELECT edge_id FROM edge_credentials WHERE token_hash = sha256('{}'::bytea)",
                a.credential
            )
        ),
        "a-1"
    );

    // Each registers as itself; B learns A from the answer, A learns B at its heartbeat.
    let (status, text) = a.register(&registration("a-1", "127.0.0.1:7001", KEY_A));
    assert_eq!(status, 200, "{text}");
    let (status, text) = b.register(&registration("b-1", "127.0.0.1:7002", KEY_B));
    assert_eq!(status, 200, "{text}");
    let reg: RegisterEdgeResponse = serde_json::from_str(&text).unwrap();
    assert_eq!(
        reg.peers,
        vec![PeerEdge {
            edge_id: "a-1".into(),
            region: "us".into(),
            mesh_addr: "127.0.0.1:7001".into(),
            host_key: KEY_A.into(),
        }]
    );
    let peers_of_a = a.peers("a-1");
    assert_eq!(peers_of_a.len(), 1, "{peers_of_a:?}");
    assert_eq!(peers_of_a[0].edge_id, "b-1");
    assert_eq!(peers_of_a[0].mesh_addr, "127.0.0.1:7002");
    assert_eq!(peers_of_a[0].host_key, KEY_B);
    // The same list alone, renewing nothing, and only for the edge itself.
    let alone = a.peer_list("a-1");
    assert_eq!(alone.peers, peers_of_a);
    assert_eq!(alone.holder_key, reg.holder_key);
    refused(a.get("/v1/edges/b-1/peers"), 403, ErrorCode::Forbidden);
    refused(
        forged.get("/v1/edges/a-1/peers"),
        401,
        ErrorCode::Unauthorized,
    );

    // A malformed host key is refused with a sentence.
    let msg = refused(
        a.register(&registration(
            "a-1",
            "127.0.0.1:7001",
            "ssh-ed25519 nonsense",
        )),
        400,
        ErrorCode::BadRequest,
    );
    assert!(msg.contains("host_key"), "{msg}");

    // B holds a live tunnel.
    let (status, text) = b.create("b-1");
    assert_eq!(status, 201, "{text}");
    let b_tunnel: CreateTunnelResponse = serde_json::from_str(&text).unwrap();
    // With control's proof that B holds its name as this tunnel, under the key control's
    // answers carry; it proves nothing for another edge or tunnel.
    let key = HolderKey::parse(reg.holder_key.as_deref().expect("a holder key")).unwrap();
    let (status, text) = b.heartbeat("b-1", &[b_tunnel.tunnel_id]);
    assert_eq!(status, 200, "{text}");
    let hb: EdgeHeartbeatResponse = serde_json::from_str(&text).unwrap();
    assert_eq!(hb.holder_key, reg.holder_key, "one key in every answer");
    let proof = b_tunnel.holder_proof.as_deref().expect("a holder proof");
    let (name, id) = (b_tunnel.hostname.as_str(), b_tunnel.tunnel_id);
    assert!(key.verifies(proof, name, "b-1", id, TunnelKind::Http));
    assert!(!key.verifies(proof, name, "a-1", id, TunnelKind::Http));
    assert!(!key.verifies(proof, name, "b-1", id + 1, TunnelKind::Http));

    // A's credential cannot act as B.
    let msg = refused(
        a.register(&registration("b-1", "127.0.0.1:7666", KEY_A)),
        403,
        ErrorCode::Forbidden,
    );
    assert!(msg.contains("a-1") && msg.contains("b-1"), "{msg}");
    refused(
        a.heartbeat("b-1", &[b_tunnel.tunnel_id]),
        403,
        ErrorCode::Forbidden,
    );
    refused(a.create("b-1"), 403, ErrorCode::Forbidden);
    // Nor say that B is leaving (which would drop it from its peers' lists).
    let stopped = serde_json::json!({ "stage": "stopped" });
    refused(
        a.post("/v1/edges/b-1/leaving", &stopped),
        403,
        ErrorCode::Forbidden,
    );
    let (status, text) = b.post(
        "/v1/edges/b-1/leaving",
        &serde_json::json!({ "stage": "gone" }),
    );
    assert_eq!(status, 400, "an unknown stage: {text}");
    refused(
        a.close(b_tunnel.tunnel_id, "b-1"),
        403,
        ErrorCode::Forbidden,
    );
    let msg = refused(
        a.close(b_tunnel.tunnel_id, "a-1"),
        403,
        ErrorCode::Forbidden,
    );
    assert!(msg.contains("another edge"), "{msg}");
    // The shared secret no longer speaks for an edge that has its own credential.
    let legacy = edge(stack.control.edge_secret.clone());
    refused(
        legacy.close(b_tunnel.tunnel_id, "b-1"),
        403,
        ErrorCode::Forbidden,
    );
    // A forged credential is unknown.
    refused(forged.heartbeat("b-1", &[]), 401, ErrorCode::Unauthorized);
    refused(
        forged.register(&registration("b-1", "127.0.0.1:7666", KEY_A)),
        401,
        ErrorCode::Unauthorized,
    );

    // B's tunnel and announcement are untouched.
    let (status, text) = b.heartbeat("b-1", &[b_tunnel.tunnel_id]);
    assert_eq!(status, 200, "{text}");
    let hb: EdgeHeartbeatResponse = serde_json::from_str(&text).unwrap();
    assert!(hb.close.is_empty(), "{hb:?}");
    assert_eq!(
        psql(
            &stack,
            &format!(
                "SELECT closed_at IS NULL FROM tunnels WHERE id = {}",
                b_tunnel.tunnel_id
            )
        ),
        "t"
    );
    assert_eq!(
        psql(&stack, "SELECT mesh_addr FROM edges WHERE id = 'b-1'"),
        "127.0.0.1:7002"
    );

    // Revoking A: A is refused at once and leaves B's peer list; B keeps working.
    assert_eq!(b.peers("b-1").len(), 1);
    let out = stack
        .control
        .cli(&["edge", "revoke", "a-1"])
        .expect("edge revoke");
    assert!(out.contains("\"revoked\":1"), "{out}");
    refused(a.heartbeat("a-1", &[]), 401, ErrorCode::Unauthorized);
    refused(a.create("a-1"), 401, ErrorCode::Unauthorized);
    assert_eq!(b.peers("b-1"), Vec::<PeerEdge>::new());
    assert_eq!(b.peer_list("b-1").peers, Vec::<PeerEdge>::new());
    refused(a.get("/v1/edges/a-1/peers"), 401, ErrorCode::Unauthorized);
    let (status, text) = b.heartbeat("b-1", &[b_tunnel.tunnel_id]);
    assert_eq!(status, 200, "{text}");
    let (status, text) = b.close(b_tunnel.tunnel_id, "b-1");
    assert_eq!(status, 200, "{text}");

    // The list shows both edges and their credential state.
    let out = stack.control.cli(&["edge", "list"]).expect("edge list");
    let list: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let rows = list.as_array().unwrap();
    let row = |id: &str| rows.iter().find(|r| r["edge_id"] == id).cloned().unwrap();
    assert_eq!(row("a-1")["revoked_credentials"], 1);
    assert_eq!(row("a-1")["live_credentials"], serde_json::json!([]));
    assert_eq!(row("b-1")["live_credentials"].as_array().unwrap().len(), 1);
    assert_eq!(row("b-1")["mesh_addr"], "127.0.0.1:7002");
    // Revoking again says there is nothing left to revoke.
    let err = stack.control.cli(&["edge", "revoke", "a-1"]).unwrap_err();
    assert!(err.to_string().contains("no live credential"), "{err}");
}

/// A stack of one region, with a client that plays edges.
fn one_region() -> (Stack, Client) {
    let stack = Stack::start(StackOptions {
        regions: vec![("us".into(), std::net::Ipv4Addr::LOCALHOST)],
        ..Default::default()
    })
    .expect("stack starts");
    let http = Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    (stack, http)
}

/// Asserts that the shared secret was refused as `edge_id` because its credentials were
/// revoked, and that the refusal says how to let the edge back in.
fn refused_as_revoked(status_and_text: (u16, String), edge_id: &str) {
    let msg = refused(status_and_text, 403, ErrorCode::Forbidden);
    assert!(msg.contains("revoked"), "{msg}");
    assert!(
        msg.contains(&format!("nearhop-control edge issue {edge_id}")),
        "{msg}"
    );
}

#[test]
fn shared_secret_cannot_act_as_an_edge_whose_credentials_were_revoked() {
    let (stack, http) = one_region();
    let edge = |credential: String| Edge::of(&stack, &http, credential);
    let a = edge(issue(&stack, "a-1"));
    let b = edge(issue(&stack, "b-1"));
    let legacy = edge(stack.control.edge_secret.clone());

    let (status, text) = a.register(&registration("a-1", "127.0.0.1:7001", KEY_A));
    assert_eq!(status, 200, "{text}");
    let (status, text) = a.create("a-1");
    assert_eq!(status, 201, "{text}");
    let a_tunnel: CreateTunnelResponse = serde_json::from_str(&text).unwrap();
    let (status, text) = b.register(&registration("b-1", "127.0.0.1:7002", KEY_B));
    assert_eq!(status, 200, "{text}");

    let out = stack
        .control
        .cli(&["edge", "revoke", "a-1"])
        .expect("edge revoke");
    assert!(out.contains("\"revoked\":1"), "{out}");
    refused(a.heartbeat("a-1", &[]), 401, ErrorCode::Unauthorized);

    // Nor does the shared secret speak for a-1 any more: not to register it again (with a
    // mesh address of its choosing), heartbeat it, set its tunnels up, close them, or say
    // it is leaving.
    refused_as_revoked(
        legacy.register(&registration("a-1", "127.0.0.1:7666", KEY_A)),
        "a-1",
    );
    refused_as_revoked(legacy.heartbeat("a-1", &[a_tunnel.tunnel_id]), "a-1");
    refused_as_revoked(legacy.create("a-1"), "a-1");
    refused_as_revoked(legacy.close(a_tunnel.tunnel_id, "a-1"), "a-1");
    refused_as_revoked(
        legacy.post(
            "/v1/edges/a-1/leaving",
            &serde_json::json!({ "stage": "stopped" }),
        ),
        "a-1",
    );
    refused_as_revoked(legacy.get("/v1/edges/a-1/routes"), "a-1");
    refused_as_revoked(legacy.get("/v1/edges/a-1/certificates"), "a-1");
    assert_eq!(
        psql(&stack, "SELECT mesh_addr FROM edges WHERE id = 'a-1'"),
        "127.0.0.1:7001",
        "the refused registration changed nothing"
    );
    assert_eq!(
        psql(
            &stack,
            &format!(
                "SELECT closed_at IS NULL FROM tunnels WHERE id = {}",
                a_tunnel.tunnel_id
            )
        ),
        "t",
        "the refused close closed nothing"
    );

    // Other edges are unaffected: b-1 with its credential, and an edge never issued one with
    // the shared secret (the transition still works).
    let (status, text) = b.heartbeat("b-1", &[]);
    assert_eq!(status, 200, "{text}");
    let (status, text) = b.create("b-1");
    assert_eq!(status, 201, "{text}");
    let (status, text) = legacy.register(&registration("c-1", "127.0.0.1:7003", KEY_C));
    assert_eq!(status, 200, "{text}");
    let (status, text) = legacy.heartbeat("c-1", &[]);
    assert_eq!(status, 200, "{text}");

    // A new credential lets a-1 back in.
    let again = edge(issue(&stack, "a-1"));
    let (status, text) = again.register(&registration("a-1", "127.0.0.1:7001", KEY_A));
    assert_eq!(status, 200, "{text}");
}

#[test]
fn a_credential_pinned_to_a_region_cannot_register_its_edge_in_another() {
    let stack = Stack::start(StackOptions {
        regions: vec![
            ("us".into(), std::net::Ipv4Addr::new(127, 0, 0, 1)),
            ("eu".into(), std::net::Ipv4Addr::new(127, 0, 0, 2)),
        ],
        ..Default::default()
    })
    .expect("stack starts");
    let http = Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let edge = |credential: String| Edge::of(&stack, &http, credential);
    let in_region = |edge_id: &str, region: &str, host_key: &str| RegisterEdgeRequest {
        region: region.into(),
        ..registration(edge_id, "127.0.0.1:7001", host_key)
    };
    let pinned = edge(issue_in(&stack, "us-7", Some("us")));
    let free = edge(issue_in(&stack, "roamer", None));
    let legacy = edge(stack.control.edge_secret.clone());

    let msg = refused(
        pinned.register(&in_region("us-7", "eu", KEY_A)),
        403,
        ErrorCode::Forbidden,
    );
    assert!(msg.contains("\"us\"") && msg.contains("\"eu\""), "{msg}");
    assert_eq!(
        psql(&stack, "SELECT count(*) FROM edges WHERE id = 'us-7'"),
        "0"
    );
    let (status, text) = pinned.register(&in_region("us-7", "us", KEY_A));
    assert_eq!(status, 200, "{text}");
    // eu is a region control knows: an unpinned credential registers there.
    let (status, text) = free.register(&in_region("roamer", "eu", KEY_B));
    assert_eq!(status, 200, "{text}");
    // Once registered, the pinned edge still cannot move.
    refused(
        pinned.register(&in_region("us-7", "eu", KEY_A)),
        403,
        ErrorCode::Forbidden,
    );
    assert_eq!(
        psql(&stack, "SELECT region FROM edges WHERE id = 'us-7'"),
        "us"
    );

    // Revoking the pinned credential does not free the edge id for the shared secret to
    // register it elsewhere.
    stack
        .control
        .cli(&["edge", "revoke", "us-7"])
        .expect("edge revoke");
    refused_as_revoked(legacy.register(&in_region("us-7", "eu", KEY_A)), "us-7");
    assert_eq!(
        psql(&stack, "SELECT region FROM edges WHERE id = 'us-7'"),
        "us"
    );
}

#[test]
fn an_edge_on_the_shared_secret_is_told_no_peers() {
    let (stack, http) = one_region();
    let edge = |credential: String| Edge::of(&stack, &http, credential);
    let a = edge(issue(&stack, "a-1"));
    let legacy = edge(stack.control.edge_secret.clone());
    let (status, text) = a.register(&registration("a-1", "127.0.0.1:7001", KEY_A));
    assert_eq!(status, 200, "{text}");

    // a-1 would refuse its links (it lists only edges with a credential), so c-1 is not
    // given a-1 to dial: not at registration, heartbeat, or asking for the list alone.
    let (status, text) = legacy.register(&registration("c-1", "127.0.0.1:7003", KEY_B));
    assert_eq!(status, 200, "{text}");
    let reg: RegisterEdgeResponse = serde_json::from_str(&text).unwrap();
    assert_eq!(reg.peers, Vec::<PeerEdge>::new());
    assert_eq!(legacy.peers("c-1"), Vec::<PeerEdge>::new());
    let alone = legacy.peer_list("c-1");
    assert_eq!(alone.peers, Vec::<PeerEdge>::new());
    assert_eq!(alone.holder_key, reg.holder_key);
    // And a-1 does not list c-1.
    assert_eq!(a.peers("a-1"), Vec::<PeerEdge>::new());
    // An edge with its own credential still gets its peers.
    let b = edge(issue(&stack, "b-1"));
    let (status, text) = b.register(&registration("b-1", "127.0.0.1:7002", KEY_C));
    assert_eq!(status, 200, "{text}");
    let reg: RegisterEdgeResponse = serde_json::from_str(&text).unwrap();
    let ids: Vec<&str> = reg.peers.iter().map(|p| p.edge_id.as_str()).collect();
    assert_eq!(ids, ["a-1"]);
}

const HOLDER_SECRET: &str = "the-holder-key-secret-0123456789";
const HOLDER_SECRET_BEFORE: &str = "the-holder-key-before-0123456789";

/// Control in the middle of a rotation of its holder key, heartbeats every 2 s (so the
/// previous key signs for 6 s after control's first answer to an edge).
fn rotating_holder_key(spec: &mut ControlSpec) {
    spec.heartbeat_seconds = 2;
    spec.extra_toml.push_str(&format!(
        "holder_key_secret = \"{HOLDER_SECRET}\"\n\
         holder_key_previous_secret = \"{HOLDER_SECRET_BEFORE}\"\n"
    ));
}

#[test]
fn during_a_holder_key_rotation_every_answer_carries_both_keys_and_the_grace_starts_at_the_first() {
    let stack = Stack::start(StackOptions {
        regions: vec![("us".into(), std::net::Ipv4Addr::LOCALHOST)],
        control_tweak: Some(rotating_holder_key),
        ..Default::default()
    })
    .expect("stack starts");
    let http = Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let a = Edge::of(&stack, &http, issue(&stack, "a-1"));
    let current = HolderSigner::from_secret(HOLDER_SECRET).public_key();
    let previous = HolderSigner::from_secret(HOLDER_SECRET_BEFORE).public_key();
    let both = (Some(current.clone()), Some(previous.clone()));

    // Longer than the grace since control started, and no edge answered yet: the grace has
    // not begun, since no edge has heard of the current key.
    std::thread::sleep(Duration::from_secs(7));
    let (status, text) = a.register(&registration("a-1", "127.0.0.1:7001", KEY_A));
    assert_eq!(status, 200, "{text}");
    let reg: RegisterEdgeResponse = serde_json::from_str(&text).unwrap();
    assert_eq!((reg.holder_key, reg.holder_key_previous), both, "register");
    let (status, text) = a.heartbeat("a-1", &[]);
    assert_eq!(status, 200, "{text}");
    let hb: EdgeHeartbeatResponse = serde_json::from_str(&text).unwrap();
    assert_eq!((hb.holder_key, hb.holder_key_previous), both, "heartbeat");
    let alone = a.peer_list("a-1");
    assert_eq!(
        (alone.holder_key, alone.holder_key_previous),
        both,
        "peer list"
    );

    // Within 6 s of that first answer, a new tunnel's proof is under the previous key,
    // which edges that have not heard of the current one yet still take.
    let proven_under = |tunnel: &CreateTunnelResponse| -> Vec<&str> {
        let proof = tunnel.holder_proof.as_deref().expect("a holder proof");
        [("current", &current), ("previous", &previous)]
            .into_iter()
            .filter(|(_, key)| {
                HolderKey::parse(key).unwrap().verifies(
                    proof,
                    &tunnel.hostname,
                    "a-1",
                    tunnel.tunnel_id,
                    TunnelKind::Http,
                )
            })
            .map(|(which, _)| which)
            .collect()
    };
    let (status, text) = a.create("a-1");
    assert_eq!(status, 201, "{text}");
    let during: CreateTunnelResponse = serde_json::from_str(&text).unwrap();
    assert_eq!(proven_under(&during), ["previous"]);
    // After it, under the current key.
    std::thread::sleep(Duration::from_secs(7));
    let (status, text) = a.create("a-1");
    assert_eq!(status, 201, "{text}");
    let after: CreateTunnelResponse = serde_json::from_str(&text).unwrap();
    assert_eq!(proven_under(&after), ["current"]);
}
