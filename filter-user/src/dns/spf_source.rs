//! The per-record state of an `--allow-spf` source: its prefixes, each with the chains that
//! reached it and when each goes stale, and its schedule. Pure like [`super::refresh`] (time and
//! randomness are parameters), and with the same rules: refresh at the lowest TTL of the chain
//! (clamped), back off on failure, keep the last good set on failure, expire only after the
//! stale grace. A part that failed (an include, `a` or `mx` below the top record) keeps its
//! own last good prefixes while the rest of the record is updated.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use tokio::time::Instant;

use super::{
    FailureKind, HostName, RefreshPolicy,
    spf_expand::{Chain, Expansion},
};
use crate::cidr::Cidr;

/// One SPF source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpfState {
    pub name: HostName,
    /// Prefix -> each chain that reached it -> when that chain's word for it goes stale.
    pub entries: BTreeMap<Cidr, BTreeMap<Chain, Instant>>,
    pub next_refresh: Instant,
    pub failures_in_row: u32,
}

/// What one expansion round did to the source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpfRefreshed {
    pub added: BTreeSet<Cidr>,
    pub removed: BTreeSet<Cidr>,
    /// The whole round failed (nothing changed).
    pub failure: Option<FailureKind>,
    /// Parts that failed and kept their last good prefixes.
    pub partial: Vec<(Chain, FailureKind)>,
    pub ttl: Option<Duration>,
    pub next_in: Duration,
    /// Whether DNS confirmed anything (worth persisting).
    pub confirmed: bool,
}

impl SpfState {
    /// A source never looked up: due at once.
    pub fn new(name: HostName, now: Instant) -> Self {
        SpfState {
            name,
            entries: BTreeMap::new(),
            next_refresh: now,
            failures_in_row: 0,
        }
    }

    /// The prefixes the source contributes.
    pub fn prefixes(&self) -> BTreeSet<Cidr> {
        self.entries.keys().copied().collect()
    }

    /// The next lookup or stale expiry.
    pub fn next_event(&self) -> Instant {
        self.entries
            .values()
            .flat_map(|chains| chains.values().copied())
            .chain([self.next_refresh])
            .min()
            .unwrap_or(self.next_refresh)
    }

    /// Applies a round: `outcome` is the expansion after the guards, or why the round failed.
    pub fn apply(
        &mut self,
        outcome: Result<Expansion, FailureKind>,
        now: Instant,
        policy: &RefreshPolicy,
        rand01: f64,
    ) -> SpfRefreshed {
        let before = self.prefixes();
        let expansion = match outcome {
            Ok(expansion) => expansion,
            Err(kind) => {
                self.failures_in_row = self.failures_in_row.saturating_add(1);
                let next_in = policy.retry_delay(self.failures_in_row, rand01);
                self.next_refresh = now + next_in;
                return SpfRefreshed {
                    added: BTreeSet::new(),
                    removed: BTreeSet::new(),
                    failure: Some(kind),
                    partial: Vec::new(),
                    ttl: None,
                    next_in,
                    confirmed: false,
                };
            }
        };
        let stale_at = now + policy.stale_grace;
        let mut entries: BTreeMap<Cidr, BTreeMap<Chain, Instant>> = expansion
            .prefixes
            .iter()
            .map(|(cidr, chains)| {
                let chains = chains
                    .iter()
                    .map(|chain| (chain.clone(), stale_at))
                    .collect();
                (*cidr, chains)
            })
            .collect();
        // A failed part keeps what it last gave, with its old deadlines.
        for (failed, _) in &expansion.failed {
            for (cidr, chains) in &self.entries {
                for (chain, at) in chains {
                    if chain.starts_with(failed) {
                        entries
                            .entry(*cidr)
                            .or_default()
                            .entry(chain.clone())
                            .or_insert(*at);
                    }
                }
            }
        }
        self.entries = entries;
        let refresh_in = policy.refresh_delay(expansion.ttl.unwrap_or(policy.max_refresh), rand01);
        let next_in = if expansion.failed.is_empty() {
            self.failures_in_row = 0;
            refresh_in
        } else {
            self.failures_in_row = self.failures_in_row.saturating_add(1);
            refresh_in.min(policy.retry_delay(self.failures_in_row, rand01))
        };
        self.next_refresh = now + next_in;
        let after = self.prefixes();
        SpfRefreshed {
            added: after.difference(&before).copied().collect(),
            removed: before.difference(&after).copied().collect(),
            failure: None,
            partial: expansion.failed,
            ttl: expansion.ttl,
            next_in,
            confirmed: true,
        }
    }

