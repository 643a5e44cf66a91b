//! The TOML configuration file (`--config`, default /etc/mxguard/mxguard.toml).
//!
//! It holds any flag of `mxguard run` under the flag's own name, because both are read into
//! the one declaration, [`RunArgs`]. A flag given on the command line overrides the file's
//! value (lists are replaced, not merged). An unknown key or a bad value is an error naming
//! the file, the line and the key.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use clap::{ArgMatches, FromArgMatches as _, parser::ValueSource};

use crate::cli::{RunArgs, RunPlan};

pub const DEFAULT_CONFIG: &str = "/etc/mxguard/mxguard.toml";

/// A parsed config file: its keys and values, already checked against [`RunArgs`].
#[derive(Debug, Default, PartialEq)]
pub struct FileConfig {
    table: toml::Table,
}

impl FileConfig {
    /// Parses TOML text; `origin` names the file in errors (which carry line, column and the
    /// line's text, so the key is named).
    pub fn parse(text: &str, origin: &str) -> anyhow::Result<Self> {
        let located = |error: toml::de::Error| {
            let position = error.span().map(|span| {
                let start = span.start.min(text.len());
                let before = &text[..start];
                let line = before.matches('\n').count() + 1;
                let line_start = before.rfind('\n').map_or(0, |i| i + 1);
                let column = start - line_start + 1;
                let line_text = text[line_start..].lines().next().unwrap_or("").trim();
                format!("line {line}, column {column} (`{line_text}`)")
            });
            // One line, `file:line:column: message`, so it reads well in a log.
            let message = error.message().trim().replace('\n', " ");
            match position {
                Some(position) => anyhow::anyhow!("{origin}: {position}: {message}"),
                None => anyhow::anyhow!("{origin}: {message}"),
            }
        };
        // Reading it as the options checks every key and value, with its position.
        toml::from_str::<RunArgs>(text).map_err(located)?;
        let table = toml::from_str(text).map_err(located)?;
        Ok(FileConfig { table })
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

    /// The options from the command line (`flags`, as clap matched them in `matches`), with
    /// the file's value wherever the command line did not give the flag.
    pub fn under(&self, flags: &RunArgs, matches: &ArgMatches) -> anyhow::Result<RunArgs> {
        let mut merged =
            toml::Table::try_from(flags).context("writing the command line as options")?;
        for (key, value) in &self.table {
            // clap's id of an option is its field name; the file spells it in kebab-case.
            let id = key.replace('-', "_");
            if !matches!(matches.value_source(&id), Some(ValueSource::CommandLine)) {
                merged.insert(key.clone(), value.clone());
            }
        }
        let mut options: RunArgs = merged
            .try_into()
            .context("merging the config file under the command line")?;
        options.config.clone_from(&flags.config);
        Ok(options)
    }
}

/// The effective configuration, as a config file would say it (for `check-config`).
pub fn render(plan: &RunPlan) -> anyhow::Result<String> {
    toml::to_string(&plan.options).context("rendering the effective configuration")
}

/// The plan `run` (or `check-config`) works from: the file under the flags in `matches`.
pub fn plan(matches: &ArgMatches) -> anyhow::Result<RunPlan> {
    let flags = RunArgs::from_arg_matches(matches)?;
    let (path, explicit) = match &flags.config {
        Some(path) => (path.clone(), true),
        None => (PathBuf::from(DEFAULT_CONFIG), false),
    };
    let options = match FileConfig::load(&path, explicit)? {
        Some(file) => file.under(&flags, matches)?,
        None => flags,
    };
    options.plan()
}

/// Refuses a reload that changes what only a restart can change.
pub fn check_reloadable(running: &RunPlan, new: &RunPlan) -> anyhow::Result<()> {
    let (running, new) = (&running.options, &new.options);
    if running.iface != new.iface || running.mode != new.mode || running.pin_dir != new.pin_dir {
        bail!("interfaces, mode and pin-dir change only with a restart");
    }
    if running.metrics_addr != new.metrics_addr {
        bail!("metrics-addr changes only with a restart");
    }
    if running.milter != new.milter
        || running.milter_max_connections != new.milter_max_connections
        || running.milter_idle_timeout != new.milter_idle_timeout
    {
        bail!("milter, milter-max-connections and milter-idle-timeout change only with a restart");
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
        let options: RunArgs = config.table.clone().try_into().unwrap();
        assert_eq!(options.port, [crate::cli::Port(25), crate::cli::Port(2525)]);
        assert!(options.strict);
        assert_eq!(options.action, crate::cli::ActionArg::Reject);
    }

    /// Options with every optional value set, so that each one is written out.
    fn every_option_set() -> RunArgs {
        RunArgs {
            dns_timeout: Some("2s".parse().unwrap()),
            dns_trust_anchor: Some("/etc/mxguard/anchor.key".into()),
            metrics_addr: Some("127.0.0.1:9725".parse().unwrap()),
            milter: Some("inet:127.0.0.1:9900".parse().unwrap()),
            ..RunArgs::default()
        }
    }

    #[test]
    fn every_option_has_one_name_as_flag_id_and_file_key() {
        use clap::Args as _;
        let command = RunArgs::augment_args(clap::Command::new("run"));
        let table = toml::Table::try_from(every_option_set()).unwrap();
        let keys: std::collections::BTreeSet<String> = table.keys().cloned().collect();
        let mut flags = std::collections::BTreeSet::new();
        for arg in command.get_arguments() {
            let id = arg.get_id().as_str();
            let long = arg.get_long().expect("every run option is a long flag");
            // `under` relies on this: a file key names the clap id that overrides it.
            assert_eq!(long, id.replace('_', "-"), "flag --{long} has the id {id}");
            if id != "config" {
                flags.insert(long.to_owned());
            }
        }
        assert_eq!(keys, flags, "the file keys are exactly the flags");
    }

    #[test]
    fn rendered_configuration_reads_back_as_the_same_options() {
        let options = every_option_set();
        let text = toml::to_string(&options).unwrap();
        let file = FileConfig::parse(&text, "rendered").unwrap();
        let back: RunArgs = file.table.try_into().unwrap();
        assert_eq!(back, options, "{text}");
    }

    #[test]
    fn flags_override_the_file_and_lists_are_replaced() {
        use clap::Args as _;
        let command = RunArgs::augment_args(clap::Command::new("run"));
        let matches = command
            .try_get_matches_from(["run", "--port", "26", "--strict"])
            .unwrap();
        let flags = RunArgs::from_arg_matches(&matches).unwrap();
        let file = FileConfig::parse(
            "port = [2525, 25]\nstrict = false\naction = \"reject\"\niface = [\"eth0\"]\n",
            "f",
        )
        .unwrap();
        let options = file.under(&flags, &matches).unwrap();
        assert_eq!(options.port, [crate::cli::Port(26)], "the flag wins, whole");
        assert!(
            options.strict,
            "a flag set on the command line wins over the file"
        );
        assert_eq!(
            options.action,
            crate::cli::ActionArg::Reject,
            "the file fills the rest"
        );
        assert_eq!(options.iface, ["eth0"]);
        assert_eq!(options.mode, crate::cli::ModeArg::Auto, "defaults stay");
    }

    #[test]
    fn bad_values_name_the_line_and_key() {
        let error = FileConfig::parse("iface = [\"eth0\"]\naction = \"bounce\"\n", "f")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("line 2") && error.contains("action"),
            "{error}"
        );
        let error = FileConfig::parse("port = [0]\n", "f")
            .unwrap_err()
            .to_string();
        assert!(error.contains("port 0 is out of range"), "{error}");
        let error = FileConfig::parse("allow = [\"192.0.2.1/24\"]\n", "f")
            .unwrap_err()
            .to_string();
        assert!(error.contains("did you mean 192.0.2.0/24"), "{error}");
        let error = FileConfig::parse("dns-min-refresh = \"soon\"\n", "f")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("dns-min-refresh") && error.contains("soon"),
            "{error}"
        );
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
