//! Who the client is: the one decision behind the login throttle's per-address
//! counters, the per-address call budgets and the audit rows' `client_address`, for
//! gRPC and REST alike. The TCP peer, unless that peer is a proxy we trust
//! (`KMS_TRUSTED_PROXIES`): then `x-forwarded-for`, read from the right, names the
//! client. Every proxy appends the address it received the request from, so the
//! rightmost entry not inside a trusted network is the first hop nobody we trust can
//! vouch beyond; anything to its left is whatever the client chose to send.

use std::{fmt, net::IpAddr, str::FromStr, sync::Arc};

use http::HeaderMap;

/// The header proxies append the address they received a request from to.
pub const FORWARDED_FOR: &str = "x-forwarded-for";

/// The client address of a request, as decided by [`TrustedProxies::client`]; the
/// listener stamps every request with it (`crate::net::client_addr` reads it back).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub IpAddr);

/// An IP network: an address and a prefix length (`10.0.0.0/8`, `fd00::/8`, or a
/// bare address for one host).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                mask32(u32::from(ip), self.prefix) == u32::from(net)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                mask128(u128::from(ip), self.prefix) == u128::from(net)
            }
            _ => false,
        }
    }
}

fn mask32(bits: u32, prefix: u8) -> u32 {
    bits.checked_shr(32 - u32::from(prefix))
        .and_then(|b| b.checked_shl(32 - u32::from(prefix)))
        .unwrap_or(0)
}

fn mask128(bits: u128, prefix: u8) -> u128 {
    bits.checked_shr(128 - u32::from(prefix))
        .and_then(|b| b.checked_shl(128 - u32::from(prefix)))
        .unwrap_or(0)
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let network: IpAddr = addr
            .parse()
            .map_err(|_| format!("'{text}' is not an IP address or CIDR"))?;
        // `::ffff:10.0.0.0/104` is written as 10.0.0.0/8: one spelling per network.
        if network.to_canonical() != network {
            return Err(format!(
                "'{text}': write IPv4-mapped networks as IPv4 (peers are compared as IPv4)"
            ));
        }
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("'{text}': the prefix length must be 0..={max}"))?,
        };
        let cidr = Self { network, prefix };
        let masked = match network {
            IpAddr::V4(ip) => mask32(u32::from(ip), prefix) == u32::from(ip),
            IpAddr::V6(ip) => mask128(u128::from(ip), prefix) == u128::from(ip),
        };
        if !masked {
            return Err(format!(
                "'{text}' has address bits set past its prefix length (a typo?)"
            ));
        }
        Ok(cidr)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// The networks whose connections may say, in `x-forwarded-for`, whom they forward
/// for. Empty (the default): every client is its TCP peer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Arc<[Cidr]>);

impl TrustedProxies {
    /// A comma-separated list of CIDRs (or bare addresses); blanks are ignored.
    pub fn parse(list: &str) -> Result<Self, String> {
        let cidrs = list
            .split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(Cidr::from_str)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self(cidrs.into()))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|cidr| cidr.contains(ip))
    }

    /// The client behind a request from `peer` with these headers.
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if !self.trusts(peer) {
            return peer.to_canonical();
        }
        let values = headers
            .get_all(FORWARDED_FOR)
            .iter()
            .map(|value| value.to_str().ok());
        self.client_from(peer, values.rev())
    }

    /// `client` over the `x-forwarded-for` values, last header first. A value that is
    /// not text, or an entry that is not an address, ends the walk: nothing left of it
    /// can be believed, and the last trusted hop reached stands for the client.
    fn client_from<'a>(
        &self,
        peer: IpAddr,
        values_from_last: impl Iterator<Item = Option<&'a str>>,
    ) -> IpAddr {
        let mut nearest = peer.to_canonical();
        for value in values_from_last {
            let Some(value) = value else {
                return nearest;
            };
            for entry in value.rsplit(',') {
                let Some(hop) = parse_hop(entry.trim()) else {
                    return nearest;
                };
                if !self.trusts(hop) {
                    return hop;
                }
                nearest = hop;
            }
        }
        // Every hop was a trusted proxy: the leftmost is as far as anyone can see.
        nearest
    }
}

impl fmt::Display for TrustedProxies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&list.join(","))
    }
}

