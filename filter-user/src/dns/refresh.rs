//! The per-name refresh state machine. Pure: the caller passes the time and the randomness, so
//! scheduling, back-off, fail-static and stale expiry are unit-tested without a clock.
//!
//! Rules (see `docs/dns.md`):
//! - A family (A or AAAA) that answers with records replaces its addresses; the refresh is due
//!   when the smallest TTL runs out, clamped to [min, max], plus a little jitter.
//! - A family that answers NODATA while the other family has records really has no addresses:
//!   it is emptied (the relay dropped IPv6, say).
//! - When neither family has records (timeout, SERVFAIL, REFUSED, NXDOMAIN, empty answer, ...)
//!   nothing changes: the name keeps its last known addresses and retries with a bounded
//!   exponential back-off. The same holds for one family that fails while the other answers.
//! - A family's addresses go only when it has had no successful answer for the stale grace.

use std::{collections::BTreeSet, fmt, net::IpAddr, time::Duration};

use tokio::time::Instant;

use super::{FailureKind, FamilyAnswer, HostName, NameAnswer};

/// Retries after failures never wait longer than this (nor longer than the max refresh), so a
/// name recovers within minutes once DNS is back.
pub const RETRY_CAP: Duration = Duration::from_secs(300);
/// Jitter is at most 1/16 of the delay and never more than this.
pub const MAX_JITTER: Duration = Duration::from_secs(30);

/// When to refresh and when to give up on old addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RefreshPolicy {
    /// Never query a name more often than this, whatever its TTL (also the first retry delay).
    pub min_refresh: Duration,
    /// Query at least this often, even with a longer TTL.
    pub max_refresh: Duration,
    /// A family's addresses are removed after this long without a successful answer.
    pub stale_grace: Duration,
}

impl RefreshPolicy {
    /// The delay before the next refresh after an answer whose smallest TTL is `ttl`.
    /// `rand01` in [0, 1) picks the jitter.
    pub fn refresh_delay(&self, ttl: Duration, rand01: f64) -> Duration {
        // Not Duration::clamp: it panics on min > max, which `plan` rules out but a library
        // caller might not.
        let base = ttl.min(self.max_refresh).max(self.min_refresh);
        base + jitter(base, rand01)
    }

    /// The delay before retrying after `failures` consecutive failed rounds (1 or more):
    /// min refresh, doubling, capped at min(max refresh, [`RETRY_CAP`]) but never below the min.
    pub fn retry_delay(&self, failures: u32, rand01: f64) -> Duration {
        let cap = self.max_refresh.min(RETRY_CAP).max(self.min_refresh);
        let doublings = failures.saturating_sub(1).min(30);
        let base = self
            .min_refresh
            .checked_mul(1 << doublings)
            .unwrap_or(cap)
            .min(cap);
        base + jitter(base, rand01)
    }
}

fn jitter(base: Duration, rand01: f64) -> Duration {
    // mul_f64 panics on NaN: a broken random source means no jitter, not a crash.
    let fraction = if rand01.is_finite() {
        rand01.clamp(0.0, 1.0)
    } else {
        0.0
    };
    base.mul_f64(fraction / 16.0).min(MAX_JITTER)
}

/// Which families a failure concerns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Families {
    A,
    Aaaa,
    Both,
}

impl fmt::Display for Families {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Families::A => "A",
            Families::Aaaa => "AAAA",
            Families::Both => "A and AAAA",
        })
    }
}

/// A failed lookup round for a name (the name kept what it had for these families).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NameFailure {
    pub families: Families,
    pub kind: FailureKind,
}

/// The addresses of one family of one name and when they go stale.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FamilyState {
    pub addrs: BTreeSet<IpAddr>,
    /// The last successful answer for this family (records, or NODATA next to the other
    /// family's records) plus the stale grace; `None` before the first one. A deadline rather
    /// than the answer's time, because a time restored from the state file may lie before the
    /// monotonic clock's start (a reboot), while the deadline always lies ahead.
    pub stale_at: Option<Instant>,
}

impl FamilyState {
    fn stale_at(&self) -> Option<Instant> {
        // Addresses are only ever set together with a deadline; an empty family has none.
        self.stale_at.filter(|_| !self.addrs.is_empty())
    }
}

