//! Command-line interface of `mxguard`, and its validation into a [`RunPlan`].

use std::{
    collections::BTreeSet,
    fmt,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    str::FromStr,
    time::Duration,
};

use anyhow::{Context as _, bail};
use clap::{Args, FromArgMatches as _, Parser, Subcommand};
use serde::{Deserialize, Serialize};

use crate::{
    cidr::{Cidr, parse_allow_file},
    dns::{self, DnsSettings, Dnssec, Guards, HostName, RefreshPolicy, guards},
    links::{AttachMode, DEFAULT_PIN_DIR, interface_index},
    milter::{HeaderName, MilterAction, MilterEndpoint, MilterSettings},
};

/// mxguard: drop SMTP SYNs that do not come from your mail-filtering service, in XDP.
#[derive(Debug, Parser)]
#[command(name = "mxguard", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once per process: the size of the `run` variant (many flags) does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Attach the filter to interfaces and keep its allowlist up to date, in the foreground.
    /// The filter is pinned on bpffs: it stays attached and enforcing when the daemon stops
    /// (unless --detach-on-exit), and a restarted daemon takes it over without a gap.
    Run(RunArgs),
    /// Remove the pinned filter from all interfaces (or one), with its pins. Stop the daemon
    /// first: while it runs it holds the filter.
    Detach(DetachArgs),
    /// Validate the configuration (file and flags, as `run` would read them) and print the
    /// effective configuration. Exits non-zero on any error.
    CheckConfig(RunArgs),
    /// Show the pinned filter: interfaces and modes, ports, action, allowlist, counters and
    /// rates. Reads the pins, so it works while the daemon is down.
    Status(StatusArgs),
    /// Write the man pages (DIR/man) and shell completions (DIR/completions), for packaging.
    #[command(hide = true)]
    GenerateDocs {
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct PinArgs {
    /// bpffs directory holding the pinned maps and links (bpffs is mounted on /sys/fs/bpf if
    /// nothing is mounted there yet).
    #[arg(long, value_name = "DIR", default_value = DEFAULT_PIN_DIR)]
    pub pin_dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct DetachArgs {
    /// Only this interface (default: all).
    #[arg(long = "iface", value_name = "IF")]
    pub iface: Option<String>,
    #[command(flatten)]
    pub pins: PinArgs,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Machine-readable JSON instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Counter rates are measured over this interval (`0` skips them).
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    pub interval: Duration,
    /// The daemon's DNS state directory: entries learnt from names are shown with their name
    /// and when DNS last confirmed them.
    #[arg(long, value_name = "DIR", default_value = dns::DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    #[command(flatten)]
    pub pins: PinArgs,
}

/// The flags of `mxguard run`: the one declaration of every option. clap parses the command
/// line into it, serde reads the TOML file into it (same names, kebab-case) and writes it back
/// for `check-config`; see `config` for how the two are merged. Values are parsed into their
/// checked types here; `plan` then checks what involves several options or the system.
#[derive(Clone, Debug, PartialEq, Args, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct RunArgs {
    /// TOML configuration file holding any of these flags under their own names; a flag given
    /// here overrides the file. Default: /etc/mxguard/mxguard.toml if it exists. SIGHUP
    /// re-reads it.
    #[arg(long, value_name = "PATH")]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    /// Interface to protect (repeatable). The filter sees frames arriving on it. Optional
    /// with --milter: without any, mxguard runs only the milter (for hosts without XDP).
    #[arg(long, value_name = "IF")]
    pub iface: Vec<String>,

    /// TCP port whose incoming SYNs are filtered (repeatable, or comma-separated).
    /// Other ports, such as 587 or 22, are never touched.
    #[arg(long, value_name = "PORT", value_delimiter = ',', num_args = 1,
          default_value = "25", value_parser = checked::<Port>)]
    pub port: Vec<Port>,

    /// Source prefix allowed to open connections to the protected ports (repeatable): an
    /// IPv4 or IPv6 address, or ADDR/LEN. IPv4-mapped IPv6 sources match IPv4 prefixes.
    #[arg(long, value_name = "CIDR", value_parser = checked::<Cidr>)]
    pub allow: Vec<Cidr>,

    /// File of allowed prefixes (repeatable): one address or CIDR per line, `#` comments.
    #[arg(long, value_name = "PATH")]
    pub allow_file: Vec<PathBuf>,

    /// XDP attach mode: `auto` tries native (driver) mode and falls back to generic.
    #[arg(long, value_enum, default_value = "auto")]
    pub mode: ModeArg,

    /// What to do with a denied SYN: `drop` it; `reject` it with a TCP RST sent from XDP (like
    /// iptables REJECT --reject-with tcp-reset, rate-limited); or `monitor`: pass everything
    /// and count would-be drops, for a safe rollout.
    #[arg(long, value_enum, default_value = "drop")]
    pub action: ActionArg,

    /// With `--action reject`: at most this many RSTs per second per CPU; beyond it denied
    /// SYNs are dropped, so a spoofed flood cannot use the server as a reflector.
    #[arg(long, value_name = "N", default_value_t = filter_common::DEFAULT_REJECT_PER_CPU_PER_SEC)]
    pub reject_rate: u32,

    /// How often to log a one-line counter summary, e.g. `10s`, `1m`, or `0` for never.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = checked::<TextDuration>)]
    pub stats_interval: TextDuration,

    /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9725). Off by default.
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics_addr: Option<SocketAddr>,

    /// DNS name whose A and AAAA addresses are allowed (repeatable), e.g. the filtering
    /// service's relay name. Always queried fully qualified; followed as its records change.
    #[arg(long, value_name = "NAME", value_parser = checked::<HostName>)]
    pub allow_host: Vec<HostName>,

    /// Name server for --allow-host lookups (repeatable): ADDR or ADDR:PORT ([ADDR]:PORT for
    /// IPv6). Default: the servers in /etc/resolv.conf.
    #[arg(long, value_name = "ADDR[:PORT]", value_parser = checked::<DnsServer>)]
    pub dns_server: Vec<DnsServer>,

    /// Never look a name up more often than this, whatever its TTL.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = checked::<TextDuration>)]
    pub dns_min_refresh: TextDuration,

    /// Look every name up at least this often, even if its TTL is longer.
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = checked::<TextDuration>)]
    pub dns_max_refresh: TextDuration,

    /// How long a name keeps its last known addresses without a successful DNS answer.
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = checked::<TextDuration>)]
    pub dns_stale_grace: TextDuration,

    /// Timeout of one DNS query. Default: resolv.conf's `timeout`, else 5s.
    #[arg(long, value_name = "DURATION", value_parser = checked::<TextDuration>)]
    pub dns_timeout: Option<TextDuration>,

    /// DNS name whose SPF record lists the relay ranges (repeatable), e.g.
    /// _netblocks.example.com: the prefixes its pass-qualified ip4, ip6, a, mx, include and
    /// redirect terms name are allowed, followed like --allow-host names (docs/dns.md).
    #[arg(long, value_name = "NAME", value_parser = checked::<HostName>)]
    pub allow_spf: Vec<HostName>,

    /// Shortest IPv4 prefix a DNS source may add; shorter ones are refused and logged (static
    /// --allow is not limited).
    #[arg(long, value_name = "LEN", default_value_t = guards::DEFAULT_MIN_PREFIX_V4)]
    pub dns_min_prefix_v4: u8,

    /// Shortest IPv6 prefix a DNS source may add; shorter ones are refused and logged.
    #[arg(long, value_name = "LEN", default_value_t = guards::DEFAULT_MIN_PREFIX_V6)]
    pub dns_min_prefix_v6: u8,

    /// Most prefixes one DNS source may add: a larger answer is refused whole and the source
    /// keeps its last good set.
    #[arg(long, value_name = "N", default_value_t = guards::DEFAULT_MAX_PREFIXES)]
    pub dns_max_prefixes: usize,

    /// Range DNS-derived addresses must lie in (repeatable); outside every one they are
    /// refused and logged. Default: no such bound.
    #[arg(long, value_name = "CIDR", value_parser = checked::<Cidr>)]
    pub dns_allow_within: Vec<Cidr>,

    /// `validate`: DNSSEC-validate every answer; a bogus or unsigned one is a failure (the
    /// source keeps its last good set).
    #[arg(long, value_enum, default_value = "off")]
    pub dns_dnssec: DnssecArg,

    /// With --dns-dnssec validate: a file of DNSKEY records to trust. Default: the root
    /// zone's keys built into hickory.
    #[arg(long, value_name = "PATH")]
    pub dns_trust_anchor: Option<PathBuf>,

    /// Directory of the state file that keeps the names' last known good addresses.
    #[arg(long, value_name = "DIR", default_value = dns::DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,

    /// Drop from the first moment, even while the allowlist is still empty. Without it, an
    /// empty allowlist (nothing static, no state file, DNS not answering yet) only counts
    /// would-be drops until it holds an address.
    #[arg(long)]
    pub strict: bool,

    /// Serve the header-check milter for Postfix or Sendmail here: `inet:ADDR:PORT`
    /// (`inet:[IPV6]:PORT`) or `unix:PATH`. Off unless set. See docs/milter.md.
    #[arg(long, value_name = "inet:ADDR:PORT|unix:PATH", value_parser = checked::<MilterEndpoint>)]
    pub milter: Option<MilterEndpoint>,

    /// Header the filtering service adds to every mail it relays (repeatable; names match
    /// case-insensitively). A mail without one of them did not come through the service.
    #[arg(long, value_name = "NAME", value_parser = checked::<HeaderName>,
          default_values = ["X-MS.com-server", "X-MS.com-version"])]
    pub milter_require_header: Vec<HeaderName>,

    /// Clients the milter never checks (repeatable): local submissions (Postfix reports them
    /// as 127.0.0.1) and other trusted senders. SMTP-AUTH sessions are always exempt.
    #[arg(long, value_name = "CIDR", value_parser = checked::<Cidr>,
          default_values = ["127.0.0.0/8", "::1"])]
    pub milter_exempt: Vec<Cidr>,

    /// What to do with a mail missing a required header: `reject` (550 5.7.1), `tempfail`
    /// (451 4.7.1), `quarantine` (Postfix's hold queue), `discard` (accept and silently
    /// drop: the mail is lost), or `tag` (add X-Mxguard-Verdict: missing and accept).
    #[arg(long, value_enum, value_name = "ACTION", default_value = "reject")]
    pub milter_missing: MilterAction,

    /// What to do with a mail carrying the headers from a client that is not an allowlisted
    /// relay (copied headers): same choices as --milter-missing.
    #[arg(long, value_enum, value_name = "ACTION", default_value = "reject")]
    pub milter_forged: MilterAction,

    /// At most this many milter connections at once (Postfix opens one per SMTP session);
    /// beyond it a connection is closed at once and Postfix applies milter_default_action.
    #[arg(long, value_name = "N", default_value_t = crate::milter::DEFAULT_MAX_CONNECTIONS)]
    pub milter_max_connections: usize,

    /// Close a milter connection the MTA has sent nothing on for this long. Postfix keeps one
    /// open for a whole SMTP session and waits on the SMTP client between commands (up to its
    /// smtpd_timeout, 300s by default), so keep this well above that. A TCP peer that vanished
    /// is found sooner, by TCP keepalive.
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = checked::<TextDuration>)]
    pub milter_idle_timeout: TextDuration,

    /// bpffs directory holding the pinned maps and links (bpffs is mounted on /sys/fs/bpf if
    /// nothing is mounted there yet).
    #[arg(long, value_name = "DIR", default_value = DEFAULT_PIN_DIR)]
    pub pin_dir: PathBuf,

    /// Detach (and unpin) when the daemon stops, instead of leaving the filter enforcing.
    /// For development.
    #[arg(long)]
    pub detach_on_exit: bool,

    /// Run even though the pin directory's bpffs is private to this mount namespace (as under
    /// `ip netns exec`, or in a unit with private mounts that mounts bpffs itself): the filter
    /// then ends when the daemon exits. Without it such a start is refused, unless
    /// --detach-on-exit says that is wanted anyway.
    #[arg(long)]
    pub accept_private_pins: bool,
}

