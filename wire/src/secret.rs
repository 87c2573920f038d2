//! Comparing shared secrets (bearer secrets, visitor basic-auth and key options).

/// Whether `given` equals `expected`, in time that does not depend on where they differ, so
/// that response time does not leak a secret's prefix. (The length is not hidden: secrets
/// are long random strings, their length is no secret.)
pub fn constant_time_eq(given: &[u8], expected: &[u8]) -> bool {
    if given.len() != expected.len() {
        return false;
    }
    given
        .iter()
        .zip(expected)
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// The secret of an `Authorization: Bearer <secret>` header value, if it is one. The scheme
/// is matched in any case (`bearer`, `BEARER`: RFC 9110 §11.1) and may be followed by more
/// than one space (§11.4: `1*SP`).
pub fn bearer_secret(authorization: &str) -> Option<&str> {
    let (scheme, secret) = authorization.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| secret.trim_start_matches(' '))
}

/// Whether an `Authorization` header value carries `secret` as its bearer secret. An empty
/// secret never matches, so that an unset secret does not open the door.
pub fn bearer_matches(authorization: Option<&str>, secret: &str) -> bool {
    let given = authorization.and_then(bearer_secret).unwrap_or("");
    !given.is_empty() && constant_time_eq(given.as_bytes(), secret.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_exactly() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn bearer_header_must_carry_the_secret() {
        assert!(bearer_matches(Some("Bearer s3cret"), "s3cret"));
        assert!(!bearer_matches(Some("Bearer s3cre"), "s3cret"));
        assert!(!bearer_matches(Some("Basic s3cret"), "s3cret"));
        assert!(!bearer_matches(None, "s3cret"));
        assert!(!bearer_matches(Some("Bearer "), ""));
        assert!(!bearer_matches(Some("Bearers3cret"), "s3cret"));
        assert!(!bearer_matches(Some("Bearer s3cret "), "s3cret"));
    }

    #[test]
    fn the_bearer_scheme_is_matched_in_any_case() {
        for header in [
            "bearer s3cret",
            "BEARER s3cret",
            "BeArEr s3cret",
            "Bearer   s3cret",
        ] {
            assert!(bearer_matches(Some(header), "s3cret"), "{header}");
            assert_eq!(bearer_secret(header), Some("s3cret"), "{header}");
        }
        assert_eq!(bearer_secret("Basic s3cret"), None);
        assert_eq!(bearer_secret("bearer"), None);
    }
}
