//! Holder proofs: control's signature that a tunnel name is held by one edge, under one
//! tunnel id. An edge announces each name it holds to its peers with the proof control gave
//! it when the tunnel was set up; a peer relays visitors to it only when the proof checks
//! out against control's public key and names the announcing edge. So a compromised edge
//! cannot draw the visitors of names it does not hold, and of two proven claims for one name
//! the higher tunnel id (control's newer tunnel) wins, whatever order the feeds arrive in.
//!
//! The key is Ed25519, derived by control from its `holder_key_secret` (or, while that is
//! unset, its `admin_secret`; neither leaves the control host): edges get the public key
//! only, in control's answers to registration and heartbeats. While the key is rotated,
//! those answers carry the previous public key too, and an edge takes proofs signed with
//! either ([`HolderKeys`]), so that tunnels set up before the rotation stay relayed.

use crate::TunnelKind;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};

/// Length of a proof as it travels (base64url without padding of a 64-byte signature).
pub const PROOF_LEN: usize = 86;

/// What is signed: the name, the edge, the tunnel and its kind, one per line after a
/// domain separator (none of them can hold a newline: names and edge ids are checked).
fn message(name: &str, edge_id: &str, tunnel_id: i64, kind: TunnelKind) -> Vec<u8> {
    format!(
        "nearhop holder proof v1\n{name}\n{edge_id}\n{tunnel_id}\n{}",
        kind.as_str()
    )
    .into_bytes()
}

/// Control's signing key.
pub struct HolderSigner {
    pair: Ed25519KeyPair,
}

impl HolderSigner {
    /// The key derived from `secret` (control's `holder_key_secret`, or its `admin_secret`):
    /// the same secret gives the same key, so proofs stay valid across control restarts.
    pub fn from_secret(secret: &str) -> HolderSigner {
        let hmac = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
        let seed = ring::hmac::sign(&hmac, b"nearhop holder proof key v1");
        let pair = Ed25519KeyPair::from_seed_unchecked(seed.as_ref())
            .expect("an HMAC-SHA256 output is a 32-byte Ed25519 seed");
        HolderSigner { pair }
    }

    /// The public key, base64 (as control sends it to edges in `holder_key`).
    pub fn public_key(&self) -> String {
        STANDARD.encode(self.pair.public_key().as_ref())
    }

    /// The proof that `edge_id` holds `name` as tunnel `tunnel_id` of `kind`.
    pub fn prove(&self, name: &str, edge_id: &str, tunnel_id: i64, kind: TunnelKind) -> String {
        let signature = self.pair.sign(&message(name, edge_id, tunnel_id, kind));
        URL_SAFE_NO_PAD.encode(signature.as_ref())
    }
}

/// Control's public key as an edge keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HolderKey([u8; 32]);

impl HolderKey {
    /// Reads control's `holder_key` (base64 of the 32-byte Ed25519 public key).
    pub fn parse(text: &str) -> Result<HolderKey, String> {
        HolderKey::parse_field(text, "holder_key")
    }

    /// Reads a key of control's answers; errors name `field`, the answer's field it came in.
    fn parse_field(text: &str, field: &str) -> Result<HolderKey, String> {
        let bytes = STANDARD
            .decode(text.trim())
            .map_err(|e| format!("control's {field} is not base64: {e}"))?;
        let key: [u8; 32] = bytes.try_into().map_err(|b: Vec<u8>| {
            format!(
                "control's {field} must be a 32-byte Ed25519 key, not {} bytes",
                b.len()
            )
        })?;
        Ok(HolderKey(key))
    }

    /// Whether `proof` is control's signature that `edge_id` holds `name` as tunnel
    /// `tunnel_id` of `kind`.
    pub fn verifies(
        &self,
        proof: &str,
        name: &str,
        edge_id: &str,
        tunnel_id: i64,
        kind: TunnelKind,
    ) -> bool {
        decode_proof(proof).is_some_and(|signature| {
            self.verifies_signature(&signature, name, edge_id, tunnel_id, kind)
        })
    }

