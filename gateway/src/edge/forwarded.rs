//! Who the client is, and the `X-Forwarded-*` headers upstreams see.
//!
//! A client's own `X-Forwarded-For`/`-Proto`/`-Host` (and `Forwarded`, `X-Real-IP`) are believed
//! only when the TCP peer is in `trusted_proxies`; from anyone else they are replaced, so a client
//! cannot pick the IP that rate limits and logs attribute its requests to.

use std::cell::RefCell;
use std::net::IpAddr;

use http::header::{FORWARDED, HOST, HeaderMap, HeaderName, HeaderValue};
use http::uri::Uri;
use ipnet::IpNet;
use smallvec::SmallVec;

use super::headers::{remove_present, shared_value};
use super::request_id::X_REQUEST_ID;

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The client as the gateway sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr {
    /// The TCP peer.
    pub peer: IpAddr,
    /// The originating client: the peer, or through trusted proxies the first untrusted hop of
    /// `X-Forwarded-For` read from the right.
    pub ip: IpAddr,
    pub peer_trusted: bool,
}

impl ClientAddr {
    pub fn new(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> Self {
        let peer = canonical(peer);
        let peer_trusted = is_trusted(peer, trusted);
        let mut ip = peer;
        if peer_trusted {
            // Right to left: each hop appended the address it saw; the first hop we don't trust
            // is as far as the chain can be believed.
            for hop in forwarded_for(headers).rev() {
                let Ok(hop) = hop.parse::<IpAddr>().map(canonical) else {
                    break;
                };
                ip = hop;
                if !is_trusted(hop, trusted) {
                    break;
                }
            }
        }
        Self {
            peer,
            ip,
            peer_trusted,
        }
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    trusted.iter().any(|net| net.contains(&ip))
}

fn forwarded_for(headers: &HeaderMap) -> impl DoubleEndedIterator<Item = &str> {
    headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .into_iter()
}

/// The `X-Forwarded-*` headers a request goes upstream with, then its `request_id`, in the
/// order they are sent; the client's own copies are removed from `headers` (the caller sends
/// these instead), in one pass over its names.
///
/// From a trusted proxy, the chain it sent is extended with the peer, and its `-Proto` and
/// `-Host` stand; from anyone else, the gateway states all three, and `Forwarded` and
/// `X-Real-IP` go as well.
pub fn forwarded_headers(
    headers: &mut HeaderMap,
    client: &ClientAddr,
    uri: &Uri,
    request_id: HeaderValue,
) -> Forwarded {
    let peer = ip_value(client.peer);
    let mut set = Forwarded::new();
    if client.peer_trusted {
        let chain: Vec<&str> = forwarded_for(headers).collect();
        let value = if chain.is_empty() {
            peer
        } else {
            let joined = format!("{}, {}", chain.join(", "), client.peer);
            HeaderValue::from_str(&joined).unwrap_or(peer)
        };
        set.push((&X_FORWARDED_FOR, value));
        // What a trusted proxy said stands; what it left out, the gateway says.
        let proto = headers.get(&X_FORWARDED_PROTO).cloned();
        set.push((
            &X_FORWARDED_PROTO,
            proto.unwrap_or(HeaderValue::from_static("http")),
        ));
        if let Some(host) = headers
            .get(&X_FORWARDED_HOST)
            .cloned()
            .or_else(|| host(headers, uri))
        {
            set.push((&X_FORWARDED_HOST, host));
        }
        remove_present(headers, &SET_UPSTREAM[..4]);
    } else {
        set.push((&X_FORWARDED_FOR, peer));
        set.push((&X_FORWARDED_PROTO, HeaderValue::from_static("http")));
        if let Some(host) = host(headers, uri) {
            set.push((&X_FORWARDED_HOST, host));
        }
        // An untrusted peer's claims all go.
        remove_present(headers, &SET_UPSTREAM);
    }
    set.push((&X_REQUEST_ID, request_id));
    set
}

/// What [`forwarded_headers`] returns: at most four, kept inline.
pub type Forwarded = SmallVec<[(&'static HeaderName, HeaderValue); 4]>;

/// The headers the gateway sends upstream in place of the client's: the three forwarding
/// headers and the request id, then the two forwarding headers it drops from untrusted peers.
static SET_UPSTREAM: [HeaderName; 6] = [
    HeaderName::from_static("x-forwarded-for"),
    HeaderName::from_static("x-forwarded-proto"),
    HeaderName::from_static("x-forwarded-host"),
    HeaderName::from_static("x-request-id"),
    FORWARDED,
    HeaderName::from_static("x-real-ip"),
];

/// The host the client asked for: HTTP/2 carries it in `:authority`, HTTP/1.1 in `Host`.
fn host(headers: &HeaderMap, uri: &Uri) -> Option<HeaderValue> {
    uri.authority()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        .or_else(|| headers.get(HOST).cloned())
}

/// `ip` as a header value. The last one made on this thread is kept and cloned (a reference
/// count) when the next request comes from the same address, as a connection's requests do, and
/// most of a gateway's traffic when it sits behind a load balancer.
fn ip_value(ip: IpAddr) -> HeaderValue {
    thread_local! {
        static LAST: RefCell<Option<(IpAddr, HeaderValue)>> = const { RefCell::new(None) };
    }
    LAST.with_borrow_mut(|last| match last {
        Some((seen, value)) if *seen == ip => value.clone(),
        _ => {
            let value = format_ip(ip);
            *last = Some((ip, value.clone()));
            value
        }
    })
}

/// IPv4 (nearly every peer) is written digit by digit into one buffer: the formatter machinery
/// cost more than the rest of the header work together.
fn format_ip(ip: IpAddr) -> HeaderValue {
    let IpAddr::V4(v4) = ip else {
        return HeaderValue::from_str(&ip.to_string()).unwrap_or(HeaderValue::from_static("unknown"));
    };
    let mut text = [0u8; 15];
    let mut len = 0;
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            text[len] = b'.';
            len += 1;
        }
        if octet >= 100 {
            text[len] = b'0' + octet / 100;
            len += 1;
        }
        if octet >= 10 {
            text[len] = b'0' + octet / 10 % 10;
            len += 1;
        }
        text[len] = b'0' + octet % 10;
        len += 1;
    }
    shared_value(&text[..len]).unwrap_or(HeaderValue::from_static("unknown"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_address_gets_its_own_value_whatever_came_before() {
        let a: IpAddr = "203.0.113.9".parse().unwrap();
        let b: IpAddr = "2001:db8::1".parse().unwrap();
        let c: IpAddr = "10.0.0.255".parse().unwrap();
        for (ip, text) in [
            (a, "203.0.113.9"),
            (a, "203.0.113.9"),
            (b, "2001:db8::1"),
            (c, "10.0.0.255"),
            (a, "203.0.113.9"),
        ] {
            assert_eq!(ip_value(ip), text);
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| (k.parse().unwrap(), v.parse().unwrap()))
            .collect()
    }

    #[test]
    fn untrusted_peers_cannot_spoof_their_address() {
        let h = headers(&[("x-forwarded-for", "1.2.3.4")]);
        let c = ClientAddr::new("203.0.113.9".parse().unwrap(), &h, &[]);
        assert_eq!(c.ip, "203.0.113.9".parse::<IpAddr>().unwrap());
        let mut h = headers(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-proto", "https"),
            ("host", "gw"),
        ]);
        h.insert("x-request-id", "theirs".parse().unwrap());
        let set = forwarded_headers(
            &mut h,
            &c,
            &Uri::from_static("/x"),
            HeaderValue::from_static("ours"),
        );
        assert_eq!(
            sent(&set),
            [
                ("x-forwarded-for", "203.0.113.9"),
                ("x-forwarded-proto", "http"),
                ("x-forwarded-host", "gw"),
                ("x-request-id", "ours"),
            ]
        );
        assert_eq!(h.keys().collect::<Vec<_>>(), ["host"]);
    }

    #[test]
    fn trusted_proxies_extend_the_chain_and_reveal_the_client() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let h = headers(&[
            ("x-forwarded-for", "6.6.6.6, 198.51.100.7, 10.1.1.1"),
            ("x-forwarded-proto", "https"),
        ]);
        let c = ClientAddr::new("10.0.0.2".parse().unwrap(), &h, &trusted);
        // 6.6.6.6 was written by the client itself; 198.51.100.7 is what our proxy saw.
        assert_eq!(c.ip, "198.51.100.7".parse::<IpAddr>().unwrap());
        let mut h = h.clone();
        h.insert("x-real-ip", "198.51.100.7".parse().unwrap());
        let set = forwarded_headers(
            &mut h,
            &c,
            &Uri::from_static("http://gw.example/x"),
            HeaderValue::from_static("id"),
        );
        assert_eq!(
            sent(&set),
            [
                ("x-forwarded-for", "6.6.6.6, 198.51.100.7, 10.1.1.1, 10.0.0.2"),
                ("x-forwarded-proto", "https"),
                ("x-forwarded-host", "gw.example"),
                ("x-request-id", "id"),
            ]
        );
        assert_eq!(h.keys().collect::<Vec<_>>(), ["x-real-ip"]);
    }

    fn sent(set: &Forwarded) -> Vec<(&str, &str)> {
        set.iter()
            .map(|(n, v)| (n.as_str(), v.to_str().unwrap()))
            .collect()
    }

    #[test]
    fn ipv4_mapped_peers_are_matched_as_ipv4() {
        let trusted: Vec<IpNet> = vec!["127.0.0.1/32".parse().unwrap()];
        let c = ClientAddr::new("::ffff:127.0.0.1".parse().unwrap(), &HeaderMap::new(), &trusted);
        assert!(c.peer_trusted);
    }

    #[test]
    fn addresses_are_written_as_the_formatter_would() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.30.40",
            "255.255.255.255",
            "192.168.100.9",
            "::1",
            "2001:db8::7",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_value(ip), ip.to_string().as_str());
        }
    }
}