/// What one lookup round did to a name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refreshed {
    pub added: BTreeSet<IpAddr>,
    pub removed: BTreeSet<IpAddr>,
    /// Set when a family (or both) failed and kept its addresses.
    pub failure: Option<NameFailure>,
    /// The smallest TTL among the records received, if any.
    pub ttl: Option<Duration>,
    /// When the next lookup is due, from now.
    pub next_in: Duration,
    /// Whether any family got a successful answer (worth persisting).
    pub confirmed: bool,
}

/// One configured name: its last known good addresses and its schedule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NameState {
    pub name: HostName,
    pub v4: FamilyState,
    pub v6: FamilyState,
    /// When the next lookup is due.
    pub next_refresh: Instant,
    /// Failed rounds since the last fully successful one (drives the back-off).
    pub failures_in_row: u32,
}

impl NameState {
    /// A name that has never been looked up: due at once.
    pub fn new(name: HostName, now: Instant) -> Self {
        NameState {
            name,
            v4: FamilyState::default(),
            v6: FamilyState::default(),
            next_refresh: now,
            failures_in_row: 0,
        }
    }

    /// All addresses the name currently contributes.
    pub fn addresses(&self) -> BTreeSet<IpAddr> {
        self.v4.addrs.union(&self.v6.addrs).copied().collect()
    }