impl Default for RunArgs {
    /// The defaults clap gives an empty command line, so the file and the flags share them.
    fn default() -> Self {
        let command = RunArgs::augment_args(clap::Command::new("run"));
        let matches = command
            .try_get_matches_from(["run"])
            .expect("every run flag has a valid default");
        RunArgs::from_arg_matches(&matches).expect("every run flag has a valid default")
    }
}

/// `--mode` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModeArg {
    Auto,
    Native,
    Generic,
}

impl From<ModeArg> for AttachMode {
    fn from(mode: ModeArg) -> Self {
        match mode {
            ModeArg::Auto => AttachMode::Auto,
            ModeArg::Native => AttachMode::Native,
            ModeArg::Generic => AttachMode::Generic,
        }
    }
}

/// `--dns-dnssec` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DnssecArg {
    Off,
    Validate,
}

/// `--action` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ActionArg {
    Drop,
    Reject,
    Monitor,
}

impl From<ActionArg> for filter_common::Action {
    fn from(action: ActionArg) -> Self {
        match action {
            ActionArg::Drop => filter_common::Action::Drop,
            ActionArg::Reject => filter_common::Action::Reject,
            ActionArg::Monitor => filter_common::Action::Monitor,
        }
    }
}

/// Parses a flag's value with its type's `FromStr`, keeping the whole error chain in clap's
/// message (clap would otherwise show only the outermost context).
fn checked<T>(text: &str) -> Result<T, String>
where
    T: FromStr<Err = anyhow::Error>,
{
    text.parse()
        .map_err(|error: anyhow::Error| format!("{error:#}"))
}

