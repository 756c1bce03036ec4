//! Where a controller may send the HTTP requests its users choose the address of (webhook
//! policies, metric analysis, http-post notifications): the controller sits inside the
//! cluster, so without a check anyone who may create such an object could reach what only the
//! controller can (the API server, the node's metadata service, its own loopback).
//!
//! The rule ([`decide`]): loopback, link-local (169.254.169.254 among them), unspecified and
//! multicast addresses, and the API server's own addresses, are refused unless an entry of
//! `--allowed-egress` lies within that range (for the API server: names its address exactly),
//! so a broad entry such as `10.0.0.0/8` never opens them by accident. Any other address is
//! allowed when the list is empty, and only inside a listed entry when it is not.
//!
//! The check runs on every address a name resolves to (a resolver that filters, so a name that
//! resolves to an allowed address first and to loopback later gains nothing) and on IP-literal
//! hosts before sending. Redirects are not followed: a redirect could lead anywhere.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;

pub use ipnet::IpNet;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// 127.0.0.1/32: what a test serving on loopback lists to reach its own server.
pub const LOCALHOST: IpNet = IpNet::new_assert(IpAddr::V4(Ipv4Addr::LOCALHOST), 32);

const GUARDED: [(Why, IpNet); 8] = [
    (
        Why::Loopback,
        IpNet::new_assert(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)), 8),
    ),
    (Why::Loopback, IpNet::new_assert(IpAddr::V6(Ipv6Addr::LOCALHOST), 128)),
    (
        Why::LinkLocal,
        IpNet::new_assert(IpAddr::V4(Ipv4Addr::new(169, 254, 0, 0)), 16),
    ),
    (
        Why::LinkLocal,
        IpNet::new_assert(IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0)), 10),
    ),
    // 0.0.0.0/8 is "this network": Linux connects 0.0.0.0 to loopback.
    (
        Why::Unspecified,
        IpNet::new_assert(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 8),
    ),
    (
        Why::Unspecified,
        IpNet::new_assert(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 128),
    ),
    (
        Why::Multicast,
        IpNet::new_assert(IpAddr::V4(Ipv4Addr::new(224, 0, 0, 0)), 4),
    ),
    (
        Why::Multicast,
        IpNet::new_assert(IpAddr::V6(Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0)), 8),
    ),
];

/// Why an address is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Why {
    /// One of the API server's addresses.
    ApiServer,
    /// 127.0.0.0/8 or ::1.
    Loopback,
    /// 169.254.0.0/16 (cloud metadata services) or fe80::/10.
    LinkLocal,
    /// 0.0.0.0/8 or ::.
    Unspecified,
    /// 224.0.0.0/4 or ff00::/8.
    Multicast,
    /// Outside every entry of a non-empty `--allowed-egress`.
    NotListed,
}

impl fmt::Display for Why {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Why::ApiServer => "it is the API server's address",
            Why::Loopback => "it is a loopback address",
            Why::LinkLocal => "it is a link-local address",
            Why::Unspecified => "it is an unspecified address",
            Why::Multicast => "it is a multicast address",
            Why::NotListed => "it is outside the allowed CIDRs",
        })
    }
}

/// Whether a request may go to `ip`, given `--allowed-egress` and the API server's addresses.
///
/// # Errors
///
/// Why not.
pub fn decide(ip: IpAddr, allowed: &[IpNet], api_server: &[IpAddr]) -> Result<(), Why> {
    // ::ffff:127.0.0.1 is 127.0.0.1.
    let ip = ip.to_canonical();
    let listed = |net: &&IpNet| net.contains(&ip);
    if api_server.iter().any(|a| a.to_canonical() == ip) {
        // Only an entry naming exactly this address opens it.
        let exact = |net: &&IpNet| net.prefix_len() == net.max_prefix_len();
        return match allowed.iter().filter(listed).any(|net| exact(&net)) {
            true => Ok(()),
            false => Err(Why::ApiServer),
        };
    }
    if let Some((why, range)) = GUARDED.iter().find(|(_, range)| range.contains(&ip)) {
        return match allowed.iter().filter(listed).any(|net| range.contains(net)) {
            true => Ok(()),
            false => Err(*why),
        };
    }
    if allowed.is_empty() || allowed.iter().any(|net| net.contains(&ip)) {
        Ok(())
    } else {
        Err(Why::NotListed)
    }
}

