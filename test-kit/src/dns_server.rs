//! A real authoritative DNS server for tests, built on hickory-server: it serves `.test`
//! names on 127.0.0.1 (random port, UDP and TCP on the same port), with records the test
//! changes at run time (A, AAAA, TXT, MX) and failure modes it switches on. It never echoes
//! EDNS, so a UDP answer over 512 bytes goes out truncated (TC set) and the client must ask
//! again over TCP, as with many real servers; [`Seen::protocol`] shows which it used.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use hickory_proto::{
    op::{Metadata, ResponseCode},
    rr::{
        Name, RData, Record, RecordType,
        rdata::{A, AAAA, MX, TXT},
    },
};
pub use hickory_server::net::xfer::Protocol;
use hickory_server::{
    Server,
    server::{Request, RequestHandler, ResponseHandler, ResponseInfo},
    zone_handler::MessageResponseBuilder,
};

/// How the server answers every query.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// From the records: the addresses of the type asked for, NODATA when the name has none of
    /// that type, NXDOMAIN for unknown names.
    Normal,
    ServFail,
    Refused,
    NxDomain,
    /// NOERROR with no records, for every name.
    Empty,
    /// No answer at all: the client times out.
    Silent,
}

/// One query the server received.
#[derive(Clone, Debug)]
pub struct Seen {
    pub name: String,
    pub record_type: RecordType,
    pub at: Instant,
    /// UDP or TCP.
    pub protocol: Protocol,
}

#[derive(Default)]
struct Zone {
    /// Fully qualified lowercase name -> (addresses, TTL).
    records: BTreeMap<String, (Vec<IpAddr>, u32)>,
    /// Name -> (TXT records, each one text, TTL).
    txt: BTreeMap<String, (Vec<String>, u32)>,
    /// Name -> (MX hosts, TTL).
    mx: BTreeMap<String, (Vec<String>, u32)>,
    mode: Option<Mode>,
    /// Per-name modes, over the server-wide one.
    name_modes: BTreeMap<String, Mode>,
    seen: Vec<Seen>,
}

#[derive(Clone)]
struct Handler {
    zone: Arc<Mutex<Zone>>,
}

/// The running server; stops (sockets closed) on [`TestDns::stop`] or drop.
pub struct TestDns {
    addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
    server: Option<Server<Handler>>,
}

impl TestDns {
    /// Binds UDP and TCP on the same random port of 127.0.0.1 and starts serving. Must be
    /// called inside a tokio runtime.
    pub async fn start() -> TestDns {
        let (udp, tcp) = bind_pair("127.0.0.1".parse().expect("loopback"));
        TestDns::serve(udp, tcp)
    }

    /// Serves on sockets bound elsewhere (e.g. inside a network namespace with
    /// [`bind_pair`]). Must be called inside a tokio runtime.
    pub fn serve(udp: std::net::UdpSocket, tcp: std::net::TcpListener) -> TestDns {
        let addr = udp.local_addr().expect("UDP address");
        udp.set_nonblocking(true).expect("nonblocking UDP");
        tcp.set_nonblocking(true).expect("nonblocking TCP");
        let zone = Arc::new(Mutex::new(Zone::default()));
        let mut server = Server::new(Handler { zone: zone.clone() });
        server.register_socket(tokio::net::UdpSocket::from_std(udp).expect("tokio UDP"));
        server.register_listener(
            tokio::net::TcpListener::from_std(tcp).expect("tokio TCP"),
            Duration::from_secs(5),
            16,
        );
        TestDns {
            addr,
            zone,
            server: Some(server),
        }
    }

    /// Where to send queries (`--dns-server`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Makes `name` resolve to `addrs` (A and AAAA records as the addresses' families say)
    /// with `ttl` seconds. An empty list makes the name exist without addresses (NODATA).
    pub fn set(&self, name: &str, addrs: &[&str], ttl: u32) {
        let addrs = addrs
            .iter()
            .map(|a| a.parse().expect("test address"))
            .collect();
        self.zone
            .lock()
            .expect("zone lock")
            .records
            .insert(fqdn(name), (addrs, ttl));
    }