    /// [`HolderKey::verifies`] for a proof already decoded ([`decode_proof`]).
    pub fn verifies_signature(
        &self,
        signature: &ProofSignature,
        name: &str,
        edge_id: &str,
        tunnel_id: i64,
        kind: TunnelKind,
    ) -> bool {
        UnparsedPublicKey::new(&ED25519, &self.0)
            .verify(&message(name, edge_id, tunnel_id, kind), signature)
            .is_ok()
    }
}

/// A proof's Ed25519 signature, decoded: 64 bytes, as an edge keeps the proof of a claim it
/// took (to check it again when control's keys change) instead of the 86 characters it
/// travels as.
pub type ProofSignature = [u8; 64];

/// Decodes a proof as it travels; `None` for text that is not one.
pub fn decode_proof(proof: &str) -> Option<ProofSignature> {
    if proof.len() != PROOF_LEN {
        return None;
    }
    URL_SAFE_NO_PAD.decode(proof).ok()?.try_into().ok()
}

/// The keys an edge takes holder proofs under: control's current key and, while control
/// rotates it, the previous one (the proofs of tunnels set up before the rotation are
/// signed with it, and stay valid as long as control sends it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HolderKeys {
    /// The key control signs new proofs with (`holder_key`).
    pub current: HolderKey,
    /// The key before it (`holder_key_previous`), while control still sends it.
    pub previous: Option<HolderKey>,
}

impl HolderKeys {
    /// Reads control's `holder_key` and `holder_key_previous`. Each error names the key that
    /// does not parse, so that the caller can keep the current one when only the previous
    /// one is wrong.
    pub fn parse(current: &str, previous: Option<&str>) -> Result<HolderKeys, String> {
        let current = HolderKey::parse(current)?;
        let previous = previous
            .map(|text| HolderKey::parse_field(text, "holder_key_previous"))
            .transpose()?;
        Ok(HolderKeys { current, previous })
    }

    /// Whether `proof` checks out under the current key or the previous one (see
    /// [`HolderKey::verifies`]).
    pub fn verifies(
        &self,
        proof: &str,
        name: &str,
        edge_id: &str,
        tunnel_id: i64,
        kind: TunnelKind,
    ) -> bool {
        decode_proof(proof).is_some_and(|signature| {
            self.verifies_signature(&signature, name, edge_id, tunnel_id, kind)
        })
    }

    /// [`HolderKeys::verifies`] for a proof already decoded ([`decode_proof`]).
    pub fn verifies_signature(
        &self,
        signature: &ProofSignature,
        name: &str,
        edge_id: &str,
        tunnel_id: i64,
        kind: TunnelKind,
    ) -> bool {
        self.keys()
            .any(|key| key.verifies_signature(signature, name, edge_id, tunnel_id, kind))
    }

    /// Whether every key of `before` is taken here too: `false` when a key taken before is
    /// no longer (the previous key dropped, or the current one replaced), so that claims
    /// taken under it must be checked again.
    pub fn takes_every_key_of(&self, before: &HolderKeys) -> bool {
        before.keys().all(|old| self.keys().any(|key| key == old))
    }

