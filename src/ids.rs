//! Identifiers: tenants, cost resources and what a `modelId` refers to, request-id dedup keys,
//! and UTC hours.

use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};

/// The reserved tenant for records no rule attributes.
pub const UNATTRIBUTED: &str = "_unattributed";

/// A tenant id. Never empty; cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TenantId(Arc<str>);

impl TenantId {
    /// A tenant id from a non-blank string (surrounding white space removed).
    pub fn new(s: &str) -> Option<TenantId> {
        let t = s.trim();
        (!t.is_empty()).then(|| TenantId(Arc::from(t)))
    }

    pub fn unattributed() -> TenantId {
        TenantId(Arc::from(UNATTRIBUTED))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Serialize for TenantId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for TenantId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        TenantId::new(&s).ok_or_else(|| serde::de::Error::custom("a tenant id cannot be empty"))
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The longest tenant id a config may name: it becomes a file name (one invoice per tenant).
pub const MAX_TENANT_BYTES: usize = 128;

/// Why a tenant id written in the config cannot be one, if it cannot: too long to be a file
/// name, or holding control characters or path separators.
pub fn tenant_id_problem(id: &str) -> Option<String> {
    let t = id.trim();
    if t.len() > MAX_TENANT_BYTES {
        return Some(format!("a tenant id is at most {MAX_TENANT_BYTES} bytes, this one is {}", t.len()));
    }
    if t.chars().any(|c| c.is_control() || matches!(c, '/' | '\\')) || t == "." || t == ".." {
        return Some(format!("a tenant id cannot hold control characters, `/` or `\\`, or be `.` or `..`: {t:?}"));
    }
    None
}

/// System cross-region inference profile prefixes (`us.anthropic…`).
const PROFILE_PREFIXES: [&str; 8] = ["us", "eu", "apac", "global", "jp", "au", "ca", "us-gov"];

/// What a logged `modelId` names.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// A base model, called directly (bare id or `foundation-model/` ARN).
    Model { model: String },
    /// A system cross-region profile (`us.model` id or `inference-profile/` ARN).
    SystemProfile { prefix: String, model: String },
    /// An application inference profile; the model behind it comes from the registry.
    ApplicationProfile { id: String },
    /// Anything else (provisioned or custom model ARNs, unknown shapes): priced by its id.
    Other { id: String },
}

impl Target {
    /// Reads a `modelId` as logged in any of its forms.
    pub fn parse(model_id: &str) -> Target {
        if let Some(rest) = model_id.strip_prefix("arn:") {
            // arn:partition:bedrock:region:account:resource-type/resource-id
            let resource = rest.splitn(5, ':').nth(4).unwrap_or("");
            let (kind, id) = resource.split_once('/').unwrap_or(("", resource));
            return match kind {
                "foundation-model" => Target::Model { model: id.to_string() },
                "inference-profile" => Target::from_profile_id(id),
                "application-inference-profile" => Target::ApplicationProfile { id: id.to_string() },
                _ => Target::Other { id: model_id.to_string() },
            };
        }
        Target::from_profile_id(model_id)
    }

    fn from_profile_id(id: &str) -> Target {
        if let Some((prefix, model)) = id.split_once('.') {
            if PROFILE_PREFIXES.contains(&prefix) && model.contains('.') {
                return Target::SystemProfile { prefix: prefix.to_string(), model: model.to_string() };
            }
        }
        Target::Model { model: id.to_string() }
    }

    /// The base model id, when the `modelId` itself says it.
    pub fn model(&self) -> Option<&str> {
        match self {
            Target::Model { model } | Target::SystemProfile { model, .. } => Some(model),
            Target::ApplicationProfile { .. } | Target::Other { .. } => None,
        }
    }
}

/// The key under which a `requestId` is remembered for deduplication: 128 bits, fixed size,
/// no allocation.
///
/// Bedrock request ids are UUIDs; a canonical UUID (either case) is kept as its own 128 bits,
/// so two different UUIDs never share a key. Any other id is hashed with FNV-1a-128 over a
/// marker byte and its bytes; the chance that two of the ids inside one dedup window collide
/// is about n²/2¹²⁹ (for a billion ids, below 10⁻²⁰). Request ids come from AWS, not from
/// tenants, so nobody is in a position to craft a collision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DedupKey(u128);

impl DedupKey {
    pub fn from_request_id(id: &str) -> DedupKey {
        match parse_uuid(id) {
            Some(bytes) => DedupKey(u128::from_be_bytes(bytes)),
            None => DedupKey(fnv1a_128(b"#", id.as_bytes())),
        }
    }

    pub fn as_u128(self) -> u128 {
        self.0
    }