    /// Gives `name` these TXT records (each text one record, split into 255-byte strings as
    /// the wire format needs) with `ttl` seconds. The name exists from then on.
    pub fn set_txt(&self, name: &str, texts: &[&str], ttl: u32) {
        let texts = texts.iter().map(|t| t.to_string()).collect();
        self.zone
            .lock()
            .expect("zone lock")
            .txt
            .insert(fqdn(name), (texts, ttl));
    }

    /// Gives `name` MX records naming `hosts` with `ttl` seconds.
    pub fn set_mx(&self, name: &str, hosts: &[&str], ttl: u32) {
        let hosts = hosts.iter().map(|h| fqdn(h)).collect();
        self.zone
            .lock()
            .expect("zone lock")
            .mx
            .insert(fqdn(name), (hosts, ttl));
    }

    /// Removes `name` (all its records): queries for it get NXDOMAIN.
    pub fn remove(&self, name: &str) {
        let mut zone = self.zone.lock().expect("zone lock");
        let name = fqdn(name);
        zone.records.remove(&name);
        zone.txt.remove(&name);
        zone.mx.remove(&name);
    }

    pub fn set_mode(&self, mode: Mode) {
        self.zone.lock().expect("zone lock").mode = Some(mode);
    }

    /// Answers queries for `name` alone in `mode` (`Mode::Normal` to heal it).
    pub fn set_name_mode(&self, name: &str, mode: Mode) {
        self.zone
            .lock()
            .expect("zone lock")
            .name_modes
            .insert(fqdn(name), mode);
    }

    /// Every query so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.zone.lock().expect("zone lock").seen.clone()
    }

    /// The queries for `name` (A and AAAA).
    pub fn seen_for(&self, name: &str) -> Vec<Seen> {
        let name = fqdn(name);
        self.seen().into_iter().filter(|s| s.name == name).collect()
    }

    /// Shuts the server down: its sockets close, so queries meet a closed port.
    pub async fn stop(&mut self) {
        if let Some(mut server) = self.server.take() {
            let _ = server.shutdown_gracefully().await;
        }
    }
}

impl Drop for TestDns {
    fn drop(&mut self) {
        if let Some(server) = &self.server {
            server.shutdown_token().cancel();
        }
    }
}

/// A test DNS server on the loopback of the namespace `netns`, served by a runtime of its own
/// (returned: the caller keeps it alive for as long as the server).
pub fn serve_in(netns: &crate::netns::Netns) -> (tokio::runtime::Runtime, TestDns) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let (udp, tcp) = netns
        .enter(|| bind_pair("127.0.0.1".parse().expect("loopback")))
        .expect("entering the namespace");
    let dns = {
        let _inside = runtime.enter();
        TestDns::serve(udp, tcp)
    };
    (runtime, dns)
}

/// A UDP socket and a TCP listener on the same free port of `ip`.
pub fn bind_pair(ip: IpAddr) -> (std::net::UdpSocket, std::net::TcpListener) {
    for _ in 0..50 {
        let udp = std::net::UdpSocket::bind((ip, 0)).expect("binding UDP");
        let port = udp.local_addr().expect("UDP address").port();
        if let Ok(tcp) = std::net::TcpListener::bind((ip, port)) {
            return (udp, tcp);
        }
    }
    panic!("no port free for both UDP and TCP on {ip}");
}

fn fqdn(name: &str) -> String {
    let mut name = name.to_ascii_lowercase();
    if !name.ends_with('.') {
        name.push('.');
    }
    name
}

