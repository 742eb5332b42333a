//! Names users type: owners, adapter names, aliases; and token scopes.

use std::fmt;

use crate::StoreError;

/// Longest owner or adapter name.
pub const MAX_NAME_LEN: usize = 96;

/// Checks `[a-z0-9][a-z0-9._-]{0,95}` (after lower-casing) and returns the canonical form.
pub fn validate_name(kind: &str, raw: &str) -> Result<String, StoreError> {
    let lower = raw.to_ascii_lowercase();
    let ok = !lower.is_empty()
        && lower.len() <= MAX_NAME_LEN
        && lower
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && lower
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if ok {
        Ok(lower)
    } else {
        Err(StoreError::Invalid(format!(
            "{kind} {raw:?} is not valid: use 1 to {MAX_NAME_LEN} characters of a-z, 0-9, '.', '_' \
             or '-', starting with a letter or digit"
        )))
    }
}

/// Owner and user names the web pages' routes use (`/{owner}/{name}` shares the root with them),
/// so no adapter can live there.
pub const RESERVED_OWNERS: &[&str] = &[
    "api",
    "docs",
    "static",
    "metrics",
    "healthz",
    "jobs",
    "signin",
    "signout",
    "merge",
    "new",
    "settings",
    "search",
    "admin",
    "login",
    "logout",
    "favicon.ico",
    "robots.txt",
];

/// [`validate_name`] for owners and users, which also refuses the [`RESERVED_OWNERS`].
pub fn validate_owner(kind: &str, raw: &str) -> Result<String, StoreError> {
    let name = validate_name(kind, raw)?;
    if RESERVED_OWNERS.contains(&name.as_str()) {
        return Err(StoreError::Invalid(format!(
            "{kind} {raw:?} is reserved: the web pages use /{name}"
        )));
    }
    Ok(name)
}

/// `owner/name`, both canonical (lower case).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RepoId {
    pub owner: String,
    pub name: String,
}

impl RepoId {
    pub fn parse(owner: &str, name: &str) -> Result<Self, StoreError> {
        Ok(Self {
            owner: validate_owner("owner", owner)?,
            name: validate_name("adapter name", name)?,
        })
    }
}

impl fmt::Display for RepoId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.owner, self.name)
    }
}

/// `owner/name`, checked as [`RepoId::parse`] checks the two parts.
impl std::str::FromStr for RepoId {
    type Err = StoreError;
    fn from_str(raw: &str) -> Result<Self, StoreError> {
        let (owner, name) = raw
            .split_once('/')
            .ok_or_else(|| StoreError::Invalid(format!("{raw:?} is not `owner/name`")))?;
        Self::parse(owner, name)
    }
}

/// As the string `owner/name`.
impl serde::Serialize for RepoId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// From the string `owner/name` ([`FromStr`](std::str::FromStr)).
impl<'de> serde::Deserialize<'de> for RepoId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        raw.parse().map_err(serde::de::Error::custom)
    }
}

/// What a token may do. Ordered: each scope includes the ones before it.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Read,
    Write,
    Admin,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::Admin => "admin",
        }
    }
}

impl std::str::FromStr for Scope {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "read" => Ok(Scope::Read),
            "write" => Ok(Scope::Write),
            "admin" => Ok(Scope::Admin),
            other => Err(StoreError::Invalid(format!(
                "scope {other:?} is not one of read, write, admin"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_routes_are_reserved_owners() {
        for owner in ["jobs", "Static", "api", "signin"] {
            let e = RepoId::parse(owner, "x").expect_err("refused").to_string();
            assert!(e.contains("reserved"), "{owner}: {e}");
        }
        assert!(
            RepoId::parse("alice", "jobs").is_ok(),
            "adapter names are not reserved"
        );
    }

    #[test]
    fn repo_ids_parse_from_owner_slash_name() {
        let repo: RepoId = "Alice/Math-v2".parse().expect("parses");
        assert_eq!(
            (repo.owner.as_str(), repo.name.as_str()),
            ("alice", "math-v2")
        );
        for bad in [
            "alice",
            "alice/",
            "/math",
            "alice/math/x",
            "jobs/x",
            "a b/c",
        ] {
            assert!(bad.parse::<RepoId>().is_err(), "{bad:?} accepted");
        }
        let json: RepoId = serde_json::from_str("\"bob/b\"").expect("deserializes");
        assert_eq!(
            serde_json::to_string(&json).expect("serializes"),
            "\"bob/b\""
        );
        let e = serde_json::from_str::<RepoId>("\"bob\"").expect_err("refused");
        assert!(e.to_string().contains("is not `owner/name`"), "{e}");
    }

    #[test]
    fn names_are_lower_cased_and_checked() {
        assert_eq!(
            validate_name("owner", "Alice").ok().as_deref(),
            Some("alice")
        );
        assert!(validate_name("owner", "a.b_c-9").is_ok());
        for bad in ["", "-a", ".a", "a/b", "a b", "ä", &"a".repeat(97)] {
            assert!(validate_name("owner", bad).is_err(), "{bad:?} accepted");
        }
    }
}
