//! DNS-driven allowlist: the filtering service publishes its relays as DNS names; mxguard keeps
//! the allowlist equal to the static CIDRs plus every A and AAAA address of every configured
//! name, follows the records' TTLs, and fails static (see `docs/dns.md`).
//!
//! The parts, each testable on its own:
//! - [`name`]: validated, fully qualified host names;
//! - [`guards`]: what every DNS-derived prefix must pass (minimum length, allowed ranges, cap);
//! - [`spf`], [`spf_expand`], [`spf_source`]: `--allow-spf` records parsed, expanded into
//!   prefixes with their origin chains, and kept per source like names;
//! - [`resolver`]: the [`Resolve`] trait and its hickory implementation, which turns a lookup
//!   into a [`NameAnswer`] (per family: records with a TTL, no data, or a classified failure);
//! - [`refresh`]: the per-name state machine (pure: time is a parameter): when to refresh,
//!   back-off, fail-static, stale-grace expiry;
//! - [`sources`]: the union of all sources with per-prefix reference counts;
//! - [`state_file`]: last known good addresses on disk, versioned, written atomically;
//! - [`engine`]: the task that drives all of the above and hands the wanted allowlist to the
//!   daemon, and [`Enforcer`], which writes it into the filter and picks the action.

pub mod engine;
pub mod guards;
pub mod name;
pub mod refresh;
pub mod resolver;
pub mod sources;
pub mod spf;
pub mod spf_expand;
pub mod spf_source;
pub mod state_file;

use std::{collections::BTreeSet, net::SocketAddr, path::PathBuf, time::Duration};

pub use engine::{AllowlistUpdate, DnsEngine, DnsStats, Enforcer, SourceStats};
pub use guards::Guards;
pub use name::HostName;
pub use refresh::RefreshPolicy;
pub use resolver::{
    Answer, Dnssec, FailureKind, FamilyAnswer, HickoryResolve, NameAnswer, Resolve,
};

/// Default for `--dns-min-refresh`.
pub const DEFAULT_MIN_REFRESH: Duration = Duration::from_secs(30);
/// Default for `--dns-max-refresh`.
pub const DEFAULT_MAX_REFRESH: Duration = Duration::from_secs(3600);
/// Default for `--dns-stale-grace`.
pub const DEFAULT_STALE_GRACE: Duration = Duration::from_secs(24 * 3600);
/// Default for `--state-dir`.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/mxguard";

/// Everything the DNS side needs, validated (built by `cli::RunArgs::plan`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsSettings {
    /// The names to resolve, fully qualified, without duplicates.
    pub hosts: BTreeSet<HostName>,
    /// The `--allow-spf` records to expand.
    pub spf: BTreeSet<HostName>,
    /// What every DNS-derived prefix must pass.
    pub guards: Guards,
    pub dnssec: Dnssec,
    /// Name servers to ask; empty means the system's resolv.conf.
    pub servers: Vec<SocketAddr>,
    /// Per-query timeout; `None` keeps the resolver's (resolv.conf or 5 s).
    pub timeout: Option<Duration>,
    pub policy: RefreshPolicy,
    /// Directory of the state file.
    pub state_dir: PathBuf,
}
