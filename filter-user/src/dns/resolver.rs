//! Looking a name up for A and AAAA, and classifying what came back.

use std::{
    collections::BTreeSet,
    fmt,
    future::Future,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use anyhow::Context as _;
use hickory_resolver::{
    TokioResolver,
    config::{ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig},
    net::{DnsError, NetError, NoRecords, runtime::TokioRuntimeProvider},
    proto::{
        dnssec::{Proof, TrustAnchors},
        op::ResponseCode,
        rr::{RData, Record, RecordType},
    },
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
    /// More prefixes than `--dns-max-prefixes`: the whole answer was refused.
    OverCap(usize),
    /// Every prefix of the answer was refused by a guard (min prefix, allow-within).
    AllRefused,
    /// An SPF record that cannot be used (syntax, RFC 7208 limits, an include loop, ...).
    SpfPermError(String),
    /// `--dns-dnssec validate`: the answer is bogus or not signed.
    Dnssec(String),
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
            FailureKind::OverCap(found) => write!(f, "{found} prefixes, over --dns-max-prefixes"),
            FailureKind::AllRefused => f.write_str("every prefix refused by the guards"),
            FailureKind::SpfPermError(detail) => write!(f, "unusable SPF record ({detail})"),
            FailureKind::Dnssec(detail) => write!(f, "DNSSEC validation failed ({detail})"),
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

/// What a TXT or MX query produced (the SPF expander's queries).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer<T> {
    /// `ttl` is the smallest TTL of the answer's records.
    Records {
        data: T,
        ttl: Duration,
    },
    /// NOERROR without records of this type (NODATA).
    NoData,
    Failed(FailureKind),
}

/// Something that can look names up: hickory in production, a fake in unit tests.
pub trait Resolve: Clone + Send + Sync + 'static {
    fn lookup(&self, name: &HostName) -> impl Future<Output = NameAnswer> + Send;

    /// The name's TXT records, each one's strings joined (RFC 7208 3.3).
    fn txt(&self, name: &HostName) -> impl Future<Output = Answer<Vec<String>>> + Send {
        let _ = name;
        async { Answer::Failed(FailureKind::Other("TXT lookups not supported".into())) }
    }

    /// The name's MX hosts.
    fn mx(&self, name: &HostName) -> impl Future<Output = Answer<Vec<HostName>>> + Send {
        let _ = name;
        async { Answer::Failed(FailureKind::Other("MX lookups not supported".into())) }
    }
}

/// `--dns-dnssec`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Dnssec {
    #[default]
    Off,
    /// Validate every answer; anything not proven secure is a failure. The trust anchor is
    /// hickory's root keys, or the DNSKEY records in the given file.
    Validate { trust_anchor: Option<PathBuf> },
}

/// hickory-resolver, with its cache off: every refresh asks the server, and record TTLs come
/// back as the server sent them.
#[derive(Clone)]
pub struct HickoryResolve {
    resolver: TokioResolver,
    validate: bool,
}

impl HickoryResolve {
    /// `servers` empty: the system's resolv.conf (its options included). `timeout` overrides
    /// the per-query timeout.
    pub fn new(
        servers: &[SocketAddr],
        timeout: Option<Duration>,
        dnssec: &Dnssec,
    ) -> anyhow::Result<Self> {
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
        let validate = matches!(dnssec, Dnssec::Validate { .. });
        if let Dnssec::Validate { trust_anchor } = dnssec {
            // The DO bit and the signatures need EDNS.
            options.edns0 = true;
            options.validate = true;
            if let Some(path) = trust_anchor {
                let anchors = read_trust_anchor(path)?;
                builder = builder.with_trust_anchor(std::sync::Arc::new(anchors));
            }
        }
        let resolver = builder.build().context("building the DNS resolver")?;
        Ok(HickoryResolve { resolver, validate })
    }

