//! The settings of sign-in through an authenticating proxy (docs/sso.md): the checked
//! `--auth-proxy-*` flags (the user, email and groups headers, the trusted addresses, the group
//! map) and this process's memory of recent proxy sign-ins (warnings logged once, the `signin`
//! audit interval, organisations of the map found missing). The web pages read a request
//! against these settings (`http/web/proxy_auth.rs`); nothing here looks at a request.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use actix_web::http::header::HeaderName;
use quiver_store::OrgRole;
use quiver_store::names::validate_owner;

/// The token id of a proxy-signed-in principal: audit entries of their changes show it.
pub const PROXY_TOKEN_ID: &str = "proxy";
/// Longest user header value read (names are at most 96 characters).
pub const MAX_USER_HEADER: usize = 256;
/// Longest email header value kept.
pub const MAX_EMAIL_HEADER: usize = 320;
/// Longest groups header (all its lines together); a longer one is not used at all.
pub const MAX_GROUPS_HEADER: usize = 16 * 1024;
/// Most groups read from one request; more and the groups are not used at all.
pub const MAX_GROUPS: usize = 512;
/// Longest group name (in the header and in the map).
pub const MAX_GROUP_LEN: usize = 256;
/// Most entries in `--auth-proxy-group-map`, and in `--auth-proxy-trusted`.
pub const MAX_MAP_ENTRIES: usize = 256;
/// A user's `signin` audit entry is written when this process first sees them, then at most
/// once per this interval.
pub const SIGNIN_AUDIT_INTERVAL: Duration = Duration::from_secs(12 * 60 * 60);
/// Users remembered for the interval above (then the oldest half is forgotten).
pub const MAX_REMEMBERED: usize = 10_000;
/// How long a missing organisation of the map is not asked about again.
const MISSING_ORG_RETRY: Duration = Duration::from_secs(60);

/// A refused `--auth-proxy-*` setting, with what to do about it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ProxyAuthError(String);

fn refuse<T>(message: impl Into<String>) -> Result<T, ProxyAuthError> {
    Err(ProxyAuthError(message.into()))
}

/// An IPv4 or IPv6 network (`10.0.0.0/8`, `::1/128`); a bare address is its own /32 or /128.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Whether `ip` is inside; an IPv4-mapped IPv6 address (`::ffff:10.0.0.1`, what a
    /// dual-stack listener reports) counts as its IPv4 address.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = mask32(self.prefix);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = mask128(self.prefix);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

