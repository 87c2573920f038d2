//! Control's keys for holder proofs (`nearhop_wire::holder_proof`): the key that signs each
//! new tunnel's proof, derived from `holder_key_secret` (else `admin_secret`), and during a
//! rotation the key before it, from `holder_key_previous_secret`. Edges are sent both public
//! keys and take proofs under either, so the tunnels set up before a rotation stay relayed.
//!
//! Right after control starts with a new key, edges still hold only the old one until
//! control next answers them: a proof under the new key would be refused by them
//! (`bad_proof`) and not checked again until their link to the holder reconnects. So while a
//! previous key is configured, control keeps signing with it until it has answered an edge's
//! registration, heartbeat or peer list (every such answer carries both keys), and for
//! [`LIVE_HEARTBEATS`] heartbeat intervals after that first answer (every edge still listed
//! as a peer has heartbeated, and been answered with both keys, by then), and with the new
//! key after that. The grace counts from that first answer, not from start: migrations, a
//! slow start or a database outage at start can take longer than the grace, and no edge
//! hears of the new key meanwhile. It is this process's own: each control instance starts
//! its grace at its own first answer.

use crate::config::Config;
use crate::peers::LIVE_HEARTBEATS;
use nearhop_wire::holder_proof::HolderSigner;
use nearhop_wire::TunnelKind;
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// The signing keys and which one signs now.
pub struct HolderSigning {
    current: HolderSigner,
    current_public: String,
    /// The setting the current key derives from, as log lines name it.
    current_from: &'static str,
    previous: Option<(HolderSigner, String)>,
    /// How long the previous key keeps signing after the first answer to an edge.
    grace: Duration,
    /// When control first answered an edge (with both keys, while there is a previous one).
    first_answer: OnceLock<Instant>,
    /// Woken at the first answer, for the line that says when the current key signs.
    answered: Notify,
}

impl HolderSigning {
    /// The keys of `cfg`.
    pub fn new(cfg: &Config) -> HolderSigning {
        let current = HolderSigner::from_secret(cfg.signing_holder_secret());
        let previous = cfg.holder_key_previous_secret.as_deref().map(|secret| {
            let signer = HolderSigner::from_secret(secret);
            let public = signer.public_key();
            (signer, public)
        });
        HolderSigning {
            current_public: current.public_key(),
            current,
            current_from: if cfg.holder_key_secret.is_some() {
                "holder_key_secret"
            } else {
                "admin_secret"
            },
            previous,
            grace: Duration::from_secs(cfg.heartbeat_seconds.saturating_mul(LIVE_HEARTBEATS)),
            first_answer: OnceLock::new(),
            answered: Notify::new(),
        }
    }

    /// The public key of the current key (`holder_key` in control's answers to edges).
    pub fn public_key(&self) -> String {
        self.current_public.clone()
    }

    /// The public key of the previous key while it is configured (`holder_key_previous`).
    pub fn previous_public_key(&self) -> Option<String> {
        self.previous.as_ref().map(|(_, public)| public.clone())
    }

    /// Control answered an edge's registration, heartbeat or peer list at `now`, the answer
    /// carrying [`Self::public_key`] and [`Self::previous_public_key`]. The first such
    /// answer starts the grace after which the current key signs; later ones change nothing.
    pub fn edge_answered(&self, now: Instant) {
        if self.first_answer.set(now).is_ok() {
            self.answered.notify_one();
        }
    }

    /// The proof that `edge_id` holds `name` as tunnel `tunnel_id` of `kind`.
    pub fn prove(&self, name: &str, edge_id: &str, tunnel_id: i64, kind: TunnelKind) -> String {
        self.signer_at(Instant::now())
            .prove(name, edge_id, tunnel_id, kind)
    }

    /// When the current key signs from, while a previous key is configured: the grace after
    /// the first answer to an edge (`None` until that answer).
    fn current_signs_from(&self) -> Option<Instant> {
        self.first_answer.get().map(|at| *at + self.grace)
    }

    /// The key that signs at `now`.
    fn signer_at(&self, now: Instant) -> &HolderSigner {
        let current_signs = match self.current_signs_from() {
            Some(from) => now >= from,
            None => false,
        };
        match &self.previous {
            Some((previous, _)) if !current_signs => previous,
            _ => &self.current,
        }
    }

    /// Says at start which keys are in force, and where the key comes from when it follows
    /// `admin_secret` (so that rotating that secret does not re-key the mesh by surprise).
    pub fn log_at_start(&self, cfg: &Config) {
        if cfg.holder_key_secret.is_none() {
            tracing::warn!(
                holder_key = %self.current_public,
                "holder proofs are signed with a key derived from admin_secret: changing \
                 admin_secret changes that key, and peers then refuse the claims of tunnels set \
                 up before (bad_proof) until their clients reconnect. Set holder_key_secret \
                 (NEARHOP_CONTROL_HOLDER_KEY_SECRET) to the current admin_secret to keep this \
                 key, before admin_secret is next changed (docs/operations.md, \"Rotating \
                 control's secrets\")"
            );
        }
        match &self.previous {
            Some((_, previous)) => {
                tracing::info!(
                    holder_key = %self.current_public,
                    holder_key_previous = %previous,
                    previous_signs_for_seconds = self.grace.as_secs(),
                    "holder keys: edges take proofs under either; new proofs are signed with \
                     the previous key until control has answered an edge and \
                     previous_signs_for_seconds more have passed (every edge has heard of the \
                     current key by then), then with the current key (a line says when). \
                     Remove holder_key_previous_secret once the tunnels set up before that \
                     line have closed"
                );
            }
            None => tracing::info!(holder_key = %self.current_public, "holder key"),
        }
    }

