//! The allowlist as a union of sources, with a reference count per prefix: an address that
//! two names (or a name and a static CIDR) contribute stays until neither does.

use std::collections::{BTreeMap, BTreeSet};

use super::HostName;
use crate::cidr::Cidr;

/// Where an allowlist prefix comes from.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Source {
    /// `--allow` and `--allow-file`.
    Static,
    /// An address of a `--allow-host` name.
    Host(HostName),
    /// A prefix an `--allow-spf` record passes.
    Spf(HostName),
}

impl Source {
    /// The source kind, as metrics label it: `static`, `host` or `spf`.
    pub fn kind(&self) -> &'static str {
        match self {
            Source::Static => "static",
            Source::Host(_) => "host",
            Source::Spf(_) => "spf",
        }
    }

    /// The configured name (empty for static prefixes).
    pub fn name(&self) -> &str {
        match self {
            Source::Static => "",
            Source::Host(name) | Source::Spf(name) => name.as_str(),
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Static => f.write_str("static"),
            source => write!(f, "{} {}", source.kind(), source.name()),
        }
    }
}

/// What replacing one source's prefixes did to the union.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UnionChange {
    /// Prefixes that entered the union (no other source had them).
    pub gained: BTreeSet<Cidr>,
    /// Prefixes that left the union (no source has them any more).
    pub lost: BTreeSet<Cidr>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sources {
    contributors: BTreeMap<Cidr, BTreeSet<Source>>,
}

impl Sources {
    /// Makes `source` contribute exactly `cidrs`.
    pub fn set(&mut self, source: &Source, cidrs: &BTreeSet<Cidr>) -> UnionChange {
        let mut change = UnionChange::default();
        for cidr in cidrs {
            let who = self.contributors.entry(*cidr).or_default();
            if who.is_empty() {
                change.gained.insert(*cidr);
            }
            who.insert(source.clone());
        }
        self.contributors.retain(|cidr, who| {
            if !cidrs.contains(cidr) && who.remove(source) && who.is_empty() {
                change.lost.insert(*cidr);
                return false;
            }
            true
        });
        change
    }

    /// Every prefix some source contributes: what the allowlist map must hold.
    pub fn union(&self) -> BTreeSet<Cidr> {
        self.contributors.keys().copied().collect()
    }

    /// Who contributes `cidr`.
    pub fn contributors(&self, cidr: &Cidr) -> impl Iterator<Item = &Source> {
        self.contributors.get(cidr).into_iter().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidrs(list: &[&str]) -> BTreeSet<Cidr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn host(name: &str) -> Source {
        Source::Host(name.parse().unwrap())
    }

    #[test]
    fn shared_addresses_stay_until_no_source_has_them() {
        let mut sources = Sources::default();
        let a = host("a.relay.test");
        let b = host("b.relay.test");
        let change = sources.set(&Source::Static, &cidrs(&["198.51.100.0/24"]));
        assert_eq!(change.gained, cidrs(&["198.51.100.0/24"]));
        let change = sources.set(&a, &cidrs(&["192.0.2.1", "192.0.2.2"]));
        assert_eq!(change.gained, cidrs(&["192.0.2.1", "192.0.2.2"]));
        let change = sources.set(&b, &cidrs(&["192.0.2.2", "2001:db8::2"]));
        assert_eq!(
            change.gained,
            cidrs(&["2001:db8::2"]),
            "192.0.2.2 is already there"
        );
        assert_eq!(
            sources.contributors(&"192.0.2.2".parse().unwrap()).count(),
            2
        );

        // a drops 192.0.2.2: b still has it.
        let change = sources.set(&a, &cidrs(&["192.0.2.1"]));
        assert!(change.gained.is_empty() && change.lost.is_empty());
        // b drops it too: now it goes.
        let change = sources.set(&b, &cidrs(&["2001:db8::2"]));
        assert_eq!(change.lost, cidrs(&["192.0.2.2"]));
        assert_eq!(
            sources.union(),
            cidrs(&["198.51.100.0/24", "192.0.2.1", "2001:db8::2"])
        );
    }

    #[test]
    fn a_name_and_a_static_prefix_share_an_entry() {
        let mut sources = Sources::default();
        let a = host("a.relay.test");
        sources.set(&Source::Static, &cidrs(&["192.0.2.1"]));
        let change = sources.set(&a, &cidrs(&["192.0.2.1"]));
        assert!(change.gained.is_empty());
        let change = sources.set(&a, &BTreeSet::new());
        assert!(change.lost.is_empty(), "the static source still has it");
        assert_eq!(sources.union(), cidrs(&["192.0.2.1"]));
    }
}