    /// One query; with DNSSEC validation, records not proven secure make it a failure.
    async fn query(
        &self,
        name: &HostName,
        record_type: RecordType,
    ) -> Result<Vec<Record>, FamilyAnswer> {
        let query_name = name
            .to_name()
            .map_err(|error| FamilyAnswer::Failed(FailureKind::Other(format!("{error:#}"))))?;
        // cache_size 0 already keeps nothing; clearing makes sure of it.
        self.resolver
            .clear_lookup_cache(query_name.clone(), record_type);
        let lookup = self
            .resolver
            .lookup(query_name, record_type)
            .await
            .map_err(|error| classify(&error))?;
        let records = lookup.answers().to_vec();
        if self.validate
            && let Some(record) = records.iter().find(|r| r.proof != Proof::Secure)
        {
            return Err(FamilyAnswer::Failed(FailureKind::Dnssec(format!(
                "{} {} is {:?}",
                record.name,
                record.record_type(),
                record.proof
            ))));
        }
        Ok(records)
    }

    async fn lookup_family(&self, name: &HostName, record_type: RecordType) -> FamilyAnswer {
        let records = match self.query(name, record_type).await {
            Ok(records) => records,
            Err(answer) => return answer,
        };
        let mut addrs = BTreeSet::new();
        let mut ttl = u32::MAX;
        for record in &records {
            // CNAMEs on the way count for the TTL: the chain is only valid as long as its
            // shortest link.
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

    /// A TXT or MX query: the records' data of type `record_type` and the smallest TTL.
    async fn lookup_data<T>(
        &self,
        name: &HostName,
        record_type: RecordType,
        pick: impl Fn(&RData) -> Option<T>,
    ) -> Answer<Vec<T>> {
        let records = match self.query(name, record_type).await {
            Ok(records) => records,
            Err(FamilyAnswer::Failed(kind)) => return Answer::Failed(kind),
            Err(_) => return Answer::NoData,
        };
        let ttl = records.iter().map(|r| r.ttl).min().unwrap_or(0);
        let data: Vec<T> = records.iter().filter_map(|r| pick(&r.data)).collect();
        if data.is_empty() {
            Answer::NoData
        } else {
            Answer::Records {
                data,
                ttl: Duration::from_secs(u64::from(ttl)),
            }
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

    async fn txt(&self, name: &HostName) -> Answer<Vec<String>> {
        self.lookup_data(name, RecordType::TXT, |data| match data {
            RData::TXT(txt) => Some(
                txt.txt_data
                    .iter()
                    .map(|part| String::from_utf8_lossy(part))
                    .collect::<String>(),
            ),
            _ => None,
        })
        .await
    }

    async fn mx(&self, name: &HostName) -> Answer<Vec<HostName>> {
        self.lookup_data(name, RecordType::MX, |data| match data {
            // The null MX "." (RFC 7505) names no host.
            RData::MX(mx) => mx.exchange.to_ascii().parse().ok(),
            _ => None,
        })
        .await
    }
}

/// Reads a `--dns-trust-anchor` file: DNSKEY records in zone-file syntax, at least one.
pub fn read_trust_anchor(path: &std::path::Path) -> anyhow::Result<TrustAnchors> {
    let read = || -> anyhow::Result<TrustAnchors> {
        let text = std::fs::read_to_string(path)?;
        // An empty anchor would make every answer bogus, silently.
        if !text
            .split_ascii_whitespace()
            .any(|word| word.eq_ignore_ascii_case("DNSKEY"))
        {
            anyhow::bail!("no DNSKEY record in it");
        }
        Ok(text.parse::<TrustAnchors>()?)
    };
    read().with_context(|| format!("reading the DNSSEC trust anchor {}", path.display()))
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
        NetError::Dns(DnsError::DnssecBogus) => FailureKind::Dnssec("bogus".into()),
        other => FailureKind::Other(other.to_string()),
    };
    FamilyAnswer::Failed(kind)
}
