//! The header check, as a milter in the daemon (`--milter`): the filtering service adds
//! required headers (by default `X-MS.com-server` and `X-MS.com-version`) to every mail it
//! relays, so a mail without them was delivered directly. docs/milter.md has the decision
//! table and its "Decisions" log (D1..Dn, cited in the code).
//!
//! - [`decision`]: the pure decision (session facts, headers, policy, allowlist snapshot);
//! - [`outcome`]: a verdict and the configured action -> what to answer the MTA;
//! - [`session`]: the milter callbacks for one connection (miltr-server's `Milter` trait);
//! - [`wire`]: the connection loop, which leaves out the answers the MTA agreed to miss;
//! - [`server`]: the listener, the connection bound, the handle the daemon keeps;
//! - [`stats`]: the verdict counters, their metrics and the file `status` reads.

pub mod decision;
pub mod outcome;
pub mod server;
pub mod session;
pub mod stats;
pub mod wire;

use std::{fmt, net::SocketAddr, path::PathBuf, str::FromStr, time::Duration};

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};

pub use decision::{AllowSnapshot, HeaderName, Rules, Verdict};
pub use server::{BoundMilter, MilterHandle};

/// `--milter-idle-timeout` default: well above Postfix's smtpd_timeout (300 s), the longest
/// Postfix normally waits on an SMTP client between two milter commands.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

/// `--milter-max-connections` default: far above Postfix's default smtpd process limit (100).
pub const DEFAULT_MAX_CONNECTIONS: usize = 512;

/// `--milter-missing` / `--milter-forged` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MilterAction {
    /// 550 5.7.1, naming the reason (the default, D8).
    Reject,
    /// 451 4.7.1: the sender retries (and the mail stays with the sender).
    Tempfail,
    /// Accepted into Postfix's hold queue (`postqueue -p`, `postsuper -H` releases).
    Quarantine,
    /// Accepted and thrown away without a word: the mail is lost (D9; never the default).
    Discard,
    /// Accepted with `X-Mxguard-Verdict: missing|forged` added, for filtering downstream.
    Tag,
}

impl MilterAction {
    pub fn name(self) -> &'static str {
        match self {
            MilterAction::Reject => "reject",
            MilterAction::Tempfail => "tempfail",
            MilterAction::Quarantine => "quarantine",
            MilterAction::Discard => "discard",
            MilterAction::Tag => "tag",
        }
    }
}

/// The milter's policy: what to check and what to do (reloaded on SIGHUP).
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    pub rules: Rules,
    pub on_missing: MilterAction,
    pub on_forged: MilterAction,
}

/// Where the milter listens: `inet:ADDR:PORT` or `unix:PATH`, as Postfix's `smtpd_milters`
/// spells it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MilterEndpoint {
    Inet(SocketAddr),
    Unix(PathBuf),
}

impl FromStr for MilterEndpoint {
    type Err = anyhow::Error;
    fn from_str(text: &str) -> anyhow::Result<Self> {
        let parse = || -> anyhow::Result<MilterEndpoint> {
            if let Some(rest) = text.strip_prefix("inet:") {
                let addr: SocketAddr = match rest.parse() {
                    Ok(addr) => addr,
                    Err(_) => {
                        // Postfix also writes IPv6 as inet:ADDR:PORT without brackets.
                        let (host, port) =
                            rest.rsplit_once(':').context("expected inet:ADDR:PORT")?;
                        let ip = host
                            .parse()
                            .context("expected an IP address (names are not resolved)")?;
                        let port = port.parse().context("expected a port number")?;
                        SocketAddr::new(ip, port)
                    }
                };
                if addr.port() == 0 {
                    bail!("port 0 cannot be listened on by Postfix's milter client");
                }
                return Ok(MilterEndpoint::Inet(addr));
            }
            if let Some(path) = text.strip_prefix("unix:") {
                let path = PathBuf::from(path);
                if !path.is_absolute() {
                    bail!("the socket path must be absolute");
                }
                return Ok(MilterEndpoint::Unix(path));
            }
            bail!("expected inet:ADDR:PORT or unix:PATH");
        };
        parse().with_context(|| format!("invalid milter endpoint {text:?}"))
    }
}

impl fmt::Display for MilterEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MilterEndpoint::Inet(addr) => write!(f, "inet:{addr}"),
            MilterEndpoint::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// The validated `--milter*` options.
#[derive(Clone, Debug, PartialEq)]
pub struct MilterSettings {
    pub endpoint: MilterEndpoint,
    pub policy: Policy,
    pub max_connections: usize,
    /// A connection with no command for this long is closed.
    pub idle_timeout: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        let inet: MilterEndpoint = "inet:127.0.0.1:9900".parse().unwrap();
        assert_eq!(
            inet,
            MilterEndpoint::Inet("127.0.0.1:9900".parse().unwrap())
        );
        assert_eq!(inet.to_string(), "inet:127.0.0.1:9900");
        let v6: MilterEndpoint = "inet:[::1]:9900".parse().unwrap();
        assert_eq!(v6.to_string(), "inet:[::1]:9900");
        assert_eq!("inet:::1:9900".parse::<MilterEndpoint>().unwrap(), v6);
        let unix: MilterEndpoint = "unix:/run/mxguard/milter.sock".parse().unwrap();
        assert_eq!(unix.to_string(), "unix:/run/mxguard/milter.sock");
        for bad in [
            "",
            "inet:",
            "inet:127.0.0.1",
            "inet:host.test:25",
            "unix:x",
            "local:/x",
        ] {
            assert!(bad.parse::<MilterEndpoint>().is_err(), "{bad}");
        }
    }
}