/// A request refused by [`decide`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("egress to {host} ({ip}) is not allowed: {why}; list it in --allowed-egress")]
pub struct Refused {
    /// The host of the URL, as written.
    pub host: String,
    /// The address it is or resolved to.
    pub ip: IpAddr,
    /// Why.
    pub why: Why,
}

impl Refused {
    /// The refusal without the host and address, for a URL that must not be shown (one read
    /// from a Secret): `what` says which URL it was.
    pub fn redacted(&self, what: &str) -> String {
        format!(
            "egress to the host of {what} is not allowed: {}; list it in --allowed-egress",
            self.why
        )
    }
}

/// `--allowed-egress`: CIDRs or single addresses, comma-separated; empty for none.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllowedEgress(pub Vec<IpNet>);

impl FromStr for AllowedEgress {
    type Err = String;

    fn from_str(list: &str) -> Result<Self, String> {
        let entries = list.split(',').map(str::trim).filter(|e| !e.is_empty());
        entries
            .map(|entry| {
                entry
                    .parse::<IpNet>()
                    .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
                    .map(|net| net.trunc())
                    .map_err(|_| format!("{entry:?} is neither a CIDR nor an IP address"))
            })
            .collect::<Result<_, _>>()
            .map(AllowedEgress)
    }
}

/// The allow-list and the API server's addresses: what [`decide`] needs.
#[derive(Clone, Debug, Default)]
pub struct Egress {
    allowed: Arc<Vec<IpNet>>,
    api_server: Arc<Vec<IpAddr>>,
}

impl Egress {
    /// The rule for `allowed` (`--allowed-egress`) and the API server at `api_server`.
    pub fn new(allowed: Vec<IpNet>, api_server: Vec<IpAddr>) -> Self {
        Egress {
            allowed: Arc::new(allowed),
            api_server: Arc::new(api_server),
        }
    }

    /// The same, allowing `more` as well.
    #[must_use]
    pub fn allowing(&self, more: impl IntoIterator<Item = IpNet>) -> Self {
        let mut allowed = (*self.allowed).clone();
        allowed.extend(more);
        Egress::new(allowed, (*self.api_server).clone())
    }

    /// The same, with the API server at `addresses` as well.
    #[must_use]
    pub fn with_api_server(&self, addresses: impl IntoIterator<Item = IpAddr>) -> Self {
        let mut api_server = (*self.api_server).clone();
        api_server.extend(addresses);
        Egress::new((*self.allowed).clone(), api_server)
    }

    /// The entries of `--allowed-egress`.
    pub fn allowed(&self) -> &[IpNet] {
        &self.allowed
    }

    /// The API server's addresses.
    pub fn api_server(&self) -> &[IpAddr] {
        &self.api_server
    }

    /// Whether a request for `host` may go to `ip`.
    ///
    /// # Errors
    ///
    /// The refusal, saying why.
    pub fn check(&self, host: &str, ip: IpAddr) -> Result<(), Refused> {
        decide(ip, &self.allowed, &self.api_server).map_err(|why| Refused {
            host: host.to_owned(),
            ip,
            why,
        })
    }

    /// Checks the host of `url` when it is an IP address (names are checked as they resolve).
    ///
    /// # Errors
    ///
    /// The refusal, saying why.
    pub fn check_url(&self, url: &reqwest::Url) -> Result<(), Refused> {
        // The URL parser writes IPv4 hosts in dotted form (0x7f.1 becomes 127.0.0.1) and
        // IPv6 ones in brackets.
        let Some(host) = url.host_str() else { return Ok(()) };
        match host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
            Ok(ip) => self.check(host, ip),
            Err(_) => Ok(()),
        }
    }

    /// An HTTP client that sends only where this allows, follows no redirects and uses no proxy
    /// (through a proxy, the addresses it connects to could not be checked).
    ///
    /// # Errors
    ///
    /// The TLS backend could not start.
    pub fn client(&self) -> Result<HttpClient, reqwest::Error> {
        let client = reqwest::Client::builder()
            .dns_resolver(Arc::new(FilteringResolver { egress: self.clone() }))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()?;
        Ok(HttpClient {
            client,
            egress: self.clone(),
        })
    }
}

