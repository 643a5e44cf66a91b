//! Host names given with `--allow-host`: validated and always fully qualified.

use std::{fmt, str::FromStr};

use anyhow::{Context as _, bail};
use hickory_resolver::proto::rr::Name;

/// A DNS name in canonical form: lowercase ASCII (IDNs as punycode) with the root dot, e.g.
/// `incoming.mail-scanning.com.`. Queries always use this form, so the resolver's search
/// domains can never change which addresses are allowed.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HostName(String);

impl HostName {
    /// The name as queried, with the trailing dot.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name for hickory, fully qualified.
    pub fn to_name(&self) -> anyhow::Result<Name> {
        let mut name =
            Name::from_ascii(&self.0).with_context(|| format!("{:?} is not a DNS name", self.0))?;
        name.set_fqdn(true);
        Ok(name)
    }
}

impl FromStr for HostName {
    type Err = anyhow::Error;

    /// Accepts `relay.example.com` or `relay.example.com.`; rejects IP addresses (use
    /// `--allow`), wildcards, single labels and anything that is not a valid name.
    fn from_str(text: &str) -> anyhow::Result<Self> {
        let trimmed = text.trim();
        let check = || -> anyhow::Result<HostName> {
            if trimmed.is_empty() {
                bail!("empty host name");
            }
            if trimmed.parse::<std::net::IpAddr>().is_ok() {
                bail!("is an IP address: give addresses with --allow, names with --allow-host");
            }
            let mut name = Name::from_utf8(trimmed).context("not a valid DNS name")?;
            name.set_fqdn(true);
            if name.is_wildcard() {
                bail!("wildcards cannot be resolved");
            }
            // A single label ("relay") would mean a TLD: almost surely a mistake that search
            // domains used to paper over.
            if name.num_labels() < 2 {
                bail!("needs at least two labels (give the full name, e.g. relay.example.com)");
            }
            let ascii = name.to_lowercase().to_ascii();
            if !ascii
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
            {
                bail!("contains characters that are not valid in a host name");
            }
            Ok(HostName(ascii))
        };
        check().with_context(|| format!("invalid host name {text:?}"))
    }
}

impl fmt::Display for HostName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> String {
        text.parse::<HostName>()
            .unwrap_or_else(|e| panic!("{text}: {e:#}"))
            .to_string()
    }

    fn err(text: &str) -> String {
        format!("{:#}", text.parse::<HostName>().expect_err(text))
    }

    #[test]
    fn names_become_fully_qualified_lowercase() {
        assert_eq!(ok("Relay.Example.TEST"), "relay.example.test.");
        assert_eq!(ok("relay.example.test."), "relay.example.test.");
        assert_eq!(
            ok(" incoming.mail-scanning.test "),
            "incoming.mail-scanning.test."
        );
        assert_eq!(ok("bücher.test"), "xn--bcher-kva.test.");
    }

    #[test]
    fn bad_names_are_rejected_with_the_text() {
        assert!(err("").contains("empty host name"));
        assert!(err("192.0.2.1").contains("--allow"));
        assert!(err("2001:db8::1").contains("--allow"));
        assert!(err("*.relay.test").contains("wildcard"));
        assert!(err("relay").contains("two labels"));
        assert!(err("relay..test").contains("\"relay..test\""));
        assert!(err("re lay.test").contains("invalid host name"));
    }

    #[test]
    fn to_name_is_fqdn() {
        let name = "relay.test".parse::<HostName>().unwrap().to_name().unwrap();
        assert!(name.is_fqdn());
        assert_eq!(name.to_ascii(), "relay.test.");
    }
}