    /// The current key, then the previous one if any.
    fn keys(&self) -> impl Iterator<Item = &HolderKey> {
        std::iter::once(&self.current).chain(self.previous.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn during_a_rotation_proofs_under_either_key_check_out_and_no_others() {
        let old = HolderSigner::from_secret("the-old-secret-0123");
        let new = HolderSigner::from_secret("the-new-secret-0123");
        let stranger = HolderSigner::from_secret("nobodys-secret-0123");
        let keys = HolderKeys::parse(&new.public_key(), Some(&old.public_key())).expect("keys");
        let args = ("blog.a.test", "eu-1", 42, TunnelKind::Http);
        for (signer, taken) in [(&old, true), (&new, true), (&stranger, false)] {
            let proof = signer.prove(args.0, args.1, args.2, args.3);
            assert_eq!(keys.verifies(&proof, args.0, args.1, args.2, args.3), taken);
            // Still only for what was signed.
            assert!(!keys.verifies(&proof, args.0, "us-1", args.2, args.3));
        }
        // Once control stops sending the previous key, its proofs are refused.
        let after = HolderKeys::parse(&new.public_key(), None).expect("keys");
        let proof = old.prove(args.0, args.1, args.2, args.3);
        assert!(!after.verifies(&proof, args.0, args.1, args.2, args.3));
        // Kept decoded, a proof checks out the same.
        let signature = decode_proof(&proof).expect("a proof");
        assert!(keys.verifies_signature(&signature, args.0, args.1, args.2, args.3));
        assert!(!after.verifies_signature(&signature, args.0, args.1, args.2, args.3));
        assert_eq!(decode_proof("AAAA"), None);
        // Dropping a key is what makes claims taken before worth checking again; adding
        // one is not.
        let only_old = HolderKeys::parse(&old.public_key(), None).expect("keys");
        assert!(!after.takes_every_key_of(&keys), "the previous key dropped");
        assert!(
            !after.takes_every_key_of(&only_old),
            "the current key replaced"
        );
        assert!(keys.takes_every_key_of(&only_old), "a key added");
        assert!(keys.takes_every_key_of(&after), "the previous key added");
        assert!(after.takes_every_key_of(&after));
        // A previous key that does not parse says which one it is.
        let e = HolderKeys::parse(&new.public_key(), Some("AAAA")).unwrap_err();
        assert_eq!(
            e, "control's holder_key_previous must be a 32-byte Ed25519 key, not 3 bytes",
            "{e}"
        );
        let e = HolderKeys::parse(&new.public_key(), Some("not base64")).unwrap_err();
        assert!(
            e.starts_with("control's holder_key_previous is not base64: "),
            "{e}"
        );
        let e = HolderKeys::parse("AAAA", Some(&old.public_key())).unwrap_err();
        assert!(e.starts_with("control's holder_key must be"), "{e}");
    }

    #[test]
    fn a_proof_checks_out_only_for_what_was_signed_and_with_that_key() {
        let signer = HolderSigner::from_secret("0123456789abcdef");
        let key = HolderKey::parse(&signer.public_key()).expect("key");
        let proof = signer.prove("blog.a.test", "eu-1", 42, TunnelKind::Http);
        assert_eq!(proof.len(), PROOF_LEN);
        assert!(key.verifies(&proof, "blog.a.test", "eu-1", 42, TunnelKind::Http));
        // Anything else signed is refused: another name, edge, tunnel or kind.
        assert!(!key.verifies(&proof, "shop.a.test", "eu-1", 42, TunnelKind::Http));
        assert!(!key.verifies(&proof, "blog.a.test", "us-1", 42, TunnelKind::Http));
        assert!(!key.verifies(&proof, "blog.a.test", "eu-1", 43, TunnelKind::Http));
        assert!(!key.verifies(&proof, "blog.a.test", "eu-1", 42, TunnelKind::Tls));
        // Another secret, another key.
        let other = HolderSigner::from_secret("another-secret-0123");
        let other_key = HolderKey::parse(&other.public_key()).expect("key");
        assert_ne!(other_key, key);
        assert!(!other_key.verifies(&proof, "blog.a.test", "eu-1", 42, TunnelKind::Http));
        // The same secret, the same key (control restarts keep proofs valid).
        assert_eq!(
            HolderSigner::from_secret("0123456789abcdef").public_key(),
            signer.public_key()
        );
    }

    #[test]
    fn damaged_proofs_and_keys_are_refused() {
        let signer = HolderSigner::from_secret("0123456789abcdef");
        let key = HolderKey::parse(&signer.public_key()).expect("key");
        let proof = signer.prove("blog.a.test", "eu-1", 42, TunnelKind::Http);
        let mut flipped = proof.clone().into_bytes();
        flipped[10] = if flipped[10] == b'A' { b'B' } else { b'A' };
        let flipped = String::from_utf8(flipped).expect("ascii");
        assert!(!key.verifies(&flipped, "blog.a.test", "eu-1", 42, TunnelKind::Http));
        assert!(!key.verifies(&proof[1..], "blog.a.test", "eu-1", 42, TunnelKind::Http));
        assert!(!key.verifies(
            &"!".repeat(PROOF_LEN),
            "blog.a.test",
            "eu-1",
            42,
            TunnelKind::Http
        ));
        assert!(HolderKey::parse("not base64!").is_err());
        let short = HolderKey::parse(&STANDARD.encode([1u8; 16])).unwrap_err();
        assert!(short.contains("32-byte"), "{short}");
    }
}