/// A TCP port from 1 to 65535; an integer in the config file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Port(pub u16);

impl FromStr for Port {
    type Err = anyhow::Error;
    fn from_str(text: &str) -> anyhow::Result<Self> {
        parse_port(text).map(Port)
    }
}

impl Serialize for Port {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u16(self.0)
    }
}

impl<'de> Deserialize<'de> for Port {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let number = i64::deserialize(deserializer)?;
        parse_port(&number.to_string())
            .map(Port)
            .map_err(|error| serde::de::Error::custom(format!("{error:#}")))
    }
}

/// A duration written as text (`30s`, `5m`, `250ms`; see [`parse_duration`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct TextDuration(pub Duration);

impl FromStr for TextDuration {
    type Err = anyhow::Error;
    fn from_str(text: &str) -> anyhow::Result<Self> {
        parse_duration(text).map(TextDuration)
    }
}

impl fmt::Display for TextDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.subsec_millis() != 0 {
            write!(f, "{}ms", self.0.as_millis())
        } else {
            write!(f, "{}s", self.0.as_secs())
        }
    }
}

/// A name server: `ADDR`, `ADDR:PORT`, `[IPV6]` or `[IPV6]:PORT` (see [`parse_dns_server`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DnsServer(pub SocketAddr);

impl FromStr for DnsServer {
    type Err = anyhow::Error;
    fn from_str(text: &str) -> anyhow::Result<Self> {
        parse_dns_server(text).map(DnsServer)
    }
}

