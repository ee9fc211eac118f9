//! Bearer keys: made random, stored as SHA-256 hashes, compared in constant time.
//!
//! A presented key is hashed and compared with every configured hash, without stopping at the
//! first match, so the time taken says nothing about which key (if any) was close. The key
//! itself is never stored or logged; the key's `name` is what logs show.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::config::{Key, Role};
use crate::ids::TenantId;

/// Who is asking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub role: Role,
    /// The key's label, for logs.
    pub name: String,
}

/// Why a request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// No key, or a key that is not configured: 401.
    Unauthenticated,
    /// A tenant key asking for an admin endpoint or another tenant: 403.
    Forbidden,
    /// An admin key on a per-tenant endpoint without `?tenant=`: 400.
    NeedsTenant,
}

/// The configured keys.
#[derive(Debug, Clone, Default)]
pub struct Keys(Vec<Key>);

impl Keys {
    pub fn new(keys: Vec<Key>) -> Keys {
        Keys(keys)
    }

    /// The caller behind an `Authorization` header value (`Bearer <key>`).
    pub fn authenticate(&self, header: Option<&str>) -> Result<Caller, Denied> {
        let token = header
            .and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(Denied::Unauthenticated)?;
        let presented = hash(token);
        let mut found: Option<&Key> = None;
        for key in &self.0 {
            if bool::from(key.hash.ct_eq(&presented)) {
                found = Some(key);
            }
        }
        found.map(|k| Caller { role: k.role.clone(), name: k.name.clone() }).ok_or(Denied::Unauthenticated)
    }
}

impl Caller {
    /// The tenant a request reads: a tenant key's own (asking for another is refused), or the
    /// one an admin names (an admin must name one).
    pub fn tenant(&self, asked: Option<&str>) -> Result<TenantId, Denied> {
        let asked = asked.map(str::trim).filter(|t| !t.is_empty());
        match (&self.role, asked) {
            (Role::Tenant(own), None) => Ok(own.clone()),
            (Role::Tenant(own), Some(t)) if t == own.as_str() => Ok(own.clone()),
            (Role::Tenant(_), Some(_)) => Err(Denied::Forbidden),
            (Role::Admin, Some(t)) => TenantId::new(t).ok_or(Denied::NeedsTenant),
            (Role::Admin, None) => Err(Denied::NeedsTenant),
        }
    }

    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }
}

/// SHA-256 of a key.
pub fn hash(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// The config form of a key's hash: `sha256:<64 hex digits>`.
pub fn hash_text(key: &str) -> String {
    format!("sha256:{}", hex(&hash(key)))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A new random key: `tly_` and 64 hex digits (256 bits from the operating system).
pub fn new_key() -> std::io::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(format!("tly_{}", hex(&bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Keys {
        Keys::new(vec![
            Key { hash: hash("admin-secret"), role: Role::Admin, name: "ops".into() },
            Key { hash: hash("a-secret"), role: Role::Tenant(TenantId::new("a").unwrap()), name: "a-app".into() },
        ])
    }

    #[test]
    fn keys_authenticate_by_hash_only() {
        let k = keys();
        assert_eq!(k.authenticate(Some("Bearer a-secret")).unwrap().name, "a-app");
        assert!(k.authenticate(Some("Bearer admin-secret")).unwrap().is_admin());
        for bad in [None, Some(""), Some("Bearer "), Some("a-secret"), Some("Bearer a-secreT"), Some("Basic a-secret")]
        {
            assert_eq!(k.authenticate(bad), Err(Denied::Unauthenticated), "{bad:?}");
        }
        // The configured hash itself is not a key.
        assert_eq!(k.authenticate(Some(&format!("Bearer {}", hash_text("a-secret")))), Err(Denied::Unauthenticated));
    }

    #[test]
    fn a_tenant_key_reads_only_its_tenant() {
        let k = keys();
        let a = k.authenticate(Some("Bearer a-secret")).unwrap();
        assert_eq!(a.tenant(None).unwrap().as_str(), "a");
        assert_eq!(a.tenant(Some("a")).unwrap().as_str(), "a");
        assert_eq!(a.tenant(Some("b")), Err(Denied::Forbidden));
        assert_eq!(a.tenant(Some(" b")), Err(Denied::Forbidden));
        let admin = k.authenticate(Some("Bearer admin-secret")).unwrap();
        assert_eq!(admin.tenant(Some("b")).unwrap().as_str(), "b");
        assert_eq!(admin.tenant(None), Err(Denied::NeedsTenant));
    }

    #[test]
    fn new_keys_are_random_and_hash_to_the_config_form() {
        let (x, y) = (new_key().unwrap(), new_key().unwrap());
        assert_ne!(x, y);
        assert_eq!(x.len(), 4 + 64);
        let h = hash_text("test");
        assert_eq!(h, "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08");
    }
}
