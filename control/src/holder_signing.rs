//! Control's keys for holder proofs (`nearhop_wire::holder_proof`): the key that signs each
//! new tunnel's proof, derived from `holder_key_secret` (else `admin_secret`), and during a
//! rotation the key before it, from `holder_key_previous_secret`. Edges are sent both public
//! keys and take proofs under either, so the tunnels set up before a rotation stay relayed.
//!
//! Right after control starts with a new key, edges still hold only the old one until their
//! next heartbeat: a proof under the new key would be refused by them (`bad_proof`) and not
//! checked again until their link to the holder reconnects. So while a previous key is
//! configured, control keeps signing with it for [`LIVE_HEARTBEATS`] heartbeat intervals
//! after start (every edge still listed as a peer has been answered with both keys by then),
//! and with the new key after that.

use crate::config::Config;
use crate::peers::LIVE_HEARTBEATS;
use nearhop_wire::holder_proof::HolderSigner;
use nearhop_wire::TunnelKind;
use std::time::{Duration, Instant};

/// The signing keys and which one signs now.
pub struct HolderSigning {
    current: HolderSigner,
    current_public: String,
    previous: Option<(HolderSigner, String)>,
    /// Before this instant new proofs are signed with `previous` (when there is one).
    current_signs_from: Instant,
}

impl HolderSigning {
    /// The keys of `cfg`, as control starts at `started`.
    pub fn new(cfg: &Config, started: Instant) -> HolderSigning {
        let current = HolderSigner::from_secret(cfg.holder_key_secret());
        let previous = cfg.holder_key_previous_secret.as_deref().map(|secret| {
            let signer = HolderSigner::from_secret(secret);
            let public = signer.public_key();
            (signer, public)
        });
        let grace = match previous {
            Some(_) => Duration::from_secs(cfg.heartbeat_seconds.saturating_mul(LIVE_HEARTBEATS)),
            None => Duration::ZERO,
        };
        HolderSigning {
            current_public: current.public_key(),
            current,
            previous,
            current_signs_from: started + grace,
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

    /// The proof that `edge_id` holds `name` as tunnel `tunnel_id` of `kind`.
    pub fn prove(&self, name: &str, edge_id: &str, tunnel_id: i64, kind: TunnelKind) -> String {
        self.signer_at(Instant::now())
            .prove(name, edge_id, tunnel_id, kind)
    }

    /// The key that signs at `now`.
    fn signer_at(&self, now: Instant) -> &HolderSigner {
        match &self.previous {
            Some((previous, _)) if now < self.current_signs_from => previous,
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
                let grace = self
                    .current_signs_from
                    .saturating_duration_since(Instant::now());
                tracing::info!(
                    holder_key = %self.current_public,
                    holder_key_previous = %previous,
                    previous_signs_for_seconds = grace.as_secs(),
                    "holder keys: edges take proofs under either; new proofs are signed with \
                     the previous key until every edge has heard of the current one, then with \
                     the current key (a line says when). Remove holder_key_previous_secret once \
                     the tunnels set up before that have closed"
                );
            }
            None => tracing::info!(holder_key = %self.current_public, "holder key"),
        }
    }

    /// Logs, once the grace after start has passed, that new proofs are signed with the
    /// current key from now on: the time of this line is the one the runbook's query of
    /// tunnels still proven under the previous key needs.
    pub async fn log_when_current_signs(self: std::sync::Arc<Self>) {
        if self.previous.is_none() {
            return;
        }
        tokio::time::sleep_until(self.current_signs_from.into()).await;
        tracing::info!(
            holder_key = %self.current_public,
            "new holder proofs are signed with the current key (holder_key_secret) from now \
             on; tunnels set up before this line carry proofs under the previous key"
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
        let signing = HolderSigning::new(&config(""), Instant::now());
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
        assert_eq!(
            HolderSigning::new(&c, Instant::now()).public_key(),
            signing.public_key()
        );
    }

    #[test]
    fn a_rotation_announces_both_keys_and_signs_with_the_new_one_after_three_heartbeats() {
        let started = Instant::now();
        let signing = HolderSigning::new(
            &config(
                "holder_key_secret = \"the-new-holder-secret\"\n\
                 holder_key_previous_secret = \"0123456789abcdef\"",
            ),
            started,
        );
        let new = HolderSigner::from_secret("the-new-holder-secret").public_key();
        let old = HolderSigner::from_secret("0123456789abcdef").public_key();
        assert_eq!(signing.public_key(), new);
        assert_eq!(signing.previous_public_key(), Some(old.clone()));
        // Edges that heard of both keys take proofs made at any time.
        let keys = HolderKeys::parse(&new, Some(&old)).expect("keys");
        let proof = signing.prove("blog.a.test", "eu-1", 7, TunnelKind::Http);
        assert!(keys.verifies(&proof, "blog.a.test", "eu-1", 7, TunnelKind::Http));
        // Until every listed edge has heartbeated since start (3 × 10 s), the old key
        // signs, which edges that have not heard of the new one yet still take.
        for at in [started, started + Duration::from_secs(29)] {
            assert!(proves_under(&signing, at, &old));
            assert!(!proves_under(&signing, at, &new));
        }
        for at in [
            started + Duration::from_secs(30),
            started + Duration::from_secs(86_400),
        ] {
            assert!(proves_under(&signing, at, &new));
            assert!(!proves_under(&signing, at, &old));
        }
    }

    #[test]
    fn without_a_previous_key_the_current_one_signs_at_once() {
        let started = Instant::now();
        let signing = HolderSigning::new(
            &config("holder_key_secret = \"the-new-holder-secret\""),
            started,
        );
        assert!(proves_under(&signing, started, &signing.public_key()));
    }
}