impl fmt::Display for DnsServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Serde for option types that are written as text: `Display` out, `FromStr` in, with the
/// whole error chain in the message (the file's reader adds the line).
macro_rules! serde_as_text {
    ($($type:ty),*) => {$(
        impl Serialize for $type {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $type {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = String::deserialize(deserializer)?;
                text.parse()
                    .map_err(|error: anyhow::Error| serde::de::Error::custom(format!("{error:#}")))
            }
        }
    )*};
}

serde_as_text!(
    TextDuration,
    DnsServer,
    Cidr,
    HostName,
    MilterEndpoint,
    HeaderName
);

/// Everything `run` needs, validated: nothing is loaded or attached before this exists. It
/// keeps the options as given and adds what is derived from several of them.
#[derive(Clone, Debug, PartialEq)]
pub struct RunPlan {
    pub options: RunArgs,
    pub ports: BTreeSet<u16>,
    /// Static prefixes: `--allow` and the allow files' contents.
    pub allow: BTreeSet<Cidr>,
    pub mode: AttachMode,
    pub action: filter_common::Action,
    /// The DNS side, when there is at least one --allow-host.
    pub dns: Option<DnsSettings>,
    /// The header-check milter, when --milter is given.
    pub milter: Option<MilterSettings>,
}

impl RunArgs {
    /// Checks what involves several options or the system (interfaces exist, allow files are
    /// readable) and derives the plan. Any error names the bad input.
    pub fn plan(&self) -> anyhow::Result<RunPlan> {
        let milter = self.milter_settings()?;
        if self.iface.is_empty() && milter.is_none() {
            bail!(
                "no interface to protect: give --iface or set `iface` in the config file \
                 (or --milter alone, for the milter without the XDP filter)"
            );
        }
        let mut seen = BTreeSet::new();
        for iface in &self.iface {
            interface_index(iface)?;
            if !seen.insert(iface) {
                bail!("interface {iface:?} given twice");
            }
        }

        let ports: BTreeSet<u16> = self.port.iter().map(|port| port.0).collect();
        if ports.is_empty() {
            bail!("no port to protect: give at least one port from 1 to 65535");
        }

        if self.reject_rate == 0 {
            bail!("--reject-rate must be at least 1 (for no RSTs at all, use --action drop)");
        }
        if self.stats_interval.0 > MAX_DNS_DURATION {
            bail!("--stats-interval may be at most a year (0 turns the summary off)");
        }

        let mut allow: BTreeSet<Cidr> = self.allow.iter().copied().collect();
        for path in &self.allow_file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read allow file {}", path.display()))?;
            allow.extend(parse_allow_file(&text, &path.display().to_string())?);
        }

