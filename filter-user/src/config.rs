//! The TOML configuration file (`--config`, default /etc/mxguard/mxguard.toml).
//!
//! It holds everything `mxguard run` takes on the command line, under the flags' own names;
//! a flag given on the command line overrides the file's value (lists are replaced, not
//! merged). An unknown key is an error naming the key and its line.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use clap::{ArgMatches, ValueEnum as _, parser::ValueSource};
use serde::{Deserialize, Serialize};

use crate::cli::{ActionArg, RunArgs, RunPlan, parse_duration};

pub const DEFAULT_CONFIG: &str = "/etc/mxguard/mxguard.toml";

/// The file's contents. Every key is optional; absent keys keep the command-line default.
#[derive(Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileConfig {
    pub iface: Option<Vec<String>>,
    pub port: Option<Vec<u32>>,
    pub allow: Option<Vec<String>>,
    pub allow_file: Option<Vec<PathBuf>>,
    pub allow_host: Option<Vec<String>>,
    pub dns_server: Option<Vec<String>>,
    pub dns_min_refresh: Option<String>,
    pub dns_max_refresh: Option<String>,
    pub dns_stale_grace: Option<String>,
    pub dns_timeout: Option<String>,
    pub state_dir: Option<PathBuf>,
    pub strict: Option<bool>,
    pub mode: Option<String>,
    pub action: Option<String>,
    pub reject_rate: Option<u32>,
    pub stats_interval: Option<String>,
    pub metrics_addr: Option<String>,
    pub pin_dir: Option<PathBuf>,
    pub detach_on_exit: Option<bool>,
}

impl FileConfig {
    /// Parses TOML text; `origin` names the file in errors (which carry line and column).
    pub fn parse(text: &str, origin: &str) -> anyhow::Result<Self> {
        toml::from_str(text).map_err(|error| {
            // One line, `file:line:column: message`, so it reads well in a log.
            let position = error.span().map(|span| {
                let before = &text[..span.start.min(text.len())];
                let line = before.matches('\n').count() + 1;
                let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                format!("line {line}, column {column}")
            });
            let message = error.message().trim().replace('\n', " ");
            match position {
                Some(position) => anyhow::anyhow!("{origin}: {position}: {message}"),
                None => anyhow::anyhow!("{origin}: {message}"),
            }
        })
    }

    /// Reads `path`. A missing file is fine only when it is the default path (`explicit` false).
    pub fn load(path: &Path, explicit: bool) -> anyhow::Result<Option<Self>> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text, &path.display().to_string()).map(Some),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound && !explicit => Ok(None),
            Err(error) => {
                Err(error).with_context(|| format!("cannot read config file {}", path.display()))
            }
        }
    }
}

/// Whether the flag with clap id `id` was given on the command line.
fn on_command_line(matches: &ArgMatches, id: &str) -> bool {
    matches!(matches.value_source(id), Some(ValueSource::CommandLine))
}

/// Fills `args` from `file` wherever the command line did not give the flag.
pub fn apply(args: &mut RunArgs, matches: &ArgMatches, file: FileConfig) -> anyhow::Result<()> {
    macro_rules! take {
        ($id:literal, $field:ident, $value:expr) => {
            if !on_command_line(matches, $id) {
                if let Some(value) = $value {
                    args.$field = value;
                }
            }
        };
    }
    let duration =
        |key: &str, text: Option<String>| -> anyhow::Result<Option<std::time::Duration>> {
            text.map(|t| parse_duration(&t).with_context(|| format!("config key {key}")))
                .transpose()
        };
    take!("ifaces", ifaces, file.iface);
    take!(
        "ports",
        ports,
        file.port
            .map(|ports| ports.iter().map(u32::to_string).collect())
    );
    take!("allow", allow, file.allow);
    take!("allow_files", allow_files, file.allow_file);
    take!("allow_hosts", allow_hosts, file.allow_host);
    take!("dns_servers", dns_servers, file.dns_server);
    take!(
        "dns_min_refresh",
        dns_min_refresh,
        duration("dns-min-refresh", file.dns_min_refresh)?
    );
    take!(
        "dns_max_refresh",
        dns_max_refresh,
        duration("dns-max-refresh", file.dns_max_refresh)?
    );
    take!(
        "dns_stale_grace",
        dns_stale_grace,
        duration("dns-stale-grace", file.dns_stale_grace)?
    );
    take!(
        "dns_timeout",
        dns_timeout,
        duration("dns-timeout", file.dns_timeout)?.map(Some)
    );
    take!("state_dir", state_dir, file.state_dir);
    take!("strict", strict, file.strict);
    let mode = file
        .mode
        .map(|m| crate::filter::AttachMode::from_str(&m, true).map_err(anyhow::Error::msg))
        .transpose();
    take!(
        "mode",
        mode,
        mode.context("config key mode (auto, native or generic)")?
    );
    let action = file
        .action
        .map(|a| ActionArg::from_str(&a, true).map_err(anyhow::Error::msg))
        .transpose();
    take!(
        "action",
        action,
        action.context("config key action (drop, reject or monitor)")?
    );
    take!("reject_rate", reject_rate, file.reject_rate);
    take!(
        "stats_interval",
        stats_interval,
        duration("stats-interval", file.stats_interval)?
    );
    let metrics_addr = file
        .metrics_addr
        .map(|a| {
            a.parse::<SocketAddr>()
                .with_context(|| format!("config key metrics-addr: {a:?} is not ADDR:PORT"))
        })
        .transpose()?;
    take!("metrics_addr", metrics_addr, metrics_addr.map(Some));
    if !on_command_line(matches, "pin_dir")
        && let Some(dir) = file.pin_dir
    {
        args.pins.pin_dir = dir;
    }
    take!("detach_on_exit", detach_on_exit, file.detach_on_exit);
    Ok(())
}