    /// The next moment something must happen: a lookup or a stale expiry.
    pub fn next_event(&self) -> Instant {
        [
            Some(self.next_refresh),
            self.v4.stale_at(),
            self.v6.stale_at(),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(self.next_refresh)
    }

    /// Applies a lookup round's answer received at `now`.
    pub fn apply(
        &mut self,
        answer: NameAnswer,
        now: Instant,
        policy: &RefreshPolicy,
        rand01: f64,
    ) -> Refreshed {
        let before = self.addresses();
        let has_records = |answer: &FamilyAnswer| matches!(answer, FamilyAnswer::Records { .. });

        if !has_records(&answer.v4) && !has_records(&answer.v6) {
            // Fail-static: nothing usable for the whole name, keep everything.
            let kind = match (answer.v4, answer.v6) {
                (FamilyAnswer::Failed(kind), _) | (_, FamilyAnswer::Failed(kind)) => kind,
                _ => FailureKind::Empty,
            };
            self.failures_in_row = self.failures_in_row.saturating_add(1);
            let next_in = policy.retry_delay(self.failures_in_row, rand01);
            self.next_refresh = now + next_in;
            return Refreshed {
                added: BTreeSet::new(),
                removed: BTreeSet::new(),
                failure: Some(NameFailure {
                    families: Families::Both,
                    kind,
                }),
                ttl: None,
                next_in,
                confirmed: false,
            };
        }

        let mut ttl: Option<Duration> = None;
        let mut failure = None;
        for (family, state, answer) in [
            (Families::A, &mut self.v4, answer.v4),
            (Families::Aaaa, &mut self.v6, answer.v6),
        ] {
            match answer {
                FamilyAnswer::Records {
                    addrs,
                    ttl: record_ttl,
                } => {
                    state.addrs = addrs;
                    state.stale_at = Some(now + policy.stale_grace);
                    ttl = Some(ttl.map_or(record_ttl, |t| t.min(record_ttl)));
                }
                FamilyAnswer::NoData => {
                    // The other family has records: the name really has none of this kind.
                    state.addrs.clear();
                    state.stale_at = Some(now + policy.stale_grace);
                }
                FamilyAnswer::Failed(kind) => {
                    failure = Some(NameFailure {
                        families: family,
                        kind,
                    })
                }
            }
        }
        let refresh_in = policy.refresh_delay(ttl.unwrap_or(policy.max_refresh), rand01);
        let next_in = if failure.is_some() {
            self.failures_in_row = self.failures_in_row.saturating_add(1);
            refresh_in.min(policy.retry_delay(self.failures_in_row, rand01))
        } else {
            self.failures_in_row = 0;
            refresh_in
        };
        self.next_refresh = now + next_in;
        let after = self.addresses();
        Refreshed {
            added: after.difference(&before).copied().collect(),
            removed: before.difference(&after).copied().collect(),
            failure,
            ttl,
            next_in,
            confirmed: true,
        }
    }

    /// Drops each family whose addresses have gone `stale_grace` without a successful answer;
    /// returns the addresses removed.
    pub fn expire(&mut self, now: Instant) -> BTreeSet<IpAddr> {
        let before = self.addresses();
        for state in [&mut self.v4, &mut self.v6] {
            if state.stale_at().is_some_and(|at| now >= at) {
                state.addrs.clear();
            }
        }
        before.difference(&self.addresses()).copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn policy() -> RefreshPolicy {
        RefreshPolicy {
            min_refresh: 30 * S,
            max_refresh: 3600 * S,
            stale_grace: 24 * 3600 * S,
        }
    }

    fn ips(list: &[&str]) -> BTreeSet<IpAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn records(list: &[&str], ttl: u64) -> FamilyAnswer {
        FamilyAnswer::Records {
            addrs: ips(list),
            ttl: Duration::from_secs(ttl),
        }
    }

    fn answer(v4: FamilyAnswer, v6: FamilyAnswer) -> NameAnswer {
        NameAnswer { v4, v6 }
    }

    fn fresh(now: Instant) -> NameState {
        NameState::new("relay.test".parse().unwrap(), now)
    }

    #[test]
    fn delays_follow_the_ttl_within_bounds() {
        let p = policy();
        assert_eq!(p.refresh_delay(300 * S, 0.0), 300 * S);
        assert_eq!(
            p.refresh_delay(5 * S, 0.0),
            30 * S,
            "not before the minimum"
        );
        assert_eq!(p.refresh_delay(Duration::ZERO, 0.0), 30 * S);
        assert_eq!(p.refresh_delay(86400 * S, 0.0), 3600 * S, "at least hourly");
        // Jitter only ever adds, by at most 1/16 and at most 30 s.
        assert_eq!(p.refresh_delay(320 * S, 0.999_999).as_secs(), 339);
        assert_eq!(p.refresh_delay(3600 * S, 0.999_999), 3630 * S);
        assert_eq!(
            p.refresh_delay(300 * S, f64::NAN),
            300 * S,
            "no jitter, no panic"
        );
    }

    #[test]
    fn retries_back_off_with_a_bound() {
        let p = policy();
        let delays: Vec<u64> = (1..=8).map(|n| p.retry_delay(n, 0.0).as_secs()).collect();
        assert_eq!(delays, [30, 60, 120, 240, 300, 300, 300, 300]);
        assert_eq!(p.retry_delay(u32::MAX, 0.0), 300 * S);
        let short = RefreshPolicy {
            min_refresh: S,
            max_refresh: 4 * S,
            stale_grace: 60 * S,
        };
        let delays: Vec<u64> = (1..=4)
            .map(|n| short.retry_delay(n, 0.0).as_secs())
            .collect();
        assert_eq!(delays, [1, 2, 4, 4], "capped by the max refresh");
    }

    #[test]
    fn first_answer_fills_both_families_and_schedules_by_ttl() {
        let now = Instant::now();
        let mut name = fresh(now);
        assert_eq!(name.next_refresh, now, "due at once");
        let done = name.apply(
            answer(
                records(&["192.0.2.1", "192.0.2.2"], 120),
                records(&["2001:db8::1"], 60),
            ),
            now,
            &policy(),
            0.0,
        );
        assert_eq!(done.added, ips(&["192.0.2.1", "192.0.2.2", "2001:db8::1"]));
        assert!(done.removed.is_empty() && done.failure.is_none() && done.confirmed);
        assert_eq!(done.ttl, Some(60 * S), "smallest TTL of both families");
        assert_eq!(name.next_refresh, now + 60 * S);
    }

    #[test]
    fn changed_record_set_adds_and_removes() {
        let now = Instant::now();
        let mut name = fresh(now);
        name.apply(
            answer(
                records(&["192.0.2.1", "192.0.2.2"], 60),
                FamilyAnswer::NoData,
            ),
            now,
            &policy(),
            0.0,
        );
        let later = now + 60 * S;
        let done = name.apply(
            answer(
                records(&["192.0.2.2", "192.0.2.3"], 60),
                FamilyAnswer::NoData,
            ),
            later,
            &policy(),
            0.0,
        );
        assert_eq!(done.added, ips(&["192.0.2.3"]));
        assert_eq!(done.removed, ips(&["192.0.2.1"]));
    }

    #[test]
    fn every_failure_keeps_the_addresses_and_backs_off() {
        let p = policy();
        for (v4, v6, kind) in [
            (
                FamilyAnswer::Failed(FailureKind::Timeout),
                FamilyAnswer::Failed(FailureKind::Timeout),
                FailureKind::Timeout,
            ),
            (
                FamilyAnswer::Failed(FailureKind::ServFail),
                FamilyAnswer::Failed(FailureKind::ServFail),
                FailureKind::ServFail,
            ),
            (
                FamilyAnswer::Failed(FailureKind::Refused),
                FamilyAnswer::Failed(FailureKind::Refused),
                FailureKind::Refused,
            ),
            (
                FamilyAnswer::Failed(FailureKind::NxDomain),
                FamilyAnswer::Failed(FailureKind::NxDomain),
                FailureKind::NxDomain,
            ),
            (
                FamilyAnswer::NoData,
                FamilyAnswer::NoData,
                FailureKind::Empty,
            ),
            (
                FamilyAnswer::NoData,
                FamilyAnswer::Failed(FailureKind::ServFail),
                FailureKind::ServFail,
            ),
        ] {
            let now = Instant::now();
            let mut name = fresh(now);
            name.apply(
                answer(records(&["192.0.2.1"], 60), records(&["2001:db8::1"], 60)),
                now,
                &p,
                0.0,
            );
            let kept = name.addresses();
            let mut at = now + 60 * S;
            let mut delays = Vec::new();
            for _ in 0..3 {
                let done = name.apply(answer(v4.clone(), v6.clone()), at, &p, 0.0);
                assert!(done.added.is_empty() && done.removed.is_empty(), "{kind}");
                assert!(!done.confirmed);
                assert_eq!(
                    done.failure,
                    Some(NameFailure {
                        families: Families::Both,
                        kind: kind.clone()
                    })
                );
                delays.push(done.next_in.as_secs());
                at += done.next_in;
            }
            assert_eq!(name.addresses(), kept, "{kind}");
            assert_eq!(delays, [30, 60, 120], "{kind}");
            // Success resets the back-off.
            let done = name.apply(
                answer(records(&["192.0.2.1"], 90), FamilyAnswer::NoData),
                at,
                &p,
                0.0,
            );
            assert_eq!(done.next_in, 90 * S);
            assert_eq!(done.removed, ips(&["2001:db8::1"]));
            assert_eq!(name.failures_in_row, 0);
        }
    }

    #[test]
    fn one_failing_family_keeps_its_addresses_while_the_other_updates() {
        let p = policy();
        let now = Instant::now();
        let mut name = fresh(now);
        name.apply(
            answer(records(&["192.0.2.1"], 600), records(&["2001:db8::1"], 600)),
            now,
            &p,
            0.0,
        );
        let at = now + 600 * S;
        let done = name.apply(
            answer(
                records(&["192.0.2.9"], 600),
                FamilyAnswer::Failed(FailureKind::ServFail),
            ),
            at,
            &p,
            0.0,
        );
        assert_eq!(done.added, ips(&["192.0.2.9"]));
        assert_eq!(done.removed, ips(&["192.0.2.1"]));
        assert_eq!(
            done.failure,
            Some(NameFailure {
                families: Families::Aaaa,
                kind: FailureKind::ServFail
            })
        );
        assert_eq!(done.next_in, 30 * S, "the failing family is retried soon");
        assert_eq!(name.v6.addrs, ips(&["2001:db8::1"]));
        assert_eq!(
            name.v6.stale_at,
            Some(now + p.stale_grace),
            "AAAA not confirmed again"
        );
    }

    #[test]
    fn addresses_expire_only_after_the_stale_grace() {
        let p = RefreshPolicy {
            min_refresh: S,
            max_refresh: 10 * S,
            stale_grace: 100 * S,
        };
        let now = Instant::now();
        let mut name = fresh(now);
        name.apply(
            answer(records(&["192.0.2.1"], 5), records(&["2001:db8::1"], 5)),
            now,
            &p,
            0.0,
        );
        assert_eq!(name.next_event(), now + 5 * S);
        // DNS fails from now on; the addresses survive every failure up to the grace.
        let mut at = now + 5 * S;
        while at < now + 100 * S {
            name.apply(
                answer(
                    FamilyAnswer::Failed(FailureKind::Timeout),
                    FamilyAnswer::Failed(FailureKind::Timeout),
                ),
                at,
                &p,
                0.0,
            );
            assert!(name.expire(at).is_empty());
            assert_eq!(name.addresses().len(), 2);
            at = name.next_event().max(at + S);
        }
        assert_eq!(
            name.next_event(),
            now + 100 * S,
            "the stale deadline wakes us"
        );
        assert!(
            name.expire(now + 100 * S - Duration::from_millis(1))
                .is_empty()
        );
        let gone = name.expire(now + 100 * S);
        assert_eq!(gone, ips(&["192.0.2.1", "2001:db8::1"]));
        assert!(name.addresses().is_empty());
    }
}