    /// Drops every chain's word that has gone stale, and prefixes no chain holds any more;
    /// returns the prefixes removed.
    pub fn expire(&mut self, now: Instant) -> BTreeSet<Cidr> {
        let before = self.prefixes();
        self.entries.retain(|_, chains| {
            chains.retain(|_, at| now < *at);
            !chains.is_empty()
        });
        before.difference(&self.prefixes()).copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn policy() -> RefreshPolicy {
        RefreshPolicy {
            min_refresh: 10 * S,
            max_refresh: 600 * S,
            stale_grace: 3600 * S,
        }
    }

    fn chain(parts: &[&str]) -> Chain {
        parts.iter().map(|p| p.to_string()).collect()
    }

    fn expansion(list: &[(&str, &[&str])], ttl: u64) -> Expansion {
        let mut expansion = Expansion {
            ttl: Some(Duration::from_secs(ttl)),
            ..Expansion::default()
        };
        for (cidr, parts) in list {
            expansion
                .prefixes
                .entry(cidr.parse().unwrap())
                .or_default()
                .insert(chain(parts));
        }
        expansion
    }

    fn cidrs(list: &[&str]) -> BTreeSet<Cidr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn a_failing_include_keeps_its_last_good_prefixes_until_the_grace() {
        let now = Instant::now();
        let mut state = SpfState::new("spf.test".parse().unwrap(), now);
        let root = ["spf spf.test"];
        let eu = ["spf spf.test", "include:eu.spf.test"];
        let done = state.apply(
            Ok(expansion(
                &[("192.0.2.0/24", &root), ("198.51.100.0/24", &eu)],
                300,
            )),
            now,
            &policy(),
            0.0,
        );
        assert_eq!(done.added, cidrs(&["192.0.2.0/24", "198.51.100.0/24"]));
        assert_eq!(done.next_in, 300 * S, "the chain's lowest TTL");

        // The include fails, the top record changes: the include's prefix stays.
        let later = now + 300 * S;
        let mut round = expansion(&[("203.0.113.0/24", &root)], 300);
        round.failed.push((chain(&eu), FailureKind::ServFail));
        let done = state.apply(Ok(round), later, &policy(), 0.0);
        assert_eq!(done.added, cidrs(&["203.0.113.0/24"]));
        assert_eq!(done.removed, cidrs(&["192.0.2.0/24"]));
        assert_eq!(done.next_in, 10 * S, "the failing part is retried soon");
        assert_eq!(
            state.prefixes(),
            cidrs(&["198.51.100.0/24", "203.0.113.0/24"])
        );

        // A whole failure changes nothing; the include's word expires an hour after the
        // first answer, the top record's an hour after the second.
        let done = state.apply(Err(FailureKind::Timeout), later + 10 * S, &policy(), 0.0);
        assert!(done.failure.is_some() && done.added.is_empty() && done.removed.is_empty());
        assert_eq!(done.next_in, 20 * S, "the second failure in a row");
        assert!(state.expire(now + 3599 * S).is_empty());
        assert_eq!(state.expire(now + 3600 * S), cidrs(&["198.51.100.0/24"]));
        assert_eq!(state.expire(later + 3600 * S), cidrs(&["203.0.113.0/24"]));
        assert!(state.prefixes().is_empty());
    }
}