/// The addresses of the API server the client configuration points at (its URL's host,
/// resolved now if it is a name) and of the `kubernetes` Service (`KUBERNETES_SERVICE_HOST`).
pub async fn api_server_addresses(config: &kube::Config) -> Vec<IpAddr> {
    let mut addresses = Vec::new();
    if let Some(host) = config.cluster_url.host() {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        match host.parse::<IpAddr>() {
            Ok(ip) => addresses.push(ip),
            Err(_) => {
                let port = config.cluster_url.port_u16().unwrap_or(443);
                if let Ok(resolved) = tokio::net::lookup_host((host, port)).await {
                    addresses.extend(resolved.map(|a| a.ip()));
                }
            }
        }
    }
    if let Some(ip) = std::env::var("KUBERNETES_SERVICE_HOST")
        .ok()
        .and_then(|h| h.parse::<IpAddr>().ok())
    {
        addresses.push(ip);
    }
    addresses.sort();
    addresses.dedup();
    addresses
}

/// Resolves names as the system does, then drops every address [`decide`] refuses; a name
/// left with none fails with the first refusal.
struct FilteringResolver {
    egress: Egress,
}

impl Resolve for FilteringResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let egress = self.egress.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let resolved: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut refused = None;
            let mut allowed = Vec::with_capacity(resolved.len());
            for address in resolved {
                match egress.check(&host, address.ip()) {
                    Ok(()) => allowed.push(address),
                    Err(refusal) => {
                        refused.get_or_insert(refusal);
                    }
                }
            }
            match (allowed.is_empty(), refused) {
                (true, Some(refusal)) => Err(Box::new(refusal) as Box<dyn std::error::Error + Send + Sync>),
                _ => Ok(Box::new(allowed.into_iter()) as Addrs),
            }
        })
    }
}

/// A request that was not sent, or failed.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// Its address is not allowed.
    #[error(transparent)]
    Refused(Refused),
    /// It failed otherwise (the error may name the URL: see [`reqwest::Error::without_url`]).
    #[error(transparent)]
    Failed(reqwest::Error),
}

/// An HTTP client that checks every address it connects to: see [`Egress::client`].
#[derive(Clone, Debug)]
pub struct HttpClient {
    client: reqwest::Client,
    egress: Egress,
}

impl HttpClient {
    /// A GET request to `url`, for [`HttpClient::send`].
    pub fn get(&self, url: reqwest::Url) -> reqwest::RequestBuilder {
        self.client.get(url)
    }

    /// A POST request to `url`, for [`HttpClient::send`].
    pub fn post(&self, url: reqwest::Url) -> reqwest::RequestBuilder {
        self.client.post(url)
    }

    /// Sends `request` if its host is allowed; a name is checked on every address it resolves to.
    ///
    /// # Errors
    ///
    /// [`SendError::Refused`] when the address is not allowed; [`SendError::Failed`] otherwise.
    pub async fn send(&self, request: reqwest::RequestBuilder) -> Result<reqwest::Response, SendError> {
        let request = request.build().map_err(SendError::Failed)?;
        self.egress.check_url(request.url()).map_err(SendError::Refused)?;
        self.client
            .execute(request)
            .await
            .map_err(|error| match refusal_in(&error) {
                Some(refusal) => SendError::Refused(refusal.clone()),
                None => SendError::Failed(error),
            })
    }
}

/// An answer read by [`HttpClient::fetch_json`]: its HTTP status and its body as JSON (`None`
/// when it is not JSON).
#[derive(Debug)]
pub struct JsonAnswer {
    /// The HTTP status.
    pub status: reqwest::StatusCode,
    /// The body, if it is JSON.
    pub json: Option<serde_json::Value>,
}

impl HttpClient {
    /// Sends `request` ([`HttpClient::send`]) and reads an answer of at most `max_bytes` as
    /// JSON. `what` names the request in errors (`call`, `query`).
    ///
    /// # Errors
    ///
    /// Why no answer was read, in words that carry nothing the remote end sent (a TLS error
    /// would name its certificate's hosts; a body could be anything the address serves).
    pub async fn fetch_json(
        &self,
        request: reqwest::RequestBuilder,
        what: &str,
        max_bytes: usize,
    ) -> Result<JsonAnswer, String> {
        let response = self.send(request).await.map_err(|error| describe(&error, what))?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|error| describe(&SendError::Failed(error), what))?;
        if bytes.len() > max_bytes {
            return Err(format!("the answer is {} bytes, more than {max_bytes}", bytes.len()));
        }
        Ok(JsonAnswer {
            status,
            json: serde_json::from_slice(&bytes).ok(),
        })
    }
}

