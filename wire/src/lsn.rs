//! PostgreSQL WAL positions (`X/Y`), as control reads them on the primary and pdns-backend
//! reads them on a replica: the `/v1/wait` long-poll compares the two.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;
use thiserror::Error;

/// A WAL position: a byte offset in the WAL, printed by PostgreSQL as two hex halves `X/Y`.
/// Ordered like the WAL: a later position compares greater.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

/// Why a text is not an LSN.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{0:?} is not an LSN such as 0/3000060")]
pub struct LsnError(pub String);

impl Lsn {
    /// The byte offset.
    pub fn as_u64(self) -> u64 {
        self.0
    }
}

impl FromStr for Lsn {
    type Err = LsnError;

    /// Parses `X/Y` with one to eight hex digits a half, as `pg_lsn` prints it.
    fn from_str(s: &str) -> Result<Lsn, LsnError> {
        let bad = || LsnError(s.chars().take(40).collect());
        let (hi, lo) = s.trim().split_once('/').ok_or_else(bad)?;
        // Eight digits a half keeps the value inside 64 bits; from_str_radix alone would
        // accept a leading '+'.
        let half = |h: &str| {
            if h.is_empty() || h.len() > 8 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            u64::from_str_radix(h, 16).ok()
        };
        let (hi, lo) = (half(hi).ok_or_else(bad)?, half(lo).ok_or_else(bad)?);
        Ok(Lsn((hi << 32) | lo))
    }
}

impl fmt::Display for Lsn {
    /// Prints as PostgreSQL does: upper-case hex halves without leading zeros.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

// On the wire an LSN is its text, as PostgreSQL prints it, so that JSON stays readable and
// matches what an operator sees in `pg_stat_replication`.
impl Serialize for Lsn {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Lsn {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Lsn, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_like_postgres() {
        assert_eq!("0/3000060".parse::<Lsn>(), Ok(Lsn(0x3000060)));
        assert_eq!(
            "16/B374D848".parse::<Lsn>(),
            Ok(Lsn((0x16 << 32) | 0xB374D848))
        );
        assert_eq!(Lsn(0x3000060).to_string(), "0/3000060");
        assert_eq!(Lsn(u64::MAX).to_string().parse::<Lsn>(), Ok(Lsn(u64::MAX)));
    }

    #[test]
    fn refuses_what_is_not_an_lsn() {
        for s in [
            "",
            "0",
            "/1",
            "1/",
            "x/1",
            "123456789/0",
            "1/2/3",
            "+1/2",
            "-1/2",
        ] {
            assert!(s.parse::<Lsn>().is_err(), "{s}");
        }
    }

    #[test]
    fn orders_like_the_wal() {
        let a: Lsn = "0/FFFFFFFF".parse().unwrap();
        let b: Lsn = "1/0".parse().unwrap();
        assert!(a < b);
        assert!("0/3000060".parse::<Lsn>().unwrap() > "0/300005F".parse().unwrap());
    }

    #[test]
    fn json_is_the_text() {
        let l = Lsn(0x3000060);
        assert_eq!(serde_json::to_string(&l).unwrap(), r#""0/3000060""#);
        assert_eq!(serde_json::from_str::<Lsn>(r#""0/3000060""#).unwrap(), l);
        assert!(serde_json::from_str::<Lsn>(r#""nope""#).is_err());
    }
}