fn mask32(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

fn mask128(prefix: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
}

impl FromStr for Cidr {
    type Err = ProxyAuthError;

    fn from_str(raw: &str) -> Result<Self, ProxyAuthError> {
        let s = raw.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let Ok(addr) = addr.parse::<IpAddr>() else {
            return refuse(format!(
                "--auth-proxy-trusted: {raw:?} is not an IP address or CIDR (e.g. 10.0.0.5, \
                 10.0.0.0/8, fd00::/8)"
            ));
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= max && !p.starts_with('+') => n,
                _ => {
                    return refuse(format!(
                        "--auth-proxy-trusted: {raw:?} has a bad prefix length (0 to {max})"
                    ));
                }
            },
        };
        if prefix == 0 {
            return refuse(format!(
                "--auth-proxy-trusted: {raw:?} trusts every address, so anyone could name \
                 themselves any user; list the proxy's own addresses"
            ));
        }
        let cidr = Cidr { addr, prefix };
        let host_bits = match addr {
            IpAddr::V4(a) => u32::from(a) & !mask32(prefix) != 0,
            IpAddr::V6(a) => u128::from(a) & !mask128(prefix) != 0,
        };
        if host_bits {
            return refuse(format!(
                "--auth-proxy-trusted: {raw:?} has bits set past its /{prefix}; write the \
                 network's first address"
            ));
        }
        Ok(cidr)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// One `GROUP=ORG:ROLE` of the group map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupRule {
    pub group: String,
    pub org: String,
    pub role: OrgRole,
}

/// A group name as the proxy sends it: 1 to 256 characters, no commas (the list separator),
/// no control characters, no surrounding spaces.
fn valid_group(g: &str) -> bool {
    !g.is_empty()
        && g.len() <= MAX_GROUP_LEN
        && g.trim() == g
        && !g.contains(',')
        && !g.chars().any(char::is_control)
}

/// Parses `ml-team=acme:write,ml-leads=acme:admin` (spaces around entries are ignored; a
/// group may contain `=` and `:`, so the last `=` and the last `:` split an entry).
pub fn parse_group_map(raw: &str) -> Result<Vec<GroupRule>, ProxyAuthError> {
    let mut rules: Vec<GroupRule> = Vec::new();
    for entry in raw.split(',').map(str::trim) {
        if entry.is_empty() {
            continue;
        }
        let shape = || {
            format!(
                "--auth-proxy-group-map: {entry:?} is not GROUP=ORG:ROLE (e.g. ml-team=acme:write)"
            )
        };
        let Some((group, target)) = entry.rsplit_once('=') else {
            return refuse(shape());
        };
        let Some((org, role)) = target.rsplit_once(':') else {
            return refuse(shape());
        };
        let group = group.trim();
        if !valid_group(group) {
            return refuse(format!(
                "--auth-proxy-group-map: the group {group:?} is not valid (1 to {MAX_GROUP_LEN} \
                 characters, no commas or control characters)"
            ));
        }
        let org = validate_owner("organisation name", org.trim())
            .map_err(|e| ProxyAuthError(format!("--auth-proxy-group-map: {e}")))?;
        let role = OrgRole::from_str(role.trim()).map_err(|_| {
            ProxyAuthError(format!(
                "--auth-proxy-group-map: the role {:?} in {entry:?} is not one of read, write, admin",
                role.trim()
            ))
        })?;
        if rules.iter().any(|r| r.group == group && r.org == org) {
            return refuse(format!(
                "--auth-proxy-group-map: the group {group:?} is mapped to {org} twice"
            ));
        }
        rules.push(GroupRule {
            group: group.to_string(),
            org,
            role,
        });
        if rules.len() > MAX_MAP_ENTRIES {
            return refuse(format!(
                "--auth-proxy-group-map: at most {MAX_MAP_ENTRIES} entries"
            ));
        }
    }
    if rules.is_empty() {
        return refuse("--auth-proxy-group-map is empty");
    }
    Ok(rules)
}

fn header_name(flag: &str, raw: &str) -> Result<HeaderName, ProxyAuthError> {
    let name = HeaderName::from_str(raw.trim())
        .map_err(|_| ProxyAuthError(format!("{flag}: {raw:?} is not an HTTP header name")))?;
    const OFF_LIMITS: &[&str] = &[
        "authorization",
        "cookie",
        "host",
        "content-length",
        "content-type",
        "transfer-encoding",
        "connection",
        "x-forwarded-for",
    ];
    if OFF_LIMITS.contains(&name.as_str()) {
        return refuse(format!(
            "{flag}: {raw:?} is a standard header, not one an authenticating proxy sets for a user"
        ));
    }
    Ok(name)
}

/// The checked `--auth-proxy-*` settings and this process's memory of recent proxy sign-ins.
pub struct ProxyAuth {
    header: HeaderName,
    email_header: Option<HeaderName>,
    groups_header: Option<HeaderName>,
    trusted: Vec<Cidr>,
    rules: Vec<GroupRule>,
    /// The organisations the map names, each once.
    mapped_orgs: Vec<String>,
    /// When each user's last `signin` entry was written by this process.
    signins: Mutex<HashMap<String, Instant>>,
    /// Organisations of the map found missing, and when.
    missing_orgs: Mutex<HashMap<String, Instant>>,
    /// Warnings already logged (bounded), so a misconfiguration logs once, not per request.
    warned: Mutex<HashSet<String>>,
}

impl fmt::Debug for ProxyAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyAuth")
            .field("header", &self.header)
            .field("email_header", &self.email_header)
            .field("groups_header", &self.groups_header)
            .field(
                "trusted",
                &self.trusted.iter().map(Cidr::to_string).collect::<Vec<_>>(),
            )
            .field("rules", &self.rules)
            .finish_non_exhaustive()
    }
}