        Ok(RunPlan {
            options: self.clone(),
            ports,
            allow,
            mode: self.mode.into(),
            action: self.action.into(),
            dns: self.dns_settings()?,
            milter,
        })
    }

    /// Validates the milter arguments; `None` without --milter.
    fn milter_settings(&self) -> anyhow::Result<Option<MilterSettings>> {
        let Some(endpoint) = &self.milter else {
            return Ok(None);
        };
        if self.milter_require_header.is_empty() {
            bail!("--milter needs at least one --milter-require-header");
        }
        let mut seen = BTreeSet::new();
        for name in &self.milter_require_header {
            if !seen.insert(name.as_str().to_ascii_lowercase()) {
                bail!("required header {:?} given twice", name.as_str());
            }
        }
        if self.milter_max_connections == 0 {
            bail!("--milter-max-connections must be more than 0");
        }
        if self.milter_idle_timeout.0 < Duration::from_secs(1) {
            bail!("--milter-idle-timeout must be at least 1s");
        }
        Ok(Some(MilterSettings {
            endpoint: endpoint.clone(),
            policy: crate::milter::Policy {
                rules: crate::milter::Rules {
                    required: self.milter_require_header.clone(),
                    exempt: self.milter_exempt.clone(),
                },
                on_missing: self.milter_missing,
                on_forged: self.milter_forged,
            },
            max_connections: self.milter_max_connections,
            idle_timeout: self.milter_idle_timeout.0,
        }))
    }

    /// Validates the DNS arguments; `None` without --allow-host.
    fn dns_settings(&self) -> anyhow::Result<Option<DnsSettings>> {
        let mut hosts = BTreeSet::new();
        for host in &self.allow_host {
            if !hosts.insert(host.clone()) {
                bail!("host name {:?} given twice", host.as_str());
            }
        }
        let mut spf = BTreeSet::new();
        for name in &self.allow_spf {
            if !spf.insert(name.clone()) {
                bail!("SPF name {:?} given twice", name.as_str());
            }
        }
        let servers: Vec<SocketAddr> = self.dns_server.iter().map(|server| server.0).collect();
        if hosts.is_empty() && spf.is_empty() {
            if !servers.is_empty() {
                bail!(
                    "--dns-server is only used for --allow-host and --allow-spf names, and none \
                     is given"
                );
            }
            return Ok(None);
        }
        if !(1..=32).contains(&self.dns_min_prefix_v4) {
            bail!("--dns-min-prefix-v4 must be from 1 to 32");
        }
        if !(1..=128).contains(&self.dns_min_prefix_v6) {
            bail!("--dns-min-prefix-v6 must be from 1 to 128");
        }
        if self.dns_max_prefixes == 0 {
            bail!("--dns-max-prefixes must be at least 1");
        }
        let dnssec = match (self.dns_dnssec, &self.dns_trust_anchor) {
            (DnssecArg::Off, Some(_)) => {
                bail!("--dns-trust-anchor is only used with --dns-dnssec validate")
            }
            (DnssecArg::Off, None) => Dnssec::Off,
            (DnssecArg::Validate, anchor) => {
                // Read now, so check-config and a reload refuse a bad file.
                if let Some(path) = anchor {
                    dns::resolver::read_trust_anchor(path)?;
                }
                Dnssec::Validate {
                    trust_anchor: anchor.clone(),
                }
            }
        };
        let timeout = self.dns_timeout.map(|timeout| timeout.0);
        let policy = RefreshPolicy {
            min_refresh: self.dns_min_refresh.0,
            max_refresh: self.dns_max_refresh.0,
            stale_grace: self.dns_stale_grace.0,
        };
        // Bounded so that deadlines computed from them can never overflow the clock.
        for (flag, value) in [
            ("--dns-min-refresh", policy.min_refresh),
            ("--dns-max-refresh", policy.max_refresh),
            ("--dns-stale-grace", policy.stale_grace),
            ("--dns-timeout", timeout.unwrap_or_default()),
        ] {
            if value > MAX_DNS_DURATION {
                bail!("{flag} ({value:?}) is longer than a year");
            }
        }
        if policy.min_refresh.is_zero() {
            bail!("--dns-min-refresh must be more than 0");
        }
        if policy.min_refresh > policy.max_refresh {
            bail!(
                "--dns-min-refresh ({:?}) is longer than --dns-max-refresh ({:?})",
                policy.min_refresh,
                policy.max_refresh
            );
        }
        if policy.stale_grace <= policy.max_refresh {
            bail!(
                "--dns-stale-grace ({:?}) must be longer than --dns-max-refresh ({:?}), or \
                 addresses would expire between two lookups",
                policy.stale_grace,
                policy.max_refresh
            );
        }
        if timeout.is_some_and(|timeout| timeout.is_zero()) {
            bail!("--dns-timeout must be more than 0");
        }
        Ok(Some(DnsSettings {
            hosts,
            spf,
            guards: Guards {
                min_prefix_v4: self.dns_min_prefix_v4,
                min_prefix_v6: self.dns_min_prefix_v6,
                max_prefixes: self.dns_max_prefixes,
                allow_within: self.dns_allow_within.clone(),
            },
            dnssec,
            servers,
            timeout,
            policy,
            state_dir: self.state_dir.clone(),
        }))
    }
}

/// The longest duration any DNS flag accepts.
const MAX_DNS_DURATION: Duration = Duration::from_secs(366 * 24 * 3600);

/// A name server: `ADDR`, `ADDR:PORT`, `[IPV6]` or `[IPV6]:PORT`; the port defaults to 53.
pub fn parse_dns_server(text: &str) -> anyhow::Result<SocketAddr> {
    let trimmed = text.trim();
    let parse = || -> anyhow::Result<SocketAddr> {
        if let Ok(addr) = trimmed.parse::<SocketAddr>() {
            if addr.port() == 0 {
                bail!("port 0 is not a DNS server port");
            }
            return Ok(addr);
        }
        let bare = trimmed
            .strip_prefix('[')
            .and_then(|rest| rest.strip_suffix(']'))
            .unwrap_or(trimmed);
        let ip: IpAddr = bare
            .parse()
            .context("expected an IP address, optionally with :PORT")?;
        Ok(SocketAddr::new(ip, 53))
    };
    parse().with_context(|| format!("invalid DNS server {text:?}"))
}

/// A TCP port from 1 to 65535.
pub fn parse_port(text: &str) -> anyhow::Result<u16> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        bail!("empty port: give at least one port from 1 to 65535");
    }
    match trimmed.parse::<u32>() {
        Ok(port @ 1..=65535) => Ok(port as u16),
        Ok(port) => bail!("port {port} is out of range: ports go from 1 to 65535"),
        Err(_) => bail!("{trimmed:?} is not a port number (1 to 65535)"),
    }
}