    pub fn from_u128(v: u128) -> DedupKey {
        DedupKey(v)
    }

    /// The key as 32 lowercase hex digits (for stores that key by string).
    pub fn to_hex(self) -> String {
        format!("{:032x}", self.0)
    }
}

/// Each byte's value as a hex digit (either case), or 0x80 for a byte that is not one.
const HEX_VALUE: [u8; 256] = {
    let mut t = [0x80u8; 256];
    let mut i = 0;
    while i < 10 {
        t[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        t[b'a' as usize + i] = 10 + i as u8;
        t[b'A' as usize + i] = 10 + i as u8;
        i += 1;
    }
    t
};

/// Where the first digit of each of a UUID's 16 bytes is in its 36-character spelling.
const UUID_BYTE_AT: [usize; 16] = [0, 2, 4, 6, 9, 11, 14, 16, 19, 21, 24, 26, 28, 30, 32, 34];

/// The 16 bytes of a UUID spelled `8-4-4-4-12` in hex digits of either case.
fn parse_uuid(s: &str) -> Option<[u8; 16]> {
    let b: &[u8; 36] = s.as_bytes().try_into().ok()?;
    if b[8] != b'-' || b[13] != b'-' || b[18] != b'-' || b[23] != b'-' {
        return None;
    }
    let mut out = [0u8; 16];
    let mut invalid = 0u8;
    for (byte, &at) in out.iter_mut().zip(&UUID_BYTE_AT) {
        let (hi, lo) = (HEX_VALUE[usize::from(b[at])], HEX_VALUE[usize::from(b[at + 1])]);
        invalid |= hi | lo;
        *byte = (hi << 4) | lo;
    }
    (invalid & 0x80 == 0).then_some(out)
}

/// FNV-1a, 128-bit: stable across Rust versions, unlike `std`'s hasher.
fn fnv1a_128(marker: &[u8], bytes: &[u8]) -> u128 {
    const OFFSET: u128 = 0x6c62272e07bb014262b821756295c58d;
    const PRIME: u128 = 0x0000000001000000000000000000013B;
    marker.iter().chain(bytes).fold(OFFSET, |h, &b| (h ^ u128::from(b)).wrapping_mul(PRIME))
}

/// Seconds since the Unix epoch, UTC.
pub type EpochSeconds = i64;

/// The range of record times tally accepts: 2000-01-01 up to (not including) 2200-01-01 UTC.
/// Anything outside is a corrupt timestamp, not usage (and keeps hour numbers in 21 bits).
pub const TIME_RANGE: std::ops::Range<EpochSeconds> = 946_684_800..7_258_118_400;

/// Parses a record `timestamp`: ISO-8601 UTC with `Z` or an offset, optional fraction.
/// Times outside [`TIME_RANGE`] are refused.
pub fn parse_timestamp(s: &str) -> Option<EpochSeconds> {
    parse_any_timestamp(s).filter(|t| TIME_RANGE.contains(t))
}

fn parse_any_timestamp(s: &str) -> Option<EpochSeconds> {
    let b = s.as_bytes();
    // The common case, `2025-08-22T09:41:06Z`, without the general parser.
    if b.len() == 20 && b[4] == b'-' && b[7] == b'-' && b[10] == b'T' && b[13] == b':' && b[16] == b':' && b[19] == b'Z'
    {
        let num = |r: std::ops::Range<usize>| -> Option<u32> {
            let mut v = 0u32;
            for &c in &b[r] {
                if !c.is_ascii_digit() {
                    return None;
                }
                v = v * 10 + u32::from(c - b'0');
            }
            Some(v)
        };
        let date = chrono::NaiveDate::from_ymd_opt(num(0..4)? as i32, num(5..7)?, num(8..10)?)?;
        let time = chrono::NaiveTime::from_hms_opt(num(11..13)?, num(14..16)?, num(17..19)?)?;
        return Some(NaiveDateTime::new(date, time).and_utc().timestamp());
    }
    DateTime::parse_from_rfc3339(s).ok().map(|t| t.timestamp())
}

/// The start of the UTC hour holding `t`.
pub fn hour_of(t: EpochSeconds) -> EpochSeconds {
    t.div_euclid(3600) * 3600
}

/// `YYYY-MM-DD` of a UTC instant.
pub fn day_of(t: EpochSeconds) -> String {
    utc(t).format("%Y-%m-%d").to_string()
}

/// `YYYY-MM` of a UTC instant.
pub fn month_of(t: EpochSeconds) -> String {
    utc(t).format("%Y-%m").to_string()
}

/// `YYYY-MM-DDTHH:00:00Z` of an hour start.
pub fn hour_label(t: EpochSeconds) -> String {
    utc(t).format("%Y-%m-%dT%H:00:00Z").to_string()
}

pub fn utc(t: EpochSeconds) -> DateTime<Utc> {
    Utc.timestamp_opt(t, 0).single().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_model_id_form_is_understood() {
        let check = |id: &str, want: Target| assert_eq!(Target::parse(id), want, "{id}");
        let model = |m: &str| Target::Model { model: m.into() };
        let profile = |p: &str, m: &str| Target::SystemProfile { prefix: p.into(), model: m.into() };
        check("anthropic.claude-3-haiku-20240307-v1:0", model("anthropic.claude-3-haiku-20240307-v1:0"));
        check("amazon.titan-embed-text-v1", model("amazon.titan-embed-text-v1"));
        check("apac.amazon.nova-micro-v1:0", profile("apac", "amazon.nova-micro-v1:0"));
        check(
            "arn:aws:bedrock:us-east-1:111122223333:inference-profile/us.anthropic.claude-sonnet-4-20250514-v1:0",
            profile("us", "anthropic.claude-sonnet-4-20250514-v1:0"),
        );
        check(
            "arn:aws:bedrock:us-west-2:219119460318:application-inference-profile/blkjc8qmk04r",
            Target::ApplicationProfile { id: "blkjc8qmk04r".into() },
        );
        check(
            "arn:aws:bedrock:us-east-1::foundation-model/anthropic.claude-3-haiku-20240307-v1:0",
            model("anthropic.claude-3-haiku-20240307-v1:0"),
        );
        check(
            "arn:aws:bedrock:us-east-1:111122223333:provisioned-model/abc123",
            Target::Other { id: "arn:aws:bedrock:us-east-1:111122223333:provisioned-model/abc123".into() },
        );
    }

    proptest::proptest! {
        /// The table-driven UUID parser reads every 36-byte text as a digit-by-digit reading
        /// would: the same 16 bytes for any mix of cases, nothing for any other character.
        #[test]
        fn uuids_parse_as_read_digit_by_digit(s in "[0-9a-fA-Fg ]{8}[-_][0-9a-fA-F]{4}-[0-9a-fA-Fx]{4}-[-0-9a-fA-F]{4}-[0-9a-fA-FZ]{11}[0-9a-fA-Fé]") {
            let reference = || -> Option<[u8; 16]> {
                let b = s.as_bytes();
                if b.len() != 36 || [8, 13, 18, 23].iter().any(|&i| b[i] != b'-') {
                    return None;
                }
                let digits: Vec<u8> = s.chars().filter(|&c| c != '-').map(|c| c.to_digit(16).map(|d| d as u8)).collect::<Option<_>>()?;
                (digits.len() == 32).then(|| std::array::from_fn(|i| digits[2 * i] << 4 | digits[2 * i + 1]))
            };
            proptest::prop_assert_eq!(parse_uuid(&s), reference());
        }
    }

    #[test]
    fn dedup_keys_are_exact_for_uuids_and_short_ids() {
        let a = DedupKey::from_request_id("7ee514f3-9eff-467c-af75-8fd564ce58e5");
        let b = DedupKey::from_request_id("7EE514F3-9EFF-467C-AF75-8FD564CE58E5");
        assert_eq!(a, b);
        assert_eq!(a.to_hex(), "7ee514f39eff467caf758fd564ce58e5");
        assert_ne!(DedupKey::from_request_id("<REQUEST_ID_1>"), DedupKey::from_request_id("<REQUEST_ID_2>"));
        // A non-UUID id is hashed, so its key is not the UUID that its hex digits spell.
        assert_ne!(
            DedupKey::from_request_id("7ee514f39eff467caf758fd564ce58e5"),
            DedupKey::from_request_id("7ee514f3-9eff-467c-af75-8fd564ce58e5")
        );
        let long = "x".repeat(200);
        assert_ne!(DedupKey::from_request_id(&long), DedupKey::from_request_id(&"x".repeat(201)));
    }

    #[test]
    fn timestamps_parse_in_both_paths() {
        assert_eq!(parse_timestamp("2025-08-22T09:41:06Z"), Some(1755855666));
        assert_eq!(parse_timestamp("2025-08-22T09:41:06.250Z"), Some(1755855666));
        assert_eq!(parse_timestamp("2025-08-22T11:41:06+02:00"), Some(1755855666));
        assert_eq!(parse_timestamp("2025-02-30T00:00:00Z"), None);
        assert_eq!(parse_timestamp("yesterday"), None);
        assert_eq!(hour_label(hour_of(1755855666)), "2025-08-22T09:00:00Z");
    }
}