impl ProxyAuth {
    /// Checks the flags: `None` when proxy sign-in is off (no header). A header without a
    /// trusted list, or any other flag without the header, is refused, as is anything
    /// malformed.
    pub fn from_flags(
        header: Option<&str>,
        trusted: &[String],
        email_header: Option<&str>,
        groups_header: Option<&str>,
        group_map: Option<&str>,
    ) -> Result<Option<Self>, ProxyAuthError> {
        let trusted: Vec<&String> = trusted.iter().filter(|t| !t.trim().is_empty()).collect();
        let Some(header) = header.filter(|h| !h.trim().is_empty()) else {
            if !trusted.is_empty()
                || email_header.is_some()
                || groups_header.is_some()
                || group_map.is_some()
            {
                return refuse(
                    "--auth-proxy-trusted, --auth-proxy-email-header, --auth-proxy-groups-header \
                     and --auth-proxy-group-map need --auth-proxy-header (the header naming the \
                     signed-in user)",
                );
            }
            return Ok(None);
        };
        if trusted.is_empty() {
            return refuse(format!(
                "--auth-proxy-header {header} needs --auth-proxy-trusted with the proxy's \
                 addresses (e.g. 127.0.0.1): otherwise any client could send the header and be \
                 signed in as anyone"
            ));
        }
        if trusted.len() > MAX_MAP_ENTRIES {
            return refuse(format!(
                "--auth-proxy-trusted: at most {MAX_MAP_ENTRIES} entries"
            ));
        }
        let trusted = trusted
            .iter()
            .map(|t| t.parse::<Cidr>())
            .collect::<Result<Vec<_>, _>>()?;
        let header = header_name("--auth-proxy-header", header)?;
        let email_header = email_header
            .map(|h| header_name("--auth-proxy-email-header", h))
            .transpose()?;
        let groups_header = groups_header
            .map(|h| header_name("--auth-proxy-groups-header", h))
            .transpose()?;
        let rules = group_map
            .map(parse_group_map)
            .transpose()?
            .unwrap_or_default();
        if !rules.is_empty() && groups_header.is_none() {
            return refuse(
                "--auth-proxy-group-map needs --auth-proxy-groups-header (e.g. X-Forwarded-Groups)",
            );
        }
        let distinct = [Some(&header), email_header.as_ref(), groups_header.as_ref()];
        let named: Vec<&HeaderName> = distinct.into_iter().flatten().collect();
        if named
            .iter()
            .enumerate()
            .any(|(i, a)| named[..i].contains(a))
        {
            return refuse("--auth-proxy-header, -email-header and -groups-header must differ");
        }
        let mut mapped_orgs: Vec<String> = Vec::new();
        for r in &rules {
            if !mapped_orgs.contains(&r.org) {
                mapped_orgs.push(r.org.clone());
            }
        }
        Ok(Some(Self {
            header,
            email_header,
            groups_header,
            trusted,
            rules,
            mapped_orgs,
            signins: Mutex::new(HashMap::new()),
            missing_orgs: Mutex::new(HashMap::new()),
            warned: Mutex::new(HashSet::new()),
        }))
    }