/// A duration such as `30s`, `5m`, `1h`, `250ms`, or a bare number of seconds.
pub fn parse_duration(text: &str) -> anyhow::Result<Duration> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: u64 = number
        .parse()
        .with_context(|| format!("{text:?} is not a duration like 30s or 5m"))?;
    let duration = match unit {
        "" | "s" => Duration::from_secs(value),
        "ms" => Duration::from_millis(value),
        "m" | "h" => {
            let scale = if unit == "m" { 60 } else { 3600 };
            Duration::from_secs(
                value
                    .checked_mul(scale)
                    .with_context(|| format!("{text:?} is too long a duration"))?,
            )
        }
        _ => bail!("{text:?} has an unknown unit {unit:?} (use ms, s, m or h)"),
    };
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_args(args: &[&str]) -> Result<RunArgs, clap::Error> {
        let mut argv = vec!["mxguard", "run"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv).map(|cli| match cli.command {
            Command::Run(args) => args,
            _ => panic!("parsed a run command line"),
        })
    }

    /// The error for a command line that clap (a bad value) or the plan (a bad combination,
    /// or the system) rejects.
    fn plan_error(args: &[&str]) -> String {
        match run_args(args) {
            Err(error) => error.to_string(),
            Ok(args) => format!("{:#}", args.plan().expect_err("plan rejects")),
        }
    }

    #[test]
    fn good_command_line_becomes_a_plan() {
        let plan = run_args(&[
            "--iface",
            "lo",
            "--port",
            "25",
            "--port",
            "2525,25",
            "--allow",
            "192.0.2.0/24",
            "--allow",
            "2001:db8::1",
            "--mode",
            "generic",
            "--stats-interval",
            "5s",
        ])
        .unwrap()
        .plan()
        .unwrap();
        assert_eq!(plan.options.iface, ["lo"]);
        assert_eq!(plan.ports, BTreeSet::from([25, 2525]));
        assert_eq!(plan.allow.len(), 2);
        assert_eq!(plan.mode, AttachMode::Generic);
        assert_eq!(plan.options.stats_interval.0, Duration::from_secs(5));
    }

    #[test]
    fn port_defaults_to_25() {
        let plan = run_args(&["--iface", "lo"]).unwrap().plan().unwrap();
        assert_eq!(plan.ports, BTreeSet::from([25]));
        assert_eq!(plan.mode, AttachMode::Auto);
    }

    #[test]
    fn bad_ports_are_rejected() {
        assert!(plan_error(&["--iface", "lo", "--port", "0"]).contains("port 0 is out of range"));
        assert!(
            plan_error(&["--iface", "lo", "--port", "65536"])
                .contains("port 65536 is out of range")
        );
        assert!(plan_error(&["--iface", "lo", "--port", "smtp"]).contains("not a port number"));
        assert!(plan_error(&["--iface", "lo", "--port", ""]).contains("empty port"));
        assert!(plan_error(&["--iface", "lo", "--reject-rate", "0"]).contains("at least 1"));
        assert!(
            plan_error(&["--iface", "lo", "--stats-interval", "400000000h"])
                .contains("at most a year"),
            "an interval past the clock's range is refused, not a panic later"
        );
    }

    #[test]
    fn bad_cidr_names_the_text() {
        assert!(
            plan_error(&["--iface", "lo", "--allow", "192.0.2.0/40"]).contains("\"192.0.2.0/40\"")
        );
    }

    #[test]
    fn unknown_interface_is_rejected() {
        assert!(
            plan_error(&["--iface", "mxg-no-such0"]).contains("unknown interface \"mxg-no-such0\"")
        );
        assert!(plan_error(&["--iface", "lo", "--iface", "lo"]).contains("given twice"));
    }

    #[test]
    fn unreadable_allow_file_is_rejected() {
        let error = plan_error(&[
            "--iface",
            "lo",
            "--allow-file",
            "/nonexistent/mxguard-allow",
        ]);
        assert!(
            error.contains("cannot read allow file /nonexistent/mxguard-allow"),
            "{error}"
        );
    }

    #[test]
    fn missing_iface_and_bad_mode_are_rejected() {
        // The interface may come from the config file, so its absence is a plan error.
        assert!(plan_error(&[]).contains("no interface to protect"));
        assert!(run_args(&["--iface", "lo", "--mode", "turbo"]).is_err());
        assert!(run_args(&["--iface", "lo", "--action", "bounce"]).is_err());
    }

    #[test]
    fn dns_arguments_become_settings() {
        let plan = run_args(&[
            "--iface",
            "lo",
            "--allow-host",
            "Relay.Example.test",
            "--allow-host",
            "relay2.example.test.",
            "--dns-server",
            "192.0.2.53",
            "--dns-server",
            "198.51.100.53:5353",
            "--dns-server",
            "[2001:db8::53]:53",
            "--dns-server",
            "2001:db8::54",
            "--dns-min-refresh",
            "1s",
            "--dns-max-refresh",
            "10s",
            "--dns-stale-grace",
            "1m",
            "--dns-timeout",
            "500ms",
            "--state-dir",
            "/tmp/mxguard-state",
            "--strict",
        ])
        .unwrap()
        .plan()
        .unwrap();
        assert!(plan.options.strict);
        let dns = plan.dns.expect("DNS settings");
        let hosts: Vec<String> = dns.hosts.iter().map(ToString::to_string).collect();
        assert_eq!(hosts, ["relay.example.test.", "relay2.example.test."]);
        let servers: Vec<String> = dns.servers.iter().map(ToString::to_string).collect();
        assert_eq!(
            servers,
            [
                "192.0.2.53:53",
                "198.51.100.53:5353",
                "[2001:db8::53]:53",
                "[2001:db8::54]:53"
            ]
        );
        assert_eq!(dns.policy.min_refresh, Duration::from_secs(1));
        assert_eq!(dns.policy.max_refresh, Duration::from_secs(10));
        assert_eq!(dns.policy.stale_grace, Duration::from_secs(60));
        assert_eq!(dns.timeout, Some(Duration::from_millis(500)));
        assert_eq!(dns.state_dir, PathBuf::from("/tmp/mxguard-state"));
    }

    #[test]
    fn dns_defaults() {
        let plan = run_args(&["--iface", "lo"]).unwrap().plan().unwrap();
        assert_eq!(plan.dns, None);
        assert!(!plan.options.strict);
        let plan = run_args(&["--iface", "lo", "--allow-host", "relay.test"])
            .unwrap()
            .plan()
            .unwrap();
        let dns = plan.dns.unwrap();
        assert!(dns.servers.is_empty(), "resolv.conf");
        assert_eq!(dns.policy.min_refresh, Duration::from_secs(30));
        assert_eq!(dns.policy.max_refresh, Duration::from_secs(3600));
        assert_eq!(dns.policy.stale_grace, Duration::from_secs(86400));
        assert_eq!(dns.timeout, None);
        assert_eq!(dns.state_dir, PathBuf::from("/var/lib/mxguard"));
    }

    #[test]
    fn bad_dns_arguments_are_rejected() {
        let host = ["--iface", "lo", "--allow-host", "relay.test"];
        let with = |extra: &[&str]| {
            let mut args = host.to_vec();
            args.extend_from_slice(extra);
            plan_error(&args)
        };
        assert!(plan_error(&["--iface", "lo", "--allow-host", "192.0.2.1"]).contains("--allow"));
        assert!(with(&["--allow-host", "RELAY.test."]).contains("given twice"));
        assert!(with(&["--dns-server", "ns.example.test"]).contains("invalid DNS server"));
        assert!(with(&["--dns-server", "192.0.2.53:0"]).contains("port 0"));
        assert!(
            plan_error(&["--iface", "lo", "--dns-server", "192.0.2.53"]).contains("none is given")
        );
        assert!(with(&["--dns-min-refresh", "0"]).contains("more than 0"));
        assert!(with(&["--dns-min-refresh", "2h"]).contains("longer than --dns-max-refresh"));
        assert!(with(&["--dns-stale-grace", "30m"]).contains("must be longer"));
        assert!(with(&["--dns-timeout", "0s"]).contains("more than 0"));
        assert!(with(&["--dns-stale-grace", "10000h"]).contains("longer than a year"));
    }

    #[test]
    fn spf_and_guard_arguments_become_settings() {
        let anchor =
            std::env::temp_dir().join(format!("mxguard-anchor-{}.key", std::process::id()));
        std::fs::write(
            &anchor,
            "; a key-signing key\nmx.test. IN DNSKEY 257 3 13 ShDEK+UmepNBoLJktJjNHy91V3Pf30rbc8TCt/\
             AoZYZvL6/texnMEYWk HG1Tu8zYPeGqrfIGJxnQFPrhFkYRGA==\n",
        )
        .unwrap();
        let anchor_arg = anchor.to_str().unwrap();
        let plan = run_args(&[
            "--iface",
            "lo",
            "--allow-spf",
            "_netblocks.example.test",
            "--dns-min-prefix-v4",
            "16",
            "--dns-min-prefix-v6",
            "32",
            "--dns-max-prefixes",
            "10",
            "--dns-allow-within",
            "192.0.2.0/24",
            "--dns-allow-within",
            "2001:db8::/32",
            "--dns-dnssec",
            "validate",
            "--dns-trust-anchor",
            anchor_arg,
        ])
        .unwrap()
        .plan()
        .unwrap();
        let dns = plan.dns.expect("SPF alone turns DNS on");
        assert!(dns.hosts.is_empty());
        assert_eq!(dns.spf.len(), 1);
        assert_eq!(
            dns.guards,
            Guards {
                min_prefix_v4: 16,
                min_prefix_v6: 32,
                max_prefixes: 10,
                allow_within: vec![
                    "192.0.2.0/24".parse().unwrap(),
                    "2001:db8::/32".parse().unwrap()
                ],
            }
        );
        assert_eq!(
            dns.dnssec,
            Dnssec::Validate {
                trust_anchor: Some(anchor.clone())
            }
        );
        let defaults = run_args(&["--iface", "lo", "--allow-host", "relay.test"])
            .unwrap()
            .plan()
            .unwrap()
            .dns
            .unwrap();
        assert_eq!(defaults.guards, Guards::default());
        assert_eq!(defaults.dnssec, Dnssec::Off);

        let spf = ["--iface", "lo", "--allow-spf", "spf.test"];
        let with = |extra: &[&str]| {
            let mut args = spf.to_vec();
            args.extend_from_slice(extra);
            plan_error(&args)
        };
        assert!(with(&["--allow-spf", "SPF.test."]).contains("given twice"));
        assert!(with(&["--dns-min-prefix-v4", "0"]).contains("from 1 to 32"));
        assert!(with(&["--dns-min-prefix-v4", "33"]).contains("from 1 to 32"));
        assert!(with(&["--dns-min-prefix-v6", "129"]).contains("from 1 to 128"));
        assert!(with(&["--dns-max-prefixes", "0"]).contains("at least 1"));
        assert!(with(&["--dns-trust-anchor", "/x"]).contains("only used with"));
        let validate = ["--dns-dnssec", "validate", "--dns-trust-anchor"];
        assert!(
            with(&[&validate[..], &["/nonexistent/anchor.key"]].concat())
                .contains("reading the DNSSEC trust anchor /nonexistent/anchor.key")
        );
        std::fs::write(&anchor, "; nothing\n").unwrap();
        assert!(with(&[&validate[..], &[anchor_arg]].concat()).contains("no DNSKEY record"));
        std::fs::remove_file(&anchor).unwrap();
        assert!(with(&["--dns-dnssec", "maybe"]).contains("invalid value"));
        assert!(with(&["--dns-allow-within", "192.0.2.1/8"]).contains("host bits"));
    }

    #[test]
    fn milter_arguments_become_settings() {
        let plan = run_args(&[
            "--milter",
            "inet:127.0.0.1:9900",
            "--milter-require-header",
            "X-Relay",
            "--milter-exempt",
            "198.51.100.0/24",
            "--milter-missing",
            "quarantine",
            "--milter-forged",
            "tag",
        ])
        .unwrap()
        .plan()
        .unwrap();
        assert!(plan.options.iface.is_empty(), "milter-only mode");
        let milter = plan.milter.expect("milter settings");
        assert_eq!(milter.endpoint.to_string(), "inet:127.0.0.1:9900");
        assert_eq!(milter.policy.rules.required, ["X-Relay".parse().unwrap()]);
        assert_eq!(
            milter.policy.rules.exempt,
            ["198.51.100.0/24".parse().unwrap()]
        );
        assert_eq!(milter.policy.on_missing, MilterAction::Quarantine);
        assert_eq!(milter.policy.on_forged, MilterAction::Tag);
    }

    #[test]
    fn milter_defaults() {
        let plan = run_args(&["--milter", "unix:/run/mxguard/milter.sock"])
            .unwrap()
            .plan()
            .unwrap();
        let milter = plan.milter.unwrap();
        let required: Vec<&str> = milter
            .policy
            .rules
            .required
            .iter()
            .map(HeaderName::as_str)
            .collect();
        assert_eq!(required, ["X-MS.com-server", "X-MS.com-version"]);
        let exempt: Vec<String> = milter
            .policy
            .rules
            .exempt
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(exempt, ["127.0.0.0/8", "::1/128"]);
        assert_eq!(milter.policy.on_missing, MilterAction::Reject);
        assert_eq!(milter.policy.on_forged, MilterAction::Reject);
        assert_eq!(
            run_args(&["--iface", "lo"]).unwrap().plan().unwrap().milter,
            None
        );
    }

    #[test]
    fn bad_milter_arguments_are_rejected() {
        assert!(
            plan_error(&["--milter", "tcp:127.0.0.1:1"]).contains("inet:ADDR:PORT or unix:PATH")
        );
        assert!(plan_error(&["--milter", "inet:localhost:1"]).contains("IP address"));
        assert!(plan_error(&["--milter", "inet:127.0.0.1:0"]).contains("port 0"));
        assert!(plan_error(&["--milter", "unix:relative.sock"]).contains("absolute"));
        let milter = ["--milter", "inet:127.0.0.1:9900"];
        let with = |extra: &[&str]| {
            let mut args = milter.to_vec();
            args.extend_from_slice(extra);
            plan_error(&args)
        };
        assert!(with(&["--milter-require-header", "X Bad"]).contains("X Bad"));
        assert!(
            with(&[
                "--milter-require-header",
                "x-a",
                "--milter-require-header",
                "X-A"
            ])
            .contains("given twice")
        );
        assert!(with(&["--milter-missing", "bounce"]).contains("bounce"));
        assert!(with(&["--milter-max-connections", "0"]).contains("more than 0"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("7").unwrap(), Duration::from_secs(7));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration(&format!("{}h", u64::MAX / 60)).is_err());
        assert!(parse_duration("5d").is_err());
    }
}