    /// Logs, once the grace after the first answer to an edge has passed, that new proofs are
    /// signed with the current key from now on: the time of this line is the one the
    /// runbook's query of tunnels still proven under the previous key needs.
    pub async fn log_when_current_signs(self: std::sync::Arc<Self>) {
        if self.previous.is_none() {
            return;
        }
        let from = loop {
            let answered = self.answered.notified();
            if let Some(from) = self.current_signs_from() {
                break from;
            }
            answered.await;
        };
        tokio::time::sleep_until(from.into()).await;
        tracing::info!(
            holder_key = %self.current_public,
            "new holder proofs are signed with the current key ({}) from now on; tunnels \
             set up before this line carry proofs under the previous key",
            self.current_from
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nearhop_wire::holder_proof::{HolderKey, HolderKeys};

    fn config(extra: &str) -> Config {
        let text = format!("admin_secret = \"0123456789abcdef\"\nheartbeat_seconds = 10\n{extra}");
        let mut c: Config = toml::from_str(&text).expect("toml");
        c.validate().expect("valid");
        c
    }

    fn proves_under(signing: &HolderSigning, at: Instant, key: &str) -> bool {
        let proof = signing
            .signer_at(at)
            .prove("blog.a.test", "eu-1", 7, TunnelKind::Http);
        HolderKey::parse(key).expect("key").verifies(
            &proof,
            "blog.a.test",
            "eu-1",
            7,
            TunnelKind::Http,
        )
    }

    #[test]
    fn without_its_own_secret_the_key_is_the_one_admin_secret_always_gave() {
        let signing = HolderSigning::new(&config(""));
        assert_eq!(
            signing.public_key(),
            HolderSigner::from_secret("0123456789abcdef").public_key(),
            "an upgrade keeps the key edges hold"
        );
        assert_eq!(signing.previous_public_key(), None);
        // holder_key_secret set to the admin secret it followed: the same key, whatever
        // admin_secret becomes.
        let mut c = config("holder_key_secret = \"0123456789abcdef\"");
        c.admin_secret = "a-brand-new-admin-secret".into();
        assert_eq!(HolderSigning::new(&c).public_key(), signing.public_key());
    }

    fn rotating() -> HolderSigning {
        HolderSigning::new(&config(
            "holder_key_secret = \"the-new-holder-secret\"\n\
             holder_key_previous_secret = \"0123456789abcdef\"",
        ))
    }

    #[test]
    fn a_rotation_announces_both_keys_and_signs_with_the_new_one_three_heartbeats_after_an_edge_heard(
    ) {
        let signing = rotating();
        let new = HolderSigner::from_secret("the-new-holder-secret").public_key();
        let old = HolderSigner::from_secret("0123456789abcdef").public_key();
        assert_eq!(signing.public_key(), new);
        assert_eq!(signing.previous_public_key(), Some(old.clone()));
        // Edges that heard of both keys take proofs made at any time.
        let keys = HolderKeys::parse(&new, Some(&old)).expect("keys");
        let proof = signing.prove("blog.a.test", "eu-1", 7, TunnelKind::Http);
        assert!(keys.verifies(&proof, "blog.a.test", "eu-1", 7, TunnelKind::Http));
        // Control answered an edge (with both keys) first at `answered`: until every listed
        // edge has heartbeated since (3 × 10 s), the old key signs, which edges that have not
        // heard of the new one yet still take. A later answer does not move that.
        let answered = Instant::now();
        signing.edge_answered(answered);
        signing.edge_answered(answered + Duration::from_secs(20));
        for at in [answered, answered + Duration::from_secs(29)] {
            assert!(proves_under(&signing, at, &old));
            assert!(!proves_under(&signing, at, &new));
        }
        for at in [
            answered + Duration::from_secs(30),
            answered + Duration::from_secs(86_400),
        ] {
            assert!(proves_under(&signing, at, &new));
            assert!(!proves_under(&signing, at, &old));
        }
    }

    #[test]
    fn until_control_has_answered_an_edge_the_previous_key_signs_however_long_that_takes() {
        // Migrations, a slow start or the database down at start: no edge has been told of
        // the new key, so hours after start the old key still signs.
        let signing = rotating();
        let old = HolderSigner::from_secret("0123456789abcdef").public_key();
        let started = Instant::now();
        for at in [started, started + Duration::from_secs(3_600)] {
            assert!(proves_under(&signing, at, &old));
            assert!(!proves_under(&signing, at, &signing.public_key()));
        }
        // The grace counts from the first answer, not from start.
        let answered = started + Duration::from_secs(3_600);
        signing.edge_answered(answered);
        assert!(proves_under(
            &signing,
            answered + Duration::from_secs(29),
            &old
        ));
        assert!(proves_under(
            &signing,
            answered + Duration::from_secs(30),
            &signing.public_key()
        ));
    }

    #[test]
    fn without_a_previous_key_the_current_one_signs_at_once() {
        let signing = HolderSigning::new(&config("holder_key_secret = \"the-new-holder-secret\""));
        // Before any edge was answered, too.
        assert!(proves_under(
            &signing,
            Instant::now(),
            &signing.public_key()
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn the_line_that_the_current_key_signs_waits_for_the_first_answer_to_an_edge() {
        let signing = std::sync::Arc::new(rotating());
        let logged = tokio::spawn(signing.clone().log_when_current_signs());
        // An hour with no answer: the line is not due.
        tokio::time::sleep(Duration::from_secs(3_600)).await;
        assert!(!logged.is_finished());
        signing.edge_answered(tokio::time::Instant::now().into_std());
        tokio::time::sleep(Duration::from_secs(29)).await;
        assert!(!logged.is_finished());
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(logged.is_finished(), "logged 30 s after the first answer");
    }
}
