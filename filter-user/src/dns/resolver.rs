//! Looking a name up for A and AAAA, and classifying what came back.

use std::{
    collections::BTreeSet,
    fmt,
    future::Future,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use anyhow::Context as _;
use hickory_resolver::{
    TokioResolver,
    config::{ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig},
    net::{DnsError, NetError, NoRecords, runtime::TokioRuntimeProvider},
    proto::{op::ResponseCode, rr::RecordType},
};

use super::HostName;

/// Why a lookup gave no usable addresses.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FailureKind {
    /// No answer in time (server down or packets lost).
    Timeout,
    /// SERVFAIL.
    ServFail,
    /// REFUSED.
    Refused,
    /// NXDOMAIN: the name does not exist (a broken or hijacked zone, or a typo).
    NxDomain,
    /// NOERROR without a single A or AAAA record for the name.
    Empty,
    /// The server could not be reached (e.g. connection refused).
    Unreachable(String),
    /// Anything else (other response codes, malformed answers, ...).
    Other(String),
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FailureKind::Timeout => f.write_str("timeout"),
            FailureKind::ServFail => f.write_str("SERVFAIL"),
            FailureKind::Refused => f.write_str("REFUSED"),
            FailureKind::NxDomain => f.write_str("NXDOMAIN"),
            FailureKind::Empty => f.write_str("empty answer"),
            FailureKind::Unreachable(detail) => write!(f, "server unreachable ({detail})"),
            FailureKind::Other(detail) => write!(f, "error ({detail})"),
        }
    }
}

/// What one family's query (A or AAAA) produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FamilyAnswer {
    /// At least one address; `ttl` is the smallest TTL of the answer's records (CNAMEs on the
    /// way included), i.e. how long this set may be used.
    Records {
        addrs: BTreeSet<IpAddr>,
        ttl: Duration,
    },
    /// NOERROR without records of this type (NODATA).
    NoData,
    Failed(FailureKind),
}

/// The A and AAAA answers for one name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NameAnswer {
    pub v4: FamilyAnswer,
    pub v6: FamilyAnswer,
}

/// Something that can look names up: hickory in production, a fake in unit tests.
pub trait Resolve: Clone + Send + Sync + 'static {
    fn lookup(&self, name: &HostName) -> impl Future<Output = NameAnswer> + Send;
}

/// hickory-resolver, with its cache off: every refresh asks the server, and record TTLs come
/// back as the server sent them.
#[derive(Clone)]
pub struct HickoryResolve {
    resolver: TokioResolver,
}

impl HickoryResolve {
    /// `servers` empty: the system's resolv.conf (its options included). `timeout` overrides
    /// the per-query timeout.
    pub fn new(servers: &[SocketAddr], timeout: Option<Duration>) -> anyhow::Result<Self> {
        let mut builder = if servers.is_empty() {
            TokioResolver::builder_tokio()
                .context("reading the system resolver configuration (/etc/resolv.conf)")?
        } else {
            let name_servers = servers
                .iter()
                .map(|server| {
                    let mut udp = ConnectionConfig::udp();
                    udp.port = server.port();
                    let mut tcp = ConnectionConfig::tcp();
                    tcp.port = server.port();
                    NameServerConfig::new(server.ip(), true, vec![udp, tcp])
                })
                .collect();
            TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(name_servers),
                TokioRuntimeProvider::default(),
            )
        };
        let options = builder.options_mut();
        // Our own state machine keeps the last answer and its TTL; a cache in between would
        // hide record changes and negative answers from it.
        options.cache_size = 0;
        // Only DNS decides: a stray /etc/hosts line must not widen the allowlist.
        options.use_hosts_file = ResolveHosts::Never;
        if let Some(timeout) = timeout {
            options.timeout = timeout;
        }
        let resolver = builder.build().context("building the DNS resolver")?;
        Ok(HickoryResolve { resolver })
    }

    async fn lookup_family(&self, name: &HostName, record_type: RecordType) -> FamilyAnswer {
        let query_name = match name.to_name() {
            Ok(query_name) => query_name,
            Err(error) => return FamilyAnswer::Failed(FailureKind::Other(format!("{error:#}"))),
        };
        // cache_size 0 already keeps nothing; clearing makes sure of it.
        self.resolver
            .clear_lookup_cache(query_name.clone(), record_type);
        match self.resolver.lookup(query_name, record_type).await {
            Ok(lookup) => {
                let mut addrs = BTreeSet::new();
                let mut ttl = u32::MAX;
                for record in lookup.answers() {
                    // CNAMEs on the way count for the TTL: the chain is only valid as long as
                    // its shortest link.
                    ttl = ttl.min(record.ttl);
                    match (record_type, record.data.ip_addr()) {
                        (RecordType::A, Some(ip @ IpAddr::V4(_)))
                        | (RecordType::AAAA, Some(ip @ IpAddr::V6(_))) => {
                            addrs.insert(ip);
                        }
                        _ => {}
                    }
                }
                if addrs.is_empty() {
                    FamilyAnswer::NoData
                } else {
                    FamilyAnswer::Records {
                        addrs,
                        ttl: Duration::from_secs(u64::from(ttl)),
                    }
                }
            }
            Err(error) => classify(&error),
        }
    }
}

impl Resolve for HickoryResolve {
    async fn lookup(&self, name: &HostName) -> NameAnswer {
        let (v4, v6) = tokio::join!(
            self.lookup_family(name, RecordType::A),
            self.lookup_family(name, RecordType::AAAA)
        );
        NameAnswer { v4, v6 }
    }
}

/// Maps hickory's error for one query to what the state machine needs to know.
pub fn classify(error: &NetError) -> FamilyAnswer {
    let kind = match error {
        NetError::Timeout => FailureKind::Timeout,
        NetError::Dns(DnsError::NoRecordsFound(NoRecords { response_code, .. })) => {
            match *response_code {
                ResponseCode::NoError => return FamilyAnswer::NoData,
                ResponseCode::NXDomain => FailureKind::NxDomain,
                ResponseCode::ServFail => FailureKind::ServFail,
                ResponseCode::Refused => FailureKind::Refused,
                code => FailureKind::Other(format!("response code {code}")),
            }
        }
        NetError::Dns(DnsError::ResponseCode(code)) => match *code {
            ResponseCode::ServFail => FailureKind::ServFail,
            ResponseCode::Refused => FailureKind::Refused,
            ResponseCode::NXDomain => FailureKind::NxDomain,
            code => FailureKind::Other(format!("response code {code}")),
        },
        NetError::Io(io) => FailureKind::Unreachable(io.to_string()),
        NetError::NoConnections => FailureKind::Unreachable("no connections available".into()),
        other => FailureKind::Other(other.to_string()),
    };
    FamilyAnswer::Failed(kind)
}