/// Why a request failed, in words that carry nothing the remote end sent.
fn describe(error: &SendError, what: &str) -> String {
    match error {
        SendError::Refused(refused) => refused.to_string(),
        SendError::Failed(error) if error.is_timeout() => format!("the {what} timed out"),
        SendError::Failed(error) if error.is_connect() => match io_kind(error) {
            Some(kind) => format!("cannot connect: {kind}"),
            None => "cannot connect".into(),
        },
        SendError::Failed(error) if error.is_body() || error.is_decode() => "cannot read the answer".into(),
        SendError::Failed(_) => format!("the {what} failed"),
    }
}

/// The kind of the operating system's error behind `error`, e.g. "connection refused".
fn io_kind(error: &(dyn std::error::Error + 'static)) -> Option<std::io::ErrorKind> {
    let mut current = Some(error);
    while let Some(error) = current {
        if let Some(io) = error.downcast_ref::<std::io::Error>() {
            return Some(io.kind());
        }
        current = error.source();
    }
    None
}

/// The refusal of the resolver somewhere in `error`'s sources.
fn refusal_in<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a Refused> {
    let mut current = Some(error);
    while let Some(error) = current {
        if let Some(refusal) = error.downcast_ref::<Refused>() {
            return Some(refusal);
        }
        // An io::Error's source skips the error it wraps.
        let wrapped = error
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<Refused>());
        if wrapped.is_some() {
            return wrapped;
        }
        current = error.source();
    }
    None
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn nets(list: &str) -> Vec<IpNet> {
        list.parse::<AllowedEgress>().unwrap().0
    }

    #[test]
    fn loopback_link_local_unspecified_and_multicast_are_refused_by_default() {
        for (address, why) in [
            ("127.0.0.1", Why::Loopback),
            ("127.8.9.10", Why::Loopback),
            ("::1", Why::Loopback),
            ("::ffff:127.0.0.1", Why::Loopback),
            ("169.254.169.254", Why::LinkLocal),
            ("fe80::1", Why::LinkLocal),
            ("0.0.0.0", Why::Unspecified),
            ("::", Why::Unspecified),
            ("224.0.0.1", Why::Multicast),
            ("ff02::1", Why::Multicast),
        ] {
            assert_eq!(decide(ip(address), &[], &[]), Err(why), "{address}");
        }
    }

    #[test]
    fn anything_else_is_allowed_while_the_list_is_empty_and_only_listed_cidrs_once_it_is_not() {
        assert_eq!(decide(ip("10.1.2.3"), &[], &[]), Ok(()));
        assert_eq!(decide(ip("93.184.216.34"), &[], &[]), Ok(()));
        let listed = nets("10.0.0.0/8, 192.168.1.7");
        assert_eq!(decide(ip("10.1.2.3"), &listed, &[]), Ok(()));
        assert_eq!(decide(ip("192.168.1.7"), &listed, &[]), Ok(()));
        assert_eq!(decide(ip("192.168.1.8"), &listed, &[]), Err(Why::NotListed));
        assert_eq!(decide(ip("93.184.216.34"), &listed, &[]), Err(Why::NotListed));
    }

    #[test]
    fn the_api_server_is_refused_unless_its_exact_address_is_listed() {
        let api = [ip("10.96.0.1")];
        assert_eq!(decide(ip("10.96.0.1"), &[], &api), Err(Why::ApiServer));
        assert_eq!(
            decide(ip("10.96.0.1"), &nets("10.0.0.0/8"), &api),
            Err(Why::ApiServer),
            "a broad entry does not open the API server"
        );
        assert_eq!(decide(ip("10.96.0.2"), &nets("10.0.0.0/8"), &api), Ok(()));
        assert_eq!(decide(ip("10.96.0.1"), &nets("10.96.0.1/32"), &api), Ok(()));
        // On loopback (a local control plane), the API server rule comes first.
        let local = [ip("127.0.0.1")];
        assert_eq!(
            decide(ip("127.0.0.1"), &nets("127.0.0.0/8"), &local),
            Err(Why::ApiServer)
        );
        assert_eq!(decide(ip("127.0.0.2"), &nets("127.0.0.0/8"), &local), Ok(()));
    }

    #[test]
    fn a_guarded_range_opens_only_to_an_entry_within_it() {
        assert_eq!(decide(ip("169.254.169.254"), &nets("169.254.169.254/32"), &[]), Ok(()));
        assert_eq!(
            decide(ip("169.254.169.254"), &nets("0.0.0.0/0"), &[]),
            Err(Why::LinkLocal),
            "everything does not include the metadata service"
        );
        assert_eq!(decide(ip("127.0.0.1"), &nets("127.0.0.1"), &[]), Ok(()));
        assert_eq!(decide(ip("127.0.0.2"), &nets("127.0.0.1"), &[]), Err(Why::Loopback));
        assert_eq!(decide(ip("::1"), &nets("127.0.0.0/8"), &[]), Err(Why::Loopback));
    }

    #[test]
    fn the_flag_takes_cidrs_and_addresses_and_refuses_anything_else() {
        assert_eq!(nets(""), Vec::<IpNet>::new());
        assert_eq!(
            nets(" 10.0.0.0/8 ,::1,192.168.1.9/24"),
            vec![
                "10.0.0.0/8".parse().unwrap(),
                "::1/128".parse().unwrap(),
                "192.168.1.0/24".parse().unwrap()
            ]
        );
        let error = "10.0.0.0/8,example.com".parse::<AllowedEgress>().unwrap_err();
        assert!(error.contains("\"example.com\""), "{error}");
    }

    #[test]
    fn a_refusal_says_where_why_and_what_to_do() {
        let refused = Egress::default().check("metadata", ip("169.254.169.254")).unwrap_err();
        assert_eq!(
            refused.to_string(),
            "egress to metadata (169.254.169.254) is not allowed: it is a link-local address; list it in --allowed-egress"
        );
        assert_eq!(
            refused.redacted("the URL from Secret s key k"),
            "egress to the host of the URL from Secret s key k is not allowed: it is a link-local address; list it in --allowed-egress"
        );
    }

    #[test]
    fn ip_literal_hosts_are_checked_before_sending() {
        let egress = Egress::default();
        let url = |text: &str| reqwest::Url::parse(text).unwrap();
        assert_eq!(egress.check_url(&url("http://[::1]:8080/x")).unwrap_err().host, "[::1]");
        // WHATWG URL parsing reads 0x7f.1 as 127.0.0.1.
        assert_eq!(egress.check_url(&url("http://0x7f.1/")).unwrap_err().why, Why::Loopback);
        assert_eq!(egress.check_url(&url("http://prometheus.monitoring:9090/")), Ok(()));
    }

    #[tokio::test]
    async fn a_name_resolving_to_loopback_is_refused_and_nothing_is_sent() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let client = Egress::default().client().unwrap();
        let by_name = reqwest::Url::parse(&format!("http://localhost:{port}/")).unwrap();
        match client.send(client.get(by_name)).await {
            Err(SendError::Refused(refused)) => {
                assert_eq!((refused.host.as_str(), refused.why), ("localhost", Why::Loopback));
            }
            other => panic!("not refused: {other:?}"),
        }
        let by_address = reqwest::Url::parse(&format!("http://127.0.0.1:{port}/")).unwrap();
        assert!(matches!(
            client.send(client.get(by_address)).await,
            Err(SendError::Refused(_))
        ));
        // A connection made would be waiting in the backlog by now.
        let accepted = futures::FutureExt::now_or_never(listener.accept());
        assert!(accepted.is_none(), "no connection reached the listener");
    }

    #[tokio::test]
    async fn a_listed_loopback_is_reached_and_redirects_are_not_followed() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let app = axum::Router::new().route(
            "/",
            axum::routing::get(|| async {
                (
                    http::StatusCode::FOUND,
                    [(http::header::LOCATION, "http://169.254.169.254/")],
                )
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        let client = Egress::default().allowing([LOCALHOST]).client().unwrap();
        let url = reqwest::Url::parse(&format!("http://localhost:{port}/")).unwrap();
        let response = client.send(client.get(url)).await.unwrap();
        assert_eq!(response.status(), http::StatusCode::FOUND);
    }
}