impl Zone {
    /// The records of `record_type` for `name` (owned by `owner`, the query's spelling), or
    /// `None` when the name does not exist at all.
    fn answer(&self, owner: &Name, name: &str, record_type: RecordType) -> Option<Vec<Record>> {
        let exists = self.records.contains_key(name)
            || self.txt.contains_key(name)
            || self.mx.contains_key(name);
        if !exists {
            return None;
        }
        let (data, ttl): (Vec<RData>, u32) = match record_type {
            RecordType::A | RecordType::AAAA => match self.records.get(name) {
                Some((addrs, ttl)) => (
                    addrs
                        .iter()
                        .filter_map(|ip| match (record_type, ip) {
                            (RecordType::A, IpAddr::V4(v4)) => Some(RData::A(A(*v4))),
                            (RecordType::AAAA, IpAddr::V6(v6)) => Some(RData::AAAA(AAAA(*v6))),
                            _ => None,
                        })
                        .collect(),
                    *ttl,
                ),
                None => (Vec::new(), 0),
            },
            RecordType::TXT => match self.txt.get(name) {
                Some((texts, ttl)) => (
                    texts
                        .iter()
                        .map(|text| RData::TXT(TXT::new(split_255(text))))
                        .collect(),
                    *ttl,
                ),
                None => (Vec::new(), 0),
            },
            RecordType::MX => match self.mx.get(name) {
                Some((hosts, ttl)) => (
                    hosts
                        .iter()
                        .map(|host| {
                            RData::MX(MX::new(10, Name::from_ascii(host).expect("test MX host")))
                        })
                        .collect(),
                    *ttl,
                ),
                None => (Vec::new(), 0),
            },
            _ => (Vec::new(), 0),
        };
        Some(
            data.into_iter()
                .map(|rdata| Record::from_rdata(owner.clone(), ttl, rdata))
                .collect(),
        )
    }
}

/// A TXT record's text as character-strings of at most 255 bytes (RFC 1035 3.3.14).
fn split_255(text: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut rest = text;
    while rest.len() > 255 {
        let mut at = 255;
        while !rest.is_char_boundary(at) {
            at -= 1;
        }
        parts.push(rest[..at].to_owned());
        rest = &rest[at..];
    }
    parts.push(rest.to_owned());
    parts
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: hickory_server::net::runtime::Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let builder = MessageResponseBuilder::from_message_request(request);
        let info = match request.request_info() {
            Ok(info) => info,
            Err(_) => {
                let response = builder.error_msg(&request.metadata, ResponseCode::FormErr);
                return send(&mut response_handle, response, &request.metadata).await;
            }
        };
        let name = fqdn(&info.query.name().to_string());
        let record_type = info.query.query_type();
        let owner: Name = info.query.original().name().clone();
        let (mode, found) = {
            let mut zone = self.zone.lock().expect("zone lock");
            zone.seen.push(Seen {
                name: name.clone(),
                record_type,
                at: Instant::now(),
                protocol: request.protocol(),
            });
            let mode = zone
                .name_modes
                .get(&name)
                .copied()
                .or(zone.mode)
                .unwrap_or(Mode::Normal);
            (mode, zone.answer(&owner, &name, record_type))
        };
        let code = match (mode, &found) {
            (Mode::Silent, _) => {
                // Say nothing: the client's query times out.
                let mut metadata = Metadata::response_from_request(&request.metadata);
                metadata.response_code = ResponseCode::ServFail;
                return ResponseInfo::from(hickory_proto::op::Header {
                    metadata,
                    counts: Default::default(),
                });
            }
            (Mode::ServFail, _) => ResponseCode::ServFail,
            (Mode::Refused, _) => ResponseCode::Refused,
            (Mode::NxDomain, _) | (Mode::Normal, None) => ResponseCode::NXDomain,
            (Mode::Empty, _) | (Mode::Normal, Some(_)) => ResponseCode::NoError,
        };
        let records: Vec<Record> = match (mode, found) {
            (Mode::Normal, Some(records)) => records,
            _ => Vec::new(),
        };
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.authoritative = true;
        metadata.response_code = code;
        let response = builder.build(metadata, records.iter(), [], [], []);
        send(&mut response_handle, response, &request.metadata).await
    }
}

async fn send<'a, R: ResponseHandler>(
    handle: &mut R,
    response: hickory_server::zone_handler::MessageResponse<
        '_,
        'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
    >,
    request: &Metadata,
) -> ResponseInfo {
    match handle.send_response(response).await {
        Ok(info) => info,
        Err(_) => {
            let mut metadata = Metadata::response_from_request(request);
            metadata.response_code = ResponseCode::ServFail;
            ResponseInfo::from(hickory_proto::op::Header {
                metadata,
                counts: Default::default(),
            })
        }
    }
}