/// One `x-forwarded-for` entry: an address, possibly with a port (`1.2.3.4:567`,
/// `[2001:db8::1]:567`) as some proxies write it.
fn parse_hop(entry: &str) -> Option<IpAddr> {
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    entry
        .parse::<std::net::SocketAddr>()
        .ok()
        .map(|addr| addr.ip().to_canonical())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn headers(values: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for v in values {
            map.append(FORWARDED_FOR, v.parse().unwrap());
        }
        map
    }

    #[test]
    fn cidrs_parse_and_match() {
        let trusted = TrustedProxies::parse(" 10.0.0.0/8, 192.168.1.7 ,fd00::/8,").unwrap();
        assert!(trusted.trusts(ip("10.200.3.4")));
        assert!(trusted.trusts(ip("192.168.1.7")));
        assert!(!trusted.trusts(ip("192.168.1.8")));
        assert!(trusted.trusts(ip("fd12::1")));
        assert!(!trusted.trusts(ip("fe80::1")));
        // A dual-stack socket reports IPv4 peers as IPv4-mapped IPv6.
        assert!(trusted.trusts(ip("::ffff:10.1.2.3")));
        assert_eq!(trusted.to_string(), "10.0.0.0/8,192.168.1.7/32,fd00::/8");
        assert!(TrustedProxies::parse("").unwrap().is_empty());
        assert!(
            TrustedProxies::parse("0.0.0.0/0")
                .unwrap()
                .trusts(ip("8.8.8.8"))
        );
        assert!(
            !TrustedProxies::parse("0.0.0.0/0")
                .unwrap()
                .trusts(ip("::1"))
        );
        assert!(TrustedProxies::parse("::/0").unwrap().trusts(ip("::1")));
        for bad in [
            "10.0.0.0/33",
            "10.0.0.1/8",
            "nonsense",
            "10.0.0.0/",
            "10.0.0.0/-1",
            "::1/129",
            "::ffff:10.0.0.0/104",
            "10.0.0.0/8/8",
        ] {
            assert!(TrustedProxies::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_rightmost_untrusted_hop_is_the_client() {
        let trusted = TrustedProxies::parse("127.0.0.0/8,10.0.0.0/8").unwrap();
        let peer = ip("127.0.0.1");
        let client = |values: &[&str]| trusted.client(peer, &headers(values));
        assert_eq!(client(&[]), peer, "no header: the peer");
        assert_eq!(client(&["203.0.113.9"]), ip("203.0.113.9"));
        // The client put a forged entry first; the proxy appended the real one.
        assert_eq!(client(&["1.1.1.1, 203.0.113.9"]), ip("203.0.113.9"));
        // Inner proxies are skipped.
        assert_eq!(
            client(&["1.1.1.1, 203.0.113.9, 10.0.0.5"]),
            ip("203.0.113.9")
        );
        // Spoofing a trusted hop does not help: the real hop sits right of it.
        assert_eq!(client(&["10.9.9.9, 203.0.113.9"]), ip("203.0.113.9"));
        // Two headers are one list, in order.
        assert_eq!(
            client(&["1.1.1.1", "203.0.113.9, 10.0.0.5"]),
            ip("203.0.113.9")
        );
        // All trusted: the leftmost.
        assert_eq!(client(&["10.0.0.7, 10.0.0.5"]), ip("10.0.0.7"));
        // Ports and IPv6 brackets, as some proxies write them.
        assert_eq!(client(&["203.0.113.9:4711"]), ip("203.0.113.9"));
        assert_eq!(client(&["[2001:db8::1]:443"]), ip("2001:db8::1"));
        assert_eq!(client(&["::ffff:203.0.113.9"]), ip("203.0.113.9"));
        // Garbage ends the walk at the last trusted hop reached.
        assert_eq!(client(&["203.0.113.9, garbage"]), peer);
        assert_eq!(client(&["203.0.113.9, garbage, 10.0.0.5"]), ip("10.0.0.5"));
        assert_eq!(client(&[""]), peer);
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_sends() {
        let trusted = TrustedProxies::parse("10.0.0.0/8").unwrap();
        let peer = ip("127.0.0.1");
        assert_eq!(trusted.client(peer, &headers(&["203.0.113.9"])), peer);
        let none = TrustedProxies::default();
        assert_eq!(none.client(peer, &headers(&["203.0.113.9"])), peer);
    }

    fn any_ip() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            any::<[u8; 4]>().prop_map(IpAddr::from),
            any::<[u8; 16]>().prop_map(IpAddr::from),
            // Addresses inside the trusted networks, often.
            any::<[u8; 2]>().prop_map(|b| IpAddr::from([10, 0, b[0], b[1]])),
        ]
    }

    proptest! {
        /// Whatever a client prepends to the list, the answer is decided by what the
        /// trusted proxies appended: never an address the client wrote left of an
        /// untrusted hop.
        #[test]
        fn prepended_entries_never_matter(
            forged in proptest::collection::vec(any_ip(), 0..6),
            real in any_ip(),
            proxies in proptest::collection::vec(0u8..=255, 0..4),
        ) {
            let trusted = TrustedProxies::parse("10.0.0.0/8").unwrap();
            let real = real.to_canonical();
            prop_assume!(!trusted.trusts(real));
            let mut list: Vec<String> = forged.iter().map(ToString::to_string).collect();
            list.push(real.to_string());
            list.extend(proxies.iter().map(|p| format!("10.0.0.{p}")));
            let peer = ip("10.1.1.1");
            prop_assert_eq!(trusted.client(peer, &headers(&[&list.join(", ")])), real);
        }

        /// The answer is the peer, an entry of the list, or nothing else; from an
        /// untrusted peer it is always the peer.
        #[test]
        fn the_answer_is_the_peer_or_a_listed_hop(
            entries in proptest::collection::vec(any_ip(), 0..8),
            peer in any_ip(),
        ) {
            let trusted = TrustedProxies::parse("10.0.0.0/8").unwrap();
            let list: Vec<String> = entries.iter().map(ToString::to_string).collect();
            let client = trusted.client(peer, &headers(&[&list.join(",")]));
            if trusted.trusts(peer) {
                prop_assert!(
                    client == peer.to_canonical()
                        || entries.iter().any(|e| e.to_canonical() == client)
                );
            } else {
                prop_assert_eq!(client, peer.to_canonical());
            }
        }

        #[test]
        fn cidr_parsing_never_panics(text in "\\PC{0,40}") {
            let _ = TrustedProxies::parse(&text);
        }

        /// A network contains exactly the addresses that share its first `prefix` bits.
        #[test]
        fn containment_matches_the_prefix(a in any::<u32>(), b in any::<u32>(), prefix in 0u8..=32) {
            let net = mask32(a, prefix);
            let cidr: Cidr = format!("{}/{prefix}", std::net::Ipv4Addr::from(net)).parse().unwrap();
            let same = prefix == 0 || (a ^ b) >> (32 - u32::from(prefix)) == 0;
            prop_assert_eq!(cidr.contains(IpAddr::from(std::net::Ipv4Addr::from(b))), same);
        }
    }
}
