//! Where deliveries may go (SSRF): an `http`/`https` URL whose host resolves only to public
//! addresses, unless `--webhook-allow-private`. Checked when a subscription is created and again
//! before every attempt; the attempt then connects to the address that was checked (the client
//! is pinned to it), so a DNS answer that changes in between cannot redirect it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

/// Longest URL accepted.
pub const MAX_URL_LEN: usize = 2048;
/// Time allowed to resolve the host.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// A URL that passed, with the address to connect to.
#[derive(Clone, Debug)]
pub struct Vetted {
    pub url: url::Url,
    /// The URL's host as written (a name, or an address).
    pub host: String,
    pub addr: SocketAddr,
}

/// The URL's form alone (no resolution): scheme, host, length, no credentials.
pub fn parse(raw: &str) -> Result<url::Url, String> {
    if raw.len() > MAX_URL_LEN {
        return Err(format!("the URL is longer than {MAX_URL_LEN} bytes"));
    }
    let url = url::Url::parse(raw).map_err(|e| format!("not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "scheme {:?} is not allowed: use http or https",
            url.scheme()
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("credentials in the URL are not allowed (use the signing secret)".into());
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("the URL has no host".into());
    }
    Ok(url)
}

/// Why deliveries may not go to `ip`, if they may not: `None` means allowed.
pub fn refused(ip: IpAddr, allow_private: bool) -> Option<&'static str> {
    let ip = match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    };
    let (never, private) = match ip {
        IpAddr::V4(v4) => (v4_never(v4), v4_private(v4)),
        IpAddr::V6(v6) => (v6_never(v6), v6_private(v6)),
    };
    match (never, private) {
        (Some(why), _) => Some(why),
        (None, Some(why)) if !allow_private => Some(why),
        _ => None,
    }
}

fn v4_never(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    if ip.is_unspecified() || o[0] == 0 {
        Some("an unspecified address (0.0.0.0/8)")
    } else if ip.is_multicast() {
        Some("a multicast address (224.0.0.0/4)")
    } else if ip.is_broadcast() || o[0] >= 240 {
        Some("a reserved or broadcast address (240.0.0.0/4)")
    } else {
        None
    }
}

fn v4_private(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    if ip.is_loopback() {
        Some("a loopback address (127.0.0.0/8)")
    } else if ip.is_private() {
        Some("a private address (10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16)")
    } else if ip.is_link_local() {
        Some("a link-local address (169.254.0.0/16)")
    } else if o[0] == 100 && (o[1] & 0xc0) == 64 {
        Some("a carrier-grade NAT address (100.64.0.0/10)")
    } else {
        None
    }
}

fn v6_never(ip: Ipv6Addr) -> Option<&'static str> {
    if ip.is_unspecified() {
        Some("the unspecified address (::)")
    } else if ip.is_multicast() {
        Some("a multicast address (ff00::/8)")
    } else {
        None
    }
}

fn v6_private(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    if ip.is_loopback() {
        Some("the loopback address (::1)")
    } else if (s[0] & 0xfe00) == 0xfc00 {
        Some("a unique local address (fc00::/7)")
    } else if (s[0] & 0xffc0) == 0xfe80 || (s[0] & 0xffc0) == 0xfec0 {
        Some("a link-local address (fe80::/10)")
    } else if s[..6] == [0, 0, 0, 0, 0, 0] || (s[0] == 0x64 && s[1] == 0xff9b) {
        // IPv4-compatible and NAT64 addresses embed an IPv4 address: judged as one would be.
        Some("an address embedding an IPv4 address (::/96, 64:ff9b::/96)")
    } else {
        None
    }
}

/// Checks the URL and resolves its host: every address it resolves to must be allowed (one
/// refused address refuses the URL). Returns the address to connect to.
pub async fn vet(raw: &str, allow_private: bool) -> Result<Vetted, String> {
    let url = parse(raw)?;
    let host = url.host_str().unwrap_or_default().to_string();
    let port = url
        .port_or_known_default()
        .ok_or_else(|| "the URL has no port".to_string())?;
    let addrs: Vec<SocketAddr> = match url.host() {
        Some(url::Host::Ipv4(ip)) => vec![SocketAddr::new(IpAddr::V4(ip), port)],
        Some(url::Host::Ipv6(ip)) => vec![SocketAddr::new(IpAddr::V6(ip), port)],
        _ => {
            let lookup = tokio::net::lookup_host((host.as_str(), port));
            match tokio::time::timeout(RESOLVE_TIMEOUT, lookup).await {
                Ok(Ok(found)) => found.collect(),
                Ok(Err(e)) => return Err(format!("host {host:?} does not resolve: {e}")),
                Err(_) => return Err(format!("host {host:?} did not resolve within 5 s")),
            }
        }
    };
    let Some(first) = addrs.first().copied() else {
        return Err(format!("host {host:?} resolves to no address"));
    };
    for a in &addrs {
        if let Some(why) = refused(a.ip(), allow_private) {
            return Err(format!(
                "host {host:?} resolves to {}, {why}; deliveries may not go there{}",
                a.ip(),
                if allow_private {
                    ""
                } else {
                    " (a server run with --webhook-allow-private allows private targets)"
                }
            ));
        }
    }
    Ok(Vetted {
        url,
        host,
        addr: first,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn private_and_special_addresses_are_refused() {
        for a in [
            "127.0.0.1",
            "10.0.0.1",
            "172.16.5.4",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "::1",
            "fc00::1",
            "fd12::1",
            "fe80::1",
            "::ffff:10.0.0.1",
            "::ffff:127.0.0.1",
        ] {
            assert!(refused(ip(a), false).is_some(), "{a}");
            assert!(refused(ip(a), true).is_none(), "{a} with allow_private");
        }
        for a in ["0.0.0.0", "::", "224.0.0.1", "ff02::1", "255.255.255.255"] {
            assert!(refused(ip(a), true).is_some(), "{a}");
        }
        for a in ["93.184.216.34", "100.128.0.1", "2606:4700::1111", "8.8.8.8"] {
            assert!(refused(ip(a), false).is_none(), "{a}");
        }
    }

    #[test]
    fn only_http_urls_without_credentials() {
        assert!(parse("ftp://example.com/").is_err());
        assert!(parse("file:///etc/passwd").is_err());
        assert!(parse("http://user:pw@example.com/").is_err());
        assert!(parse(&format!("http://example.com/{}", "a".repeat(MAX_URL_LEN))).is_err());
        assert!(parse("https://example.com/hook").is_ok());
    }
}