/// The effective configuration, as a config file would say it (for `check-config`).
pub fn render(plan: &RunPlan) -> anyhow::Result<String> {
    let effective = FileConfig {
        iface: Some(plan.ifaces.clone()),
        port: Some(plan.ports.iter().map(|&p| u32::from(p)).collect()),
        allow: Some(plan.allow.iter().map(ToString::to_string).collect()),
        allow_file: None,
        allow_host: plan
            .dns
            .as_ref()
            .map(|d| d.hosts.iter().map(ToString::to_string).collect()),
        dns_server: plan
            .dns
            .as_ref()
            .map(|d| d.servers.iter().map(ToString::to_string).collect()),
        dns_min_refresh: plan.dns.as_ref().map(|d| humantime(d.policy.min_refresh)),
        dns_max_refresh: plan.dns.as_ref().map(|d| humantime(d.policy.max_refresh)),
        dns_stale_grace: plan.dns.as_ref().map(|d| humantime(d.policy.stale_grace)),
        dns_timeout: plan.dns.as_ref().and_then(|d| d.timeout).map(humantime),
        state_dir: plan.dns.as_ref().map(|d| d.state_dir.clone()),
        strict: Some(plan.strict),
        mode: Some(format!("{:?}", plan.mode).to_lowercase()),
        action: Some(format!("{:?}", plan.action).to_lowercase()),
        reject_rate: Some(plan.reject_rate),
        stats_interval: Some(humantime(plan.stats_interval)),
        metrics_addr: plan.metrics_addr.map(|a| a.to_string()),
        pin_dir: Some(plan.pin_dir.clone()),
        detach_on_exit: Some(plan.detach_on_exit),
    };
    toml::to_string(&effective).context("rendering the effective configuration")
}

fn humantime(duration: std::time::Duration) -> String {
    if duration.subsec_millis() != 0 {
        format!("{}ms", duration.as_millis())
    } else {
        format!("{}s", duration.as_secs())
    }
}

/// The plan `run` (or `check-config`) works from: the file under the flags in `matches`.
pub fn plan(matches: &ArgMatches) -> anyhow::Result<RunPlan> {
    use clap::FromArgMatches as _;
    let mut args = RunArgs::from_arg_matches(matches)?;
    let (path, explicit) = match &args.config {
        Some(path) => (path.clone(), true),
        None => (PathBuf::from(DEFAULT_CONFIG), false),
    };
    if let Some(file) = FileConfig::load(&path, explicit)? {
        apply(&mut args, matches, file)?;
    }
    args.plan()
}

/// Refuses a reload that changes what only a restart can change.
pub fn check_reloadable(running: &RunPlan, new: &RunPlan) -> anyhow::Result<()> {
    if running.ifaces != new.ifaces || running.mode != new.mode || running.pin_dir != new.pin_dir {
        bail!("interfaces, mode and pin-dir change only with a restart");
    }
    if running.metrics_addr != new.metrics_addr {
        bail!("metrics-addr changes only with a restart");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_key() {
        let text = r#"
iface = ["eth0"]
port = [25, 2525]
allow = ["192.0.2.0/24"]
allow-host = ["relay.mail-scanning.test"]
dns-server = ["192.0.2.53"]
dns-min-refresh = "30s"
action = "reject"
metrics-addr = "127.0.0.1:9725"
strict = true
"#;
        let config = FileConfig::parse(text, "mxguard.toml").unwrap();
        assert_eq!(config.port, Some(vec![25, 2525]));
        assert_eq!(config.strict, Some(true));
    }

    #[test]
    fn unknown_key_names_the_key_and_line() {
        let error = FileConfig::parse("iface = [\"eth0\"]\nprots = [25]\n", "mxguard.toml")
            .unwrap_err()
            .to_string();
        assert!(error.contains("prots"), "{error}");
        assert!(error.contains("line 2"), "{error}");
        assert!(error.starts_with("mxguard.toml"), "{error}");
    }

    #[test]
    fn wrong_types_are_errors() {
        assert!(FileConfig::parse("port = \"25\"", "f").is_err());
        assert!(FileConfig::parse("strict = 1", "f").is_err());
        assert!(FileConfig::parse("iface = [", "f").is_err());
    }

    #[test]
    fn missing_default_file_is_fine_but_an_explicit_one_is_not() {
        let missing = Path::new("/nonexistent/mxguard.toml");
        assert!(FileConfig::load(missing, false).unwrap().is_none());
        assert!(
            format!("{:#}", FileConfig::load(missing, true).unwrap_err())
                .contains("cannot read config file")
        );
    }
}
