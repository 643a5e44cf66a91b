//! The guards every DNS-derived prefix passes before it can reach the allowlist, whatever the
//! source kind (`--allow-host` names, `--allow-spf` records). A spoofed, hijacked or simply
//! wrong answer must not open the filter wide: a prefix shorter than the minimum, or outside
//! every `--dns-allow-within` range, is refused (the rest of the answer is used), and an answer
//! with more prefixes than the cap is refused whole (the source keeps its last good set).
//! Static `--allow` prefixes never pass through here. Pure: `screen` is the whole rule, the
//! engine logs and counts what it returns (docs/dns.md, "Guards").

use std::{collections::BTreeSet, fmt};

use crate::cidr::Cidr;

/// Default for `--dns-min-prefix-v4`.
pub const DEFAULT_MIN_PREFIX_V4: u8 = 12;
/// Default for `--dns-min-prefix-v6`.
pub const DEFAULT_MIN_PREFIX_V6: u8 = 28;
/// Default for `--dns-max-prefixes`.
pub const DEFAULT_MAX_PREFIXES: usize = 1024;

/// The guard settings, validated by `cli::RunArgs::plan`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Guards {
    /// Shortest IPv4 prefix a DNS source may contribute (1..=32).
    pub min_prefix_v4: u8,
    /// Shortest IPv6 prefix a DNS source may contribute (1..=128).
    pub min_prefix_v6: u8,
    /// Most prefixes one source may contribute; a larger answer is refused whole.
    pub max_prefixes: usize,
    /// When not empty, a DNS-derived prefix must lie inside one of these.
    pub allow_within: Vec<Cidr>,
}

impl Default for Guards {
    fn default() -> Self {
        Guards {
            min_prefix_v4: DEFAULT_MIN_PREFIX_V4,
            min_prefix_v6: DEFAULT_MIN_PREFIX_V6,
            max_prefixes: DEFAULT_MAX_PREFIXES,
            allow_within: Vec::new(),
        }
    }
}

/// Which guard refused something; the label is the metric's `guard` value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Guard {
    /// Shorter than `--dns-min-prefix-v4/-v6`.
    MinPrefix,
    /// Outside every `--dns-allow-within` range.
    AllowWithin,
    /// The answer had more prefixes than `--dns-max-prefixes`.
    MaxPrefixes,
}

impl Guard {
    pub fn label(self) -> &'static str {
        match self {
            Guard::MinPrefix => "min-prefix",
            Guard::AllowWithin => "allow-within",
            Guard::MaxPrefixes => "max-prefixes",
        }
    }
}

impl fmt::Display for Guard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// What the guards made of one source's answer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Screened {
    /// The prefixes that may enter the allowlist (empty when `over_cap`).
    pub kept: BTreeSet<Cidr>,
    /// Prefixes refused one by one, with the guard that refused each.
    pub refused: Vec<(Cidr, Guard)>,
    /// Set when the prefixes left after the per-prefix guards exceed the cap: the number found.
    /// The whole answer is refused then.
    pub over_cap: Option<usize>,
}

impl Guards {
    /// Applies the per-prefix guards (minimum length, then the allowed ranges) to `candidates`,
    /// then the cap to what is left.
    pub fn screen(&self, candidates: &BTreeSet<Cidr>) -> Screened {
        let mut screened = Screened::default();
        for cidr in candidates {
            let min = match cidr {
                Cidr::V4 { .. } => self.min_prefix_v4,
                Cidr::V6 { .. } => self.min_prefix_v6,
            };
            if cidr.prefix_len() < min {
                screened.refused.push((*cidr, Guard::MinPrefix));
            } else if !self.allow_within.is_empty()
                && !self.allow_within.iter().any(|range| within(cidr, range))
            {
                screened.refused.push((*cidr, Guard::AllowWithin));
            } else {
                screened.kept.insert(*cidr);
            }
        }
        if screened.kept.len() > self.max_prefixes {
            screened.over_cap = Some(screened.kept.len());
            screened.kept.clear();
        }
        screened
    }
}

/// Whether every address of `inner` lies in `outer`.
fn within(inner: &Cidr, outer: &Cidr) -> bool {
    inner.prefix_len() >= outer.prefix_len() && outer.contains(inner.addr())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidrs(list: &[&str]) -> BTreeSet<Cidr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn short_prefixes_are_refused_and_the_rest_kept() {
        let guards = Guards::default();
        let screened = guards.screen(&cidrs(&[
            "0.0.0.0/0",
            "192.0.0.0/8",
            "192.0.2.0/24",
            "203.0.0.0/12",
            "::/0",
            "2001:da0::/27",
            "2001:db0::/28",
            "2001:db8::1",
        ]));
        assert_eq!(
            screened.kept,
            cidrs(&[
                "192.0.2.0/24",
                "203.0.0.0/12",
                "2001:db0::/28",
                "2001:db8::1"
            ])
        );
        let refused: BTreeSet<_> = screened
            .refused
            .iter()
            .map(|(c, g)| (c.to_string(), *g))
            .collect();
        assert_eq!(
            refused,
            [
                ("0.0.0.0/0".to_string(), Guard::MinPrefix),
                ("192.0.0.0/8".to_string(), Guard::MinPrefix),
                ("::/0".to_string(), Guard::MinPrefix),
                ("2001:da0::/27".to_string(), Guard::MinPrefix),
            ]
            .into()
        );
        assert_eq!(screened.over_cap, None);
    }

    #[test]
    fn allow_within_keeps_only_prefixes_inside_a_range() {
        let guards = Guards {
            allow_within: cidrs(&["192.0.2.0/24", "2001:db8:1::/48"])
                .into_iter()
                .collect(),
            ..Guards::default()
        };
        let screened = guards.screen(&cidrs(&[
            "192.0.2.10",
            "192.0.2.128/25",
            "192.0.0.0/16",
            "203.0.113.5",
            "2001:db8:1::10",
            "2001:db8:2::10",
        ]));
        assert_eq!(
            screened.kept,
            cidrs(&["192.0.2.10", "192.0.2.128/25", "2001:db8:1::10"])
        );
        assert!(
            screened
                .refused
                .iter()
                .all(|(_, guard)| *guard == Guard::AllowWithin)
        );
        assert_eq!(screened.refused.len(), 3, "a wider prefix is not inside");
    }

    #[test]
    fn an_answer_over_the_cap_is_refused_whole() {
        let guards = Guards {
            max_prefixes: 2,
            ..Guards::default()
        };
        assert_eq!(
            guards.screen(&cidrs(&["192.0.2.1", "192.0.2.2"])).over_cap,
            None
        );
        let screened = guards.screen(&cidrs(&["192.0.2.1", "192.0.2.2", "192.0.2.3"]));
        assert_eq!(screened.over_cap, Some(3));
        assert!(screened.kept.is_empty());
        // Refused prefixes do not count toward the cap.
        let screened = guards.screen(&cidrs(&["192.0.2.1", "192.0.2.2", "192.0.0.0/8"]));
        assert_eq!(screened.over_cap, None);
        assert_eq!(screened.kept.len(), 2);
    }
}