    /// Whether a connection from `ip` may name the user.
    pub fn trusts(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|c| c.contains(ip))
    }

    /// Logs `message` once per `key` (at most [`MAX_REMEMBERED`] keys, then once again).
    pub(crate) fn warn_once(&self, key: String, message: impl FnOnce()) {
        let first = match self.warned.lock() {
            Ok(mut w) => {
                if w.len() >= MAX_REMEMBERED {
                    w.clear();
                }
                w.insert(key)
            }
            Err(_) => true,
        };
        if first {
            message();
        }
    }

    /// Whether `user`'s `signin` entry is due (first sight by this process, or the last one
    /// over [`SIGNIN_AUDIT_INTERVAL`] ago); marks it written.
    pub(crate) fn signin_due(&self, user: &str) -> bool {
        let Ok(mut seen) = self.signins.lock() else {
            return true;
        };
        let now = Instant::now();
        if seen
            .get(user)
            .is_some_and(|at| now.duration_since(*at) < SIGNIN_AUDIT_INTERVAL)
        {
            return false;
        }
        if seen.len() >= MAX_REMEMBERED {
            // Forget the older half; those users get another entry on their next visit.
            let mut ages: Vec<Instant> = seen.values().copied().collect();
            ages.sort_unstable();
            let cut = ages[ages.len() / 2];
            seen.retain(|_, at| *at > cut);
        }
        seen.insert(user.to_string(), now);
        true
    }

    /// Forgets `user`'s last `signin` entry (it was not written after all).
    pub(crate) fn forget_signin(&self, user: &str) {
        if let Ok(mut seen) = self.signins.lock() {
            seen.remove(user);
        }
    }

    /// Whether `org` was found missing less than a minute ago (not asked about again yet).
    pub(crate) fn org_known_missing(&self, org: &str) -> bool {
        self.missing_orgs.lock().is_ok_and(|m| {
            m.get(org)
                .is_some_and(|at| at.elapsed() < MISSING_ORG_RETRY)
        })
    }

    /// Remembers that `org` is missing, and warns once.
    pub(crate) fn org_missing(&self, org: &str) {
        if let Ok(mut m) = self.missing_orgs.lock() {
            m.insert(org.to_string(), Instant::now());
        }
        self.warn_once(format!("missing org {org}"), || {
            tracing::warn!(
                org,
                "--auth-proxy-group-map names the organisation {org}, which does not exist; \
                 create it (POST /api/v1/orgs) for the mapped groups to take effect (logged once)"
            );
        });
    }

    /// The role the map gives someone carrying `groups` in `org`: the highest of the mapped
    /// groups' roles, or none.
    pub fn mapped_role(&self, org: &str, groups: &[String]) -> Option<OrgRole> {
        self.rules
            .iter()
            .filter(|r| r.org == org && groups.contains(&r.group))
            .map(|r| r.role)
            .fold(None, |best: Option<OrgRole>, r| match best {
                Some(b) if b.at_least(r) => Some(b),
                _ => Some(r),
            })
    }

    /// The header naming the signed-in user.
    pub(crate) fn header(&self) -> &HeaderName {
        &self.header
    }

    /// The header carrying the user's email, if set.
    pub(crate) fn email_header(&self) -> Option<&HeaderName> {
        self.email_header.as_ref()
    }

    /// The header carrying the user's groups, if set.
    pub(crate) fn groups_header(&self) -> Option<&HeaderName> {
        self.groups_header.as_ref()
    }

    /// Whether a group map is set (`--auth-proxy-group-map`).
    pub(crate) fn has_group_map(&self) -> bool {
        !self.rules.is_empty()
    }

    /// The organisations the map names, each once.
    pub(crate) fn mapped_orgs(&self) -> &[String] {
        &self.mapped_orgs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn cidrs_parse_and_match() {
        let net: Cidr = "10.0.0.0/8".parse().expect("v4 net");
        assert!(net.contains(ip("10.1.2.3")) && net.contains(ip("10.255.255.255")));
        assert!(!net.contains(ip("11.0.0.0")) && !net.contains(ip("9.255.255.255")));
        assert!(
            net.contains(ip("::ffff:10.9.9.9")),
            "IPv4-mapped counts as IPv4"
        );
        assert!(!net.contains(ip("::1")));
        let host: Cidr = "127.0.0.1".parse().expect("bare v4");
        assert_eq!(host.to_string(), "127.0.0.1/32");
        assert!(host.contains(ip("127.0.0.1")) && !host.contains(ip("127.0.0.2")));
        let v6: Cidr = " fd00::/8 ".parse().expect("v6 net");
        assert!(v6.contains(ip("fd12:3456::1")) && !v6.contains(ip("fe80::1")));
        assert!(!v6.contains(ip("10.0.0.1")));
        let one: Cidr = "::1".parse().expect("bare v6");
        assert!(one.contains(ip("::1")) && !one.contains(ip("::2")));
        let odd: Cidr = "192.168.4.0/22".parse().expect("/22");
        assert!(odd.contains(ip("192.168.7.255")) && !odd.contains(ip("192.168.8.0")));
        let full: Cidr = "2001:db8::1/128".parse().expect("/128");
        assert!(full.contains(ip("2001:db8::1")) && !full.contains(ip("2001:db8::")));
        for bad in [
            "",
            "10.0.0",
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/",
            "10.0.0.0/-1",
            "10.0.0.0/+8",
            "10.0.0.1/8",
            "0.0.0.0/0",
            "::/0",
            "example.com",
            "10.0.0.0/8/8",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn group_maps_parse() {
        let rules = parse_group_map("ml-team=acme:write, ml-leads=acme:admin,/eng/ml=Beta:read")
            .expect("ok");
        assert_eq!(rules.len(), 3);
        assert_eq!(rules[2].group, "/eng/ml");
        assert_eq!(rules[2].org, "beta");
        assert_eq!(rules[2].role, OrgRole::Read);
        let g = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let auth = ProxyAuth::from_flags(
            Some("X-Forwarded-User"),
            &["127.0.0.1".into()],
            None,
            Some("X-Forwarded-Groups"),
            Some("ml-team=acme:write,ml-leads=acme:admin,readers=acme:read"),
        )
        .expect("ok")
        .expect("on");
        assert_eq!(
            auth.mapped_role("acme", &g(&["readers", "ml-leads"])),
            Some(OrgRole::Admin)
        );
        assert_eq!(
            auth.mapped_role("acme", &g(&["ml-team", "readers"])),
            Some(OrgRole::Write)
        );
        assert_eq!(auth.mapped_role("acme", &g(&["other"])), None);
        assert_eq!(auth.mapped_role("beta", &g(&["ml-team"])), None);
        for bad in [
            "ml-team",
            "ml-team=acme",
            "ml-team=acme:owner",
            "=acme:read",
            "ml-team=api:read",
            "ml-team=Not Valid:read",
            "a=acme:read,a=acme:write",
            ",",
        ] {
            assert!(parse_group_map(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn flags_are_checked_together() {
        let trusted = ["127.0.0.1".to_string(), "10.0.0.0/8".to_string()];
        assert!(
            ProxyAuth::from_flags(None, &[], None, None, None)
                .expect("off")
                .is_none()
        );
        let err = ProxyAuth::from_flags(Some("X-Forwarded-User"), &[], None, None, None)
            .expect_err("no trusted list");
        assert!(err.to_string().contains("--auth-proxy-trusted"), "{err}");
        assert!(ProxyAuth::from_flags(None, &trusted, None, None, None).is_err());
        assert!(
            ProxyAuth::from_flags(
                Some("X-Forwarded-User"),
                &trusted,
                None,
                None,
                Some("a=b:read")
            )
            .is_err(),
            "a map needs a groups header"
        );
        assert!(ProxyAuth::from_flags(Some("Bad Header"), &trusted, None, None, None).is_err());
        assert!(ProxyAuth::from_flags(Some("Cookie"), &trusted, None, None, None).is_err());
        assert!(
            ProxyAuth::from_flags(
                Some("X-Forwarded-User"),
                &trusted,
                Some("x-forwarded-user"),
                None,
                None
            )
            .is_err()
        );
        let on = ProxyAuth::from_flags(
            Some("X-Forwarded-User"),
            &trusted,
            Some("X-Forwarded-Email"),
            None,
            None,
        )
        .expect("ok")
        .expect("on");
        assert!(on.trusts(ip("127.0.0.1")) && on.trusts(ip("10.2.3.4")));
        assert!(!on.trusts(ip("127.0.0.2")) && !on.trusts(ip("192.168.0.1")));
    }

    #[test]
    fn signins_are_remembered_and_bounded() {
        let auth = ProxyAuth::from_flags(Some("X-User"), &["::1".into()], None, None, None)
            .expect("ok")
            .expect("on");
        assert!(auth.signin_due("alice"));
        assert!(!auth.signin_due("alice"));
        auth.forget_signin("alice");
        assert!(auth.signin_due("alice"));
        for i in 0..MAX_REMEMBERED + 10 {
            auth.signin_due(&format!("u{i}"));
        }
        let len = auth.signins.lock().expect("lock").len();
        assert!(len <= MAX_REMEMBERED, "{len}");
    }
}
