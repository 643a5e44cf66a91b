//! The DNS task: restores the state file, looks names up and expands SPF records when they are
//! due, passes every DNS-derived prefix through the guards (in one place, [`DnsEngine`]'s
//! `screen`), keeps the union of all sources, counts per source, persists what DNS confirmed,
//! and publishes the wanted allowlist; and the [`Enforcer`], which writes that allowlist into
//! the filter and picks the action.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    net::IpAddr,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use filter_common::Action;
use tokio::{sync::watch, task::JoinSet, time::Instant};

use super::{
    DnsSettings, FailureKind, FamilyAnswer, HickoryResolve, HostName, NameAnswer, RefreshPolicy,
    Resolve,
    guards::{Guard, Guards},
    refresh::{Families, FamilyState, NameFailure, NameState, Refreshed},
    sources::{Source, Sources},
    spf_expand::{self, Expansion, render_chain},
    spf_source::SpfState,
    state_file::{Saved, SavedFamily, SavedName, SavedSpf, SavedSpfPrefix, StateFile},
};
use crate::{allowlist::AllowlistChange, cidr::Cidr, filter::Filter};

/// A lookup that has not finished after this long counts as a timeout, whatever the resolver
/// does, so one stuck query never stalls the other names.
pub const LOOKUP_DEADLINE: Duration = Duration::from_secs(60);

/// Counters of the DNS side.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DnsStats {
    /// Lookup rounds (A and AAAA for one name).
    pub lookups: u64,
    /// Rounds in which a family (or both) failed and kept its addresses.
    pub failures: u64,
    /// Failures by kind ("timeout", "SERVFAIL", ...).
    pub failures_by_kind: BTreeMap<String, u64>,
    /// Addresses removed because their name had no successful answer for the stale grace.
    pub expired: u64,
    pub state_writes: u64,
    pub state_write_failures: u64,
    /// Prefixes (or whole answers, for the cap) refused, by guard label.
    pub refusals_by_guard: BTreeMap<String, u64>,
    /// The same, per DNS source.
    pub sources: BTreeMap<Source, SourceStats>,
}

/// Counters of one DNS source (an `--allow-host` name or an `--allow-spf` record).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SourceStats {
    /// Prefixes it contributes now.
    pub entries: u64,
    /// Lookup rounds.
    pub lookups: u64,
    /// Failed rounds (or failed parts of an SPF record), by kind.
    pub failures_by_kind: BTreeMap<String, u64>,
    /// Refusals, by guard label.
    pub refusals_by_guard: BTreeMap<String, u64>,
    /// Wall-clock time (Unix seconds) of the last successful answer.
    pub last_success_unix: Option<u64>,
}

/// What the engine publishes: the allowlist the map must hold, and the counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllowlistUpdate {
    pub wanted: BTreeSet<Cidr>,
    pub stats: DnsStats,
}

/// Keeps the names' addresses and the union of all sources.
pub struct DnsEngine<R: Resolve> {
    resolver: R,
    policy: RefreshPolicy,
    names: BTreeMap<HostName, NameState>,
    spf: BTreeMap<HostName, SpfState>,
    guards: Guards,
    /// SPF records whose ignored terms were already reported (once per record).
    warned_ignored: BTreeSet<HostName>,
    sources: Sources,
    state_file: Option<StateFile>,
    /// DNS confirmed or expired something since the state file was last written.
    unsaved: bool,
    stats: DnsStats,
    /// Entries kept in place of a state file that restored nothing (see [`DnsEngine::keep_in_place`]).
    fallback: Fallback,
    random: Box<dyn FnMut() -> f64 + Send>,
}

/// The allowlist an earlier run (or the configuration before a reload) left in the maps,
/// screened by the guards. It stays wanted until every DNS source has answered in this run,
/// so the union is whole again, or until the stale grace runs out: fail-static like a name's
/// last known addresses.
#[derive(Debug, Default)]
struct Fallback {
    entries: BTreeSet<Cidr>,
    until: Option<Instant>,
}

impl DnsEngine<HickoryResolve> {
    /// The production engine: hickory with the configured servers, the state file in the
    /// configured directory.
    pub fn from_settings(settings: &DnsSettings, statics: &BTreeSet<Cidr>) -> anyhow::Result<Self> {
        let resolver = HickoryResolve::new(&settings.servers, settings.timeout, &settings.dnssec)?;
        Ok(DnsEngine::new(
            resolver,
            settings.policy,
            &settings.hosts,
            statics,
            Some(StateFile::in_dir(&settings.state_dir)),
        )
        .with_spf(&settings.spf)
        .with_guards(settings.guards.clone()))
    }
}

impl<R: Resolve> DnsEngine<R> {
    /// Every name is due at once; nothing is loaded yet (see [`DnsEngine::restore`]).
    pub fn new(
        resolver: R,
        policy: RefreshPolicy,
        hosts: &BTreeSet<HostName>,
        statics: &BTreeSet<Cidr>,
        state_file: Option<StateFile>,
    ) -> Self {
        let now = Instant::now();
        let mut sources = Sources::default();
        sources.set(&Source::Static, statics);
        DnsEngine {
            resolver,
            policy,
            names: hosts
                .iter()
                .map(|name| (name.clone(), NameState::new(name.clone(), now)))
                .collect(),
            spf: BTreeMap::new(),
            guards: Guards::default(),
            warned_ignored: BTreeSet::new(),
            sources,
            state_file,
            unsaved: false,
            stats: DnsStats::default(),
            fallback: Fallback::default(),
            random: Box::new(fastrand::f64),
        }
    }

    /// Adds `--allow-spf` sources, due at once.
    pub fn with_spf(mut self, names: &BTreeSet<HostName>) -> Self {
        let now = Instant::now();
        self.spf = names
            .iter()
            .map(|name| (name.clone(), SpfState::new(name.clone(), now)))
            .collect();
        self
    }

    /// Sets the guards every DNS-derived prefix passes (default: [`Guards::default`]).
    pub fn with_guards(mut self, guards: Guards) -> Self {
        self.guards = guards;
        self
    }

    /// Replaces the jitter source (tests use a constant).
    pub fn with_random(mut self, random: impl FnMut() -> f64 + Send + 'static) -> Self {
        self.random = Box::new(random);
        self
    }

    /// Loads the last known good addresses from the state file, so a restart while DNS is
    /// down still protects. A missing file is normal; an unreadable or corrupt one is
    /// reported and ignored. Returns how many addresses were restored.
    pub fn restore(&mut self) -> usize {
        let Some(file) = &self.state_file else {
            return 0;
        };
        let saved = match file.load() {
            Ok(Some(saved)) => saved,
            Ok(None) => {
                tracing::info!(path = %file.path().display(), "no DNS state file yet");
                return 0;
            }
            Err(error) => {
                tracing::warn!("ignoring the DNS state file: {error:#}");
                return 0;
            }
        };
        let now = Instant::now();
        let wall_now = SystemTime::now();
        let mut restored = 0;
        for (name, saved_name) in saved.names {
            let Some(state) = self.names.get_mut(&name) else {
                tracing::info!(%name, "state file has a name that is no longer configured; ignored");
                continue;
            };
            for (family, label, saved_family) in [
                (&mut state.v4, "A", saved_name.ipv4),
                (&mut state.v6, "AAAA", saved_name.ipv6),
            ] {
                let Some(confirmed) = saved_family.confirmed_unix else {
                    continue;
                };
                let Some(confirmed) = UNIX_EPOCH.checked_add(Duration::from_secs(confirmed)) else {
                    tracing::warn!(%name, family = label, "saved confirmation time out of range; not restored");
                    continue;
                };
                // A time in the future (clock stepped back) counts as now.
                let age = wall_now.duration_since(confirmed).unwrap_or_default();
                if age >= self.policy.stale_grace {
                    if !saved_family.addresses.is_empty() {
                        tracing::warn!(
                            %name,
                            family = label,
                            age = ?age,
                            addresses = %list(&saved_family.addresses),
                            "saved addresses are older than the stale grace; not restored"
                        );
                    }
                    continue;
                }
                *family = FamilyState {
                    addrs: saved_family.addresses,
                    stale_at: Some(now + (self.policy.stale_grace - age)),
                };
            }
            // The guards in force now apply to what an earlier run accepted.
            let source = Source::Host(name.clone());
            let candidates = to_cidrs(&state.addresses());
            let kept = self.screen(&source, &candidates).unwrap_or_default();
            let Some(state) = self.names.get_mut(&name) else {
                continue;
            };
            for family in [&mut state.v4, &mut state.v6] {
                family.addrs.retain(|ip| kept.contains(&Cidr::host(*ip)));
            }
            let addresses = state.addresses();
            restored += addresses.len();
            if !addresses.is_empty() {
                tracing::info!(%name, addresses = %list(&addresses), "restored from the state file");
            }
            self.set_source(&source, &to_cidrs(&addresses));
        }
        for (name, saved_spf) in saved.spf {
            let Some(state) = self.spf.get_mut(&name) else {
                tracing::info!(%name, "state file has an SPF record that is no longer configured; ignored");
                continue;
            };
            for saved in saved_spf.prefixes {
                let confirmed = UNIX_EPOCH.checked_add(Duration::from_secs(saved.confirmed_unix));
                let age = confirmed
                    .map(|at| wall_now.duration_since(at).unwrap_or_default())
                    .unwrap_or(self.policy.stale_grace);
                if age >= self.policy.stale_grace {
                    continue;
                }
                state
                    .entries
                    .entry(saved.prefix)
                    .or_default()
                    .insert(saved.chain, now + (self.policy.stale_grace - age));
            }
            let source = Source::Spf(name.clone());
            let candidates = state.prefixes();
            let kept = self.screen(&source, &candidates).unwrap_or_default();
            let Some(state) = self.spf.get_mut(&name) else {
                continue;
            };
            state.entries.retain(|cidr, _| kept.contains(cidr));
            let prefixes = state.prefixes();
            restored += prefixes.len();
            if !prefixes.is_empty() {
                tracing::info!(%name, prefixes = %list(&prefixes), "SPF prefixes restored from the state file");
            }
            self.set_source(&source, &prefixes);
        }
        restored
    }

    /// Keeps the entries already in the map (`in_place`: what an earlier run pinned, or the
    /// allowlist before a reload) wanted until every DNS source has answered, for when the
    /// state file restored nothing: a lost file must not empty a working allowlist. They are
    /// screened like a DNS answer first, so whatever the guards in force now refuse stays out;
    /// entries the engine wants anyway (static prefixes) pass untouched. The map holds every
    /// DNS source at once, so the cap is the per-source cap times their number; over it,
    /// nothing is kept. Returns how many are kept.
    pub fn keep_in_place(&mut self, in_place: &BTreeSet<Cidr>) -> usize {
        let wanted = self.wanted();
        let candidates: BTreeSet<Cidr> = in_place.difference(&wanted).copied().collect();
        let sources = (self.names.len() + self.spf.len()).max(1);
        let guards = Guards {
            max_prefixes: self.guards.max_prefixes.saturating_mul(sources),
            ..self.guards.clone()
        };
        let screened = guards.screen(&candidates);
        let mut by_guard: BTreeMap<Guard, Vec<Cidr>> = BTreeMap::new();
        for (cidr, guard) in &screened.refused {
            by_guard.entry(*guard).or_default().push(*cidr);
        }
        for (guard, refused) in &by_guard {
            self.count_refusals(None, *guard, refused.len() as u64);
            tracing::warn!(
                guard = guard.label(),
                refused = %list(refused),
                "allowlist entries in place refused by a guard; they are not kept"
            );
        }
        if let Some(found) = screened.over_cap {
            self.count_refusals(None, Guard::MaxPrefixes, 1);
            tracing::warn!(
                guard = Guard::MaxPrefixes.label(),
                found,
                cap = guards.max_prefixes,
                "the allowlist in place holds more DNS-derived entries than the cap allows; none are kept"
            );
        }
        self.fallback = Fallback {
            until: (!screened.kept.is_empty()).then(|| Instant::now() + self.policy.stale_grace),
            entries: screened.kept,
        };
        self.fallback.entries.len()
    }

    /// Drops the kept-in-place entries once every DNS source has answered in this run, or
    /// once the stale grace has passed without that.
    fn retire_fallback(&mut self, now: Instant) {
        let Some(until) = self.fallback.until else {
            return;
        };
        let answered = |source: Source| {
            self.stats
                .sources
                .get(&source)
                .is_some_and(|stats| stats.last_success_unix.is_some())
        };
        let all_answered = self
            .names
            .keys()
            .all(|name| answered(Source::Host(name.clone())))
            && self
                .spf
                .keys()
                .all(|name| answered(Source::Spf(name.clone())));
        if all_answered {
            tracing::info!(
                entries = self.fallback.entries.len(),
                "every DNS source has answered: the allowlist kept in place gives way to the answers"
            );
        } else if now >= until {
            tracing::warn!(
                entries = %list(&self.fallback.entries),
                stale_grace = ?self.policy.stale_grace,
                "DNS did not answer within the stale grace: the allowlist kept in place is removed"
            );
        } else {
            return;
        }
        self.fallback = Fallback::default();
    }

    /// The allowlist the map must hold: static prefixes and every source's prefixes (and
    /// the entries kept in place, while they last).
    pub fn wanted(&self) -> BTreeSet<Cidr> {
        let mut wanted = self.sources.union();
        wanted.extend(self.fallback.entries.iter().copied());
        wanted
    }

    pub fn stats(&self) -> &DnsStats {
        &self.stats
    }

    /// A name's current addresses.
    pub fn addresses(&self, name: &HostName) -> BTreeSet<IpAddr> {
        self.names
            .get(name)
            .map(NameState::addresses)
            .unwrap_or_default()
    }

    /// The next moment a lookup or an expiry is due.
    pub fn next_event(&self) -> Option<Instant> {
        let names = self.names.values().map(NameState::next_event);
        names
            .chain(self.spf.values().map(SpfState::next_event))
            .chain(self.fallback.until)
            .min()
    }

    /// Does everything due now: expires stale addresses, looks up the due names (all at
    /// once), applies the answers. Returns whether the wanted allowlist changed. What DNS
    /// confirmed is written by [`DnsEngine::save_state`].
    pub async fn step(&mut self) -> bool {
        let before = self.wanted();
        let mut persist = self.expire(Instant::now());

        let now = Instant::now();
        let due: Vec<HostName> = self
            .names
            .values()
            .filter(|state| state.next_refresh <= now)
            .map(|state| state.name.clone())
            .collect();
        let mut lookups = JoinSet::new();
        for name in due {
            let resolver = self.resolver.clone();
            lookups.spawn(async move {
                let answer =
                    match tokio::time::timeout(LOOKUP_DEADLINE, resolver.lookup(&name)).await {
                        Ok(answer) => answer,
                        Err(_) => NameAnswer {
                            v4: FamilyAnswer::Failed(FailureKind::Timeout),
                            v6: FamilyAnswer::Failed(FailureKind::Timeout),
                        },
                    };
                (name, Round::Name(answer))
            });
        }
        let due_spf: Vec<HostName> = self
            .spf
            .values()
            .filter(|state| state.next_refresh <= now)
            .map(|state| state.name.clone())
            .collect();
        for name in due_spf {
            let resolver = self.resolver.clone();
            lookups.spawn(async move {
                let expansion =
                    tokio::time::timeout(LOOKUP_DEADLINE, spf_expand::expand(&resolver, &name))
                        .await
                        .unwrap_or(Err(FailureKind::Timeout));
                (name, Round::Spf(expansion))
            });
        }
        while let Some(joined) = lookups.join_next().await {
            match joined {
                Ok((name, Round::Spf(outcome))) => {
                    persist |= self.apply_spf(&name, outcome, Instant::now())
                }
                Ok((name, Round::Name(answer))) => {
                    persist |= self.apply(&name, answer, Instant::now())
                }
                // A panicking lookup must not take the daemon down: that name is retried
                // when its (unchanged) schedule says so.
                Err(error) => tracing::error!("a DNS lookup task failed: {error}"),
            }
        }
        // Lookups take time: something may have gone stale meanwhile.
        persist |= self.expire(Instant::now());
        self.retire_fallback(Instant::now());
        self.unsaved |= persist;
        self.wanted() != before
    }

    /// Runs until the receiving side is gone, publishing every change of the wanted allowlist.
    pub async fn run(mut self, updates: watch::Sender<AllowlistUpdate>) {
        let mut published = AllowlistUpdate::default();
        loop {
            self.step().await;
            // Counter changes are published too, so failures are visible to the caller.
            if !self.publish(&updates, &mut published) {
                return;
            }
            // After publishing: a slow fsync must not delay the map update.
            self.save_state().await;
            if !self.publish(&updates, &mut published) {
                return;
            }
            let Some(next) = self.next_event() else {
                // No names: nothing will ever be due.
                updates.closed().await;
                return;
            };
            tokio::select! {
                _ = tokio::time::sleep_until(next) => {}
                _ = updates.closed() => return,
            }
        }
    }

    /// Sends the allowlist and counters if they differ from what was last sent; false once
    /// nobody listens.
    fn publish(
        &self,
        updates: &watch::Sender<AllowlistUpdate>,
        published: &mut AllowlistUpdate,
    ) -> bool {
        let update = AllowlistUpdate {
            wanted: self.wanted(),
            stats: self.stats.clone(),
        };
        if update == *published {
            return !updates.is_closed();
        }
        *published = update.clone();
        updates.send(update).is_ok()
    }

    fn apply(&mut self, name: &HostName, answer: NameAnswer, now: Instant) -> bool {
        let random = (self.random)();
        if !self.names.contains_key(name) {
            return false;
        }
        let source = Source::Host(name.clone());
        let answer = self.screen_name_answer(&source, answer);
        let Some(state) = self.names.get_mut(name) else {
            return false;
        };
        self.stats.lookups += 1;
        let before = (state.v4.clone(), state.v6.clone());
        let mut refreshed = state.apply(answer, now, &self.policy, random);
        // One family's fresh answer next to the other's kept addresses may pass the cap that
        // each answer alone stayed under: the last good set stands then.
        let merged = state.addresses().len();
        let over_cap = merged > self.guards.max_prefixes;
        if over_cap {
            (state.v4, state.v6) = before;
            refreshed.added.clear();
            refreshed.removed.clear();
            refreshed.confirmed = false;
            refreshed.failure = Some(NameFailure {
                families: Families::Both,
                kind: FailureKind::OverCap(merged),
            });
        }
        let addresses = state.addresses();
        let failures_in_row = state.failures_in_row;
        self.set_source(&source, &to_cidrs(&addresses));
        if over_cap {
            self.count_refusals(Some(&source), Guard::MaxPrefixes, 1);
        }
        self.count_round(
            &source,
            refreshed.failure.iter().map(|f| &f.kind),
            refreshed.confirmed,
        );
        let Refreshed {
            added,
            removed,
            failure,
            ttl,
            next_in,
            confirmed,
        } = refreshed;
        if let Some(failure) = &failure {
            tracing::warn!(
                %name,
                families = %failure.families,
                error = %failure.kind,
                failures_in_row,
                failures_total = self.stats.failures,
                kept = %list(&addresses),
                retry_in = ?next_in,
                "DNS lookup failed; keeping the last known addresses"
            );
        }
        if !added.is_empty() || !removed.is_empty() {
            tracing::info!(
                %name,
                added = %list(&added),
                removed = %list(&removed),
                now = %list(&addresses),
                ttl = ?ttl,
                next_refresh_in = ?next_in,
                "allowlist addresses of name changed"
            );
        } else if failure.is_none() {
            tracing::debug!(%name, addresses = %list(&addresses), ttl = ?ttl, next_refresh_in = ?next_in, "DNS answer unchanged");
        }
        confirmed
    }

    /// Applies an SPF source's round; returns whether DNS confirmed anything.
    fn apply_spf(
        &mut self,
        name: &HostName,
        outcome: Result<Expansion, FailureKind>,
        now: Instant,
    ) -> bool {
        let random = (self.random)();
        if !self.spf.contains_key(name) {
            return false;
        }
        let source = Source::Spf(name.clone());
        let outcome = outcome.and_then(|mut expansion| {
            self.warn_ignored(&source, &expansion);
            // A record that passes nothing at all (`v=spf1 -all`, only ignored terms) is
            // treated like an empty name answer: a failure that keeps the last good set.
            if expansion.prefixes.is_empty() && expansion.failed.is_empty() {
                return Err(FailureKind::Empty);
            }
            let candidates = expansion.prefixes.keys().copied().collect();
            let kept = self.screen(&source, &candidates)?;
            expansion.prefixes.retain(|cidr, _| kept.contains(cidr));
            Ok(expansion)
        });
        let Some(state) = self.spf.get_mut(name) else {
            return false;
        };
        self.stats.lookups += 1;
        let before = state.entries.clone();
        let mut done = state.apply(outcome, now, &self.policy, random);
        // The fresh parts next to failed parts' kept prefixes may pass the cap that the
        // fresh expansion alone stayed under: the last good set stands then.
        let merged = state.prefixes().len();
        let over_cap = merged > self.guards.max_prefixes;
        if over_cap {
            state.entries = before;
            done.added.clear();
            done.removed.clear();
            done.confirmed = false;
            done.failure = Some(FailureKind::OverCap(merged));
        }
        let prefixes = state.prefixes();
        let failures_in_row = state.failures_in_row;
        self.set_source(&source, &prefixes);
        if over_cap {
            self.count_refusals(Some(&source), Guard::MaxPrefixes, 1);
        }
        let failures = done
            .failure
            .iter()
            .chain(done.partial.iter().map(|(_, kind)| kind));
        self.count_round(&source, failures, done.confirmed);
        if let Some(kind) = &done.failure {
            tracing::warn!(
                spf = %name,
                error = %kind,
                failures_in_row,
                kept = %list(&prefixes),
                retry_in = ?done.next_in,
                "SPF lookup failed; keeping the last known prefixes"
            );
        }
        for (chain, kind) in &done.partial {
            tracing::warn!(
                spf = %name,
                part = %render_chain(chain),
                error = %kind,
                retry_in = ?done.next_in,
                "part of an SPF record failed; keeping its last known prefixes"
            );
        }
        if !done.added.is_empty() || !done.removed.is_empty() {
            tracing::info!(
                spf = %name,
                added = %list(&done.added),
                removed = %list(&done.removed),
                now = %list(&prefixes),
                ttl = ?done.ttl,
                next_refresh_in = ?done.next_in,
                "allowlist prefixes of SPF record changed"
            );
        }
        done.confirmed
    }

    /// Reports the terms an SPF record has that the expander ignores, once per record.
    fn warn_ignored(&mut self, source: &Source, expansion: &Expansion) {
        // Record names come from the zone: a zone that keeps renaming its includes must not
        // grow this for ever (forgetting only means warning again).
        const MAX_REMEMBERED: usize = 1024;
        if self.warned_ignored.len() > MAX_REMEMBERED {
            self.warned_ignored.clear();
        }
        for (record, terms) in &expansion.ignored {
            if self.warned_ignored.insert(record.clone()) {
                tracing::warn!(
                    %source,
                    %record,
                    ignored = %list(terms),
                    "SPF terms ignored: ptr, exists and macros cannot name relay ranges"
                );
            }
        }
    }

    /// The one place every DNS-derived prefix, of every source kind, passes the guards
    /// (docs/dns.md, "Guards"): each refusal is logged and counted. `Err` when the answer is
    /// refused whole (over the cap, or nothing left), so the source keeps its last good set.
    fn screen(
        &mut self,
        source: &Source,
        candidates: &BTreeSet<Cidr>,
    ) -> Result<BTreeSet<Cidr>, FailureKind> {
        let screened = self.guards.screen(candidates);
        let mut by_guard: BTreeMap<Guard, Vec<Cidr>> = BTreeMap::new();
        for (cidr, guard) in &screened.refused {
            by_guard.entry(*guard).or_default().push(*cidr);
        }
        if screened.over_cap.is_some() {
            by_guard.entry(Guard::MaxPrefixes).or_default();
        }
        for (guard, refused) in &by_guard {
            // The cap refuses one answer, the others one prefix each.
            self.count_refusals(Some(source), *guard, refused.len().max(1) as u64);
            if *guard != Guard::MaxPrefixes {
                tracing::warn!(
                    %source,
                    guard = guard.label(),
                    refused = %list(refused),
                    "DNS-derived prefixes refused by a guard; the rest of the answer is used"
                );
            }
        }
        if let Some(found) = screened.over_cap {
            tracing::warn!(
                %source,
                guard = Guard::MaxPrefixes.label(),
                found,
                cap = self.guards.max_prefixes,
                "DNS answer over --dns-max-prefixes refused whole; keeping the last good set"
            );
            return Err(FailureKind::OverCap(found));
        }
        if screened.kept.is_empty() && !screened.refused.is_empty() {
            return Err(FailureKind::AllRefused);
        }
        Ok(screened.kept)
    }

    /// A name's answer with the guards applied: refused addresses taken out (a family left
    /// without any counts as NODATA), or every family failed when the answer is refused whole.
    fn screen_name_answer(&mut self, source: &Source, answer: NameAnswer) -> NameAnswer {
        let mut candidates = BTreeSet::new();
        for family in [&answer.v4, &answer.v6] {
            if let FamilyAnswer::Records { addrs, .. } = family {
                candidates.extend(addrs.iter().map(|ip| Cidr::host(*ip)));
            }
        }
        if candidates.is_empty() {
            return answer;
        }
        let kept = match self.screen(source, &candidates) {
            Ok(kept) => kept,
            Err(kind) => {
                return NameAnswer {
                    v4: FamilyAnswer::Failed(kind.clone()),
                    v6: FamilyAnswer::Failed(kind),
                };
            }
        };
        let keep = |family: FamilyAnswer| match family {
            FamilyAnswer::Records { addrs, ttl } => {
                let addrs: BTreeSet<IpAddr> = addrs
                    .into_iter()
                    .filter(|ip| kept.contains(&Cidr::host(*ip)))
                    .collect();
                if addrs.is_empty() {
                    FamilyAnswer::NoData
                } else {
                    FamilyAnswer::Records { addrs, ttl }
                }
            }
            other => other,
        };
        NameAnswer {
            v4: keep(answer.v4),
            v6: keep(answer.v6),
        }
    }

    /// Makes `source` contribute `cidrs` to the union and records its size.
    fn set_source(&mut self, source: &Source, cidrs: &BTreeSet<Cidr>) {
        self.sources.set(source, cidrs);
        self.stats
            .sources
            .entry(source.clone())
            .or_default()
            .entries = cidrs.len() as u64;
    }

    /// Counts `count` refusals by `guard` in the totals and, for a source, in its own.
    fn count_refusals(&mut self, source: Option<&Source>, guard: Guard, count: u64) {
        let label = guard.label();
        if let Some(source) = source {
            let stats = self.stats.sources.entry(source.clone()).or_default();
            *stats.refusals_by_guard.entry(label.into()).or_default() += count;
        }
        *self
            .stats
            .refusals_by_guard
            .entry(label.into())
            .or_default() += count;
    }

    /// Counts one lookup round of `source` and its failures, in the totals and per source.
    fn count_round<'k>(
        &mut self,
        source: &Source,
        failures: impl Iterator<Item = &'k FailureKind>,
        confirmed: bool,
    ) {
        let stats = self.stats.sources.entry(source.clone()).or_default();
        stats.lookups += 1;
        if confirmed {
            stats.last_success_unix = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .ok()
                .map(|d| d.as_secs());
        }
        for kind in failures {
            let label = failure_label(kind);
            *stats.failures_by_kind.entry(label.clone()).or_default() += 1;
            self.stats.failures += 1;
            *self.stats.failures_by_kind.entry(label).or_default() += 1;
        }
    }

    fn expire(&mut self, now: Instant) -> bool {
        let mut expired_any = false;
        for state in self.names.values_mut() {
            let gone = state.expire(now);
            if gone.is_empty() {
                continue;
            }
            expired_any = true;
            self.stats.expired += gone.len() as u64;
            let addresses = state.addresses();
            tracing::warn!(
                name = %state.name,
                removed = %list(&gone),
                now = %list(&addresses),
                stale_grace = ?self.policy.stale_grace,
                "no successful DNS answer within the stale grace; addresses removed"
            );
            self.sources
                .set(&Source::Host(state.name.clone()), &to_cidrs(&addresses));
            self.stats
                .sources
                .entry(Source::Host(state.name.clone()))
                .or_default()
                .entries = addresses.len() as u64;
        }
        for state in self.spf.values_mut() {
            let gone = state.expire(now);
            if gone.is_empty() {
                continue;
            }
            expired_any = true;
            self.stats.expired += gone.len() as u64;
            let prefixes = state.prefixes();
            tracing::warn!(
                spf = %state.name,
                removed = %list(&gone),
                now = %list(&prefixes),
                stale_grace = ?self.policy.stale_grace,
                "no successful DNS answer within the stale grace; SPF prefixes removed"
            );
            let source = Source::Spf(state.name.clone());
            self.sources.set(&source, &prefixes);
            self.stats.sources.entry(source).or_default().entries = prefixes.len() as u64;
        }
        expired_any
    }

    /// Writes the state file if DNS confirmed or expired anything since the last write. The
    /// write (with its fsyncs) runs on a blocking thread, so the daemon's loop never waits
    /// for the disk. A failed write is counted and logged, never fatal.
    pub async fn save_state(&mut self) {
        if !self.unsaved {
            return;
        }
        let Some(file) = self.state_file.clone() else {
            return;
        };
        self.unsaved = false;
        let now = Instant::now();
        let wall_now = SystemTime::now();
        let grace = self.policy.stale_grace;
        let confirmed_unix = |stale_at: Instant| {
            let age = grace.saturating_sub(stale_at.saturating_duration_since(now));
            wall_now
                .checked_sub(age)
                .unwrap_or(UNIX_EPOCH)
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs()
        };
        let save_family = |family: &FamilyState| SavedFamily {
            addresses: family.addrs.clone(),
            confirmed_unix: family.stale_at.map(confirmed_unix),
        };
        let spf = self
            .spf
            .iter()
            .map(|(name, state)| {
                let prefixes = state
                    .entries
                    .iter()
                    .flat_map(|(cidr, chains)| {
                        chains.iter().map(|(chain, stale_at)| SavedSpfPrefix {
                            prefix: *cidr,
                            chain: chain.clone(),
                            confirmed_unix: confirmed_unix(*stale_at),
                        })
                    })
                    .collect();
                (name.clone(), SavedSpf { prefixes })
            })
            .collect();
        let saved = Saved {
            names: self
                .names
                .iter()
                .map(|(name, state)| {
                    (
                        name.clone(),
                        SavedName {
                            ipv4: save_family(&state.v4),
                            ipv6: save_family(&state.v6),
                        },
                    )
                })
                .collect(),
            spf,
        };
        let result = tokio::task::spawn_blocking(move || file.save(&saved))
            .await
            .unwrap_or_else(|error| Err(anyhow::anyhow!("the writing thread failed: {error}")));
        match result {
            Ok(()) => self.stats.state_writes += 1,
            Err(error) => {
                self.stats.state_write_failures += 1;
                // Try again after the next lookup round.
                self.unsaved = true;
                tracing::warn!("could not write the DNS state file: {error:#}");
            }
        }
    }
}

/// What one due source's lookup produced.
enum Round {
    Name(NameAnswer),
    Spf(Result<Expansion, FailureKind>),
}

fn to_cidrs(addresses: &BTreeSet<IpAddr>) -> BTreeSet<Cidr> {
    addresses.iter().map(|ip| Cidr::host(*ip)).collect()
}

fn failure_label(kind: &FailureKind) -> String {
    match kind {
        FailureKind::Unreachable(_) => "unreachable".into(),
        FailureKind::Other(_) => "other".into(),
        FailureKind::OverCap(_) => "over-cap".into(),
        FailureKind::AllRefused => "all-refused".into(),
        FailureKind::SpfPermError(_) => "spf-permerror".into(),
        FailureKind::Dnssec(_) => "dnssec".into(),
        kind => kind.to_string(),
    }
}

/// `[a, b]` for logs.
fn list<T: std::fmt::Display>(items: impl IntoIterator<Item = T>) -> String {
    let mut text = String::from("[");
    for (index, item) in items.into_iter().enumerate() {
        if index > 0 {
            text.push_str(", ");
        }
        let _ = write!(text, "{item}");
    }
    text.push(']');
    text
}

/// Writes the wanted allowlist into the filter and keeps the action right: the configured
/// action (`drop` or `reject`), except `monitor` while the allowlist is still empty at start
/// (unless strict), until it first holds an address. Never back: once enforcing, an allowlist
/// emptied by stale expiry keeps being enforced (fail closed). A configured `monitor` stays.
#[derive(Debug)]
pub struct Enforcer {
    /// The action in force.
    action: Action,
    /// The action to enforce once the allowlist holds something.
    configured: Action,
    /// The map held nothing after the last sync.
    empty: bool,
}

impl Enforcer {
    /// Fills the map with the start-up allowlist (static prefixes and the state file) and sets
    /// the first action.
    pub fn start(
        filter: &mut Filter,
        wanted: &BTreeSet<Cidr>,
        configured: Action,
        strict: bool,
    ) -> anyhow::Result<Self> {
        let change = filter.allowlist.sync(wanted)?;
        for cidr in &change.added {
            tracing::info!(%cidr, "allowlist: added");
        }
        for cidr in &change.removed {
            tracing::info!(%cidr, "allowlist: removed");
        }
        let action = Self::first_action(wanted.is_empty(), configured, strict);
        filter.maps.settings.set_action(action)?;
        Ok(Enforcer {
            action,
            configured,
            empty: wanted.is_empty(),
        })
    }

    /// The action to start with: the configured one, or monitor while the allowlist is empty
    /// (unless `strict`), so an empty start never denies every SYN.
    fn first_action(empty: bool, configured: Action, strict: bool) -> Action {
        if !empty || configured == Action::Monitor {
            configured
        } else if strict {
            tracing::warn!(
                action = ?configured,
                "the allowlist is empty and --strict is set: every SYN to a protected port is \
                 denied until DNS answers"
            );
            configured
        } else {
            tracing::warn!(
                "the allowlist is empty: running in MONITOR mode (would-be drops are counted \
                 but passed) until it holds an address; use --strict to enforce from the start"
            );
            Action::Monitor
        }
    }

    /// The action in force.
    pub fn action(&self) -> Action {
        self.action
    }

    /// A reload set the configured action: it takes effect now, with the start-up rule: while
    /// the allowlist is empty it waits in monitor mode for a first address (unless `strict`),
    /// also when the running action was monitor by configuration.
    pub fn reconfigure(
        &mut self,
        filter: &mut Filter,
        configured: Action,
        strict: bool,
    ) -> anyhow::Result<()> {
        let action = Self::first_action(self.empty, configured, strict);
        if action != self.action {
            filter.maps.settings.set_action(action)?;
        }
        self.action = action;
        self.configured = configured;
        Ok(())
    }

    /// Makes the map hold exactly `wanted` (new entries first, then the ones no source
    /// contributes any more), logs what changed, and leaves the start-up monitor mode once it
    /// holds something.
    pub fn apply(
        &mut self,
        filter: &mut Filter,
        wanted: &BTreeSet<Cidr>,
    ) -> anyhow::Result<AllowlistChange> {
        let change = filter.allowlist.sync(wanted)?;
        self.empty = wanted.is_empty();
        if !change.is_empty() {
            tracing::info!(
                added = %list(&change.added),
                removed = %list(&change.removed),
                entries = wanted.len(),
                "allowlist map updated"
            );
        }
        if wanted.is_empty() {
            if self.action != Action::Monitor && !change.removed.is_empty() {
                tracing::error!(
                    "the allowlist is now empty (stale addresses expired): every SYN to a \
                     protected port is denied until DNS answers again"
                );
            }
        } else if self.action != self.configured {
            filter.maps.settings.set_action(self.configured)?;
            self.action = self.configured;
            tracing::info!(
                entries = wanted.len(),
                action = ?self.configured,
                "the allowlist holds addresses now: switching from MONITOR to enforcing"
            );
        }
        Ok(change)
    }
}

#[cfg(test)]
mod tests {
    //! The engine on tokio's paused clock with a scripted resolver: scheduling, back-off,
    //! fail-static, expiry and persistence, without a network and without waiting.
    use std::{
        path::PathBuf,
        sync::{Arc, Mutex},
    };

    use super::*;
    use crate::dns::{Answer, FamilyAnswer};

    const S: Duration = Duration::from_secs(1);

    /// Answers from a script that the test changes; records when each lookup happened.
    #[derive(Clone, Default)]
    struct Scripted {
        answers: Arc<Mutex<BTreeMap<HostName, NameAnswer>>>,
        txt: Arc<Mutex<BTreeMap<HostName, Answer<Vec<String>>>>>,
        lookups: Arc<Mutex<Vec<(HostName, Instant)>>>,
    }

    impl Scripted {
        fn set_txt(&self, name: &str, answer: Answer<Vec<String>>) {
            self.txt
                .lock()
                .unwrap()
                .insert(name.parse().unwrap(), answer);
        }

        fn set(&self, name: &str, answer: NameAnswer) {
            self.answers
                .lock()
                .unwrap()
                .insert(name.parse().unwrap(), answer);
        }

        /// Seconds since `start` of every lookup so far.
        fn times(&self, start: Instant) -> Vec<u64> {
            self.lookups
                .lock()
                .unwrap()
                .iter()
                .map(|(_, at)| at.duration_since(start).as_secs())
                .collect()
        }
    }

    impl Resolve for Scripted {
        async fn txt(&self, name: &HostName) -> Answer<Vec<String>> {
            self.txt
                .lock()
                .unwrap()
                .get(name)
                .cloned()
                .unwrap_or(Answer::Failed(FailureKind::NxDomain))
        }

        async fn lookup(&self, name: &HostName) -> NameAnswer {
            self.lookups
                .lock()
                .unwrap()
                .push((name.clone(), Instant::now()));
            self.answers
                .lock()
                .unwrap()
                .get(name)
                .cloned()
                .unwrap_or(NameAnswer {
                    v4: FamilyAnswer::Failed(FailureKind::NxDomain),
                    v6: FamilyAnswer::Failed(FailureKind::NxDomain),
                })
        }
    }

    fn v4(list: &[&str], ttl: u64) -> NameAnswer {
        NameAnswer {
            v4: FamilyAnswer::Records {
                addrs: list.iter().map(|s| s.parse().unwrap()).collect(),
                ttl: Duration::from_secs(ttl),
            },
            v6: FamilyAnswer::NoData,
        }
    }

    fn failed(kind: FailureKind) -> NameAnswer {
        NameAnswer {
            v4: FamilyAnswer::Failed(kind.clone()),
            v6: FamilyAnswer::Failed(kind),
        }
    }

    fn cidrs(list: &[&str]) -> BTreeSet<Cidr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn policy(min: u32, max: u32, grace: u32) -> RefreshPolicy {
        RefreshPolicy {
            min_refresh: min * S,
            max_refresh: max * S,
            stale_grace: grace * S,
        }
    }

    fn engine(
        resolver: &Scripted,
        policy: RefreshPolicy,
        names: &[&str],
        state_dir: Option<&PathBuf>,
    ) -> DnsEngine<Scripted> {
        let hosts = names.iter().map(|n| n.parse().unwrap()).collect();
        DnsEngine::new(
            resolver.clone(),
            policy,
            &hosts,
            &cidrs(&["198.51.100.0/24"]),
            state_dir.map(|dir| StateFile::in_dir(dir)),
        )
        .with_random(|| 0.0)
    }

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("mxguard-engine-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    /// Runs the engine until `until` (paused clock), returning every change of the published
    /// allowlist with the second it was published at.
    async fn run_until(engine: DnsEngine<Scripted>, until: Duration) -> Vec<(u64, BTreeSet<Cidr>)> {
        let start = Instant::now();
        let (tx, mut rx) = watch::channel(AllowlistUpdate::default());
        let task = tokio::spawn(engine.run(tx));
        let mut seen = Vec::new();
        let deadline = tokio::time::sleep_until(start + until);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => break,
                changed = rx.changed() => {
                    changed.expect("engine runs");
                    let wanted = rx.borrow_and_update().wanted.clone();
                    // Updates also come for counter changes: keep the allowlist changes.
                    if seen.last().is_none_or(|(_, last)| *last != wanted) {
                        seen.push((start.elapsed().as_secs(), wanted));
                    }
                }
            }
        }
        task.abort();
        seen
    }

    #[tokio::test(start_paused = true)]
    async fn refreshes_follow_the_ttl_clamped_to_min_and_max() {
        let resolver = Scripted::default();
        resolver.set("short.relay.test", v4(&["192.0.2.1"], 1));
        resolver.set("long.relay.test", v4(&["192.0.2.2"], 100));
        resolver.set("mid.relay.test", v4(&["192.0.2.3"], 3));
        let start = Instant::now();
        run_until(
            engine(&resolver, policy(2, 5, 60), &["short.relay.test"], None),
            Duration::from_millis(9500),
        )
        .await;
        assert_eq!(resolver.times(start), [0, 2, 4, 6, 8], "TTL 1 s, min 2 s");

        let resolver = Scripted {
            answers: resolver.answers.clone(),
            ..Default::default()
        };
        let start = Instant::now();
        run_until(
            engine(&resolver, policy(2, 5, 60), &["long.relay.test"], None),
            Duration::from_millis(15500),
        )
        .await;
        assert_eq!(resolver.times(start), [0, 5, 10, 15], "TTL 100 s, max 5 s");

        let resolver = Scripted {
            answers: resolver.answers.clone(),
            ..Default::default()
        };
        let start = Instant::now();
        run_until(
            engine(&resolver, policy(2, 5, 60), &["mid.relay.test"], None),
            Duration::from_millis(9500),
        )
        .await;
        assert_eq!(
            resolver.times(start),
            [0, 3, 6, 9],
            "TTL 3 s inside the bounds"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_change_is_applied_at_the_ttl_not_before() {
        let resolver = Scripted::default();
        resolver.set("relay.test", v4(&["192.0.2.1", "192.0.2.2"], 10));
        let engine = engine(&resolver, policy(1, 60, 600), &["relay.test"], None);
        let changer = resolver.clone();
        tokio::spawn(async move {
            tokio::time::sleep(3 * S).await;
            changer.set("relay.test", v4(&["192.0.2.2", "192.0.2.3"], 10));
        });
        let seen = run_until(engine, 15 * S).await;
        assert_eq!(
            seen,
            [
                (0, cidrs(&["198.51.100.0/24", "192.0.2.1", "192.0.2.2"])),
                (10, cidrs(&["198.51.100.0/24", "192.0.2.2", "192.0.2.3"])),
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn failures_keep_the_addresses_back_off_and_expire_after_the_grace() {
        let resolver = Scripted::default();
        resolver.set("relay.test", v4(&["192.0.2.1"], 2));
        let mut engine = engine(&resolver, policy(1, 4, 20), &["relay.test"], None);
        let start = Instant::now();
        assert!(engine.step().await);
        assert_eq!(engine.wanted(), cidrs(&["198.51.100.0/24", "192.0.2.1"]));

        resolver.set("relay.test", failed(FailureKind::ServFail));
        let seen = run_until(engine, Duration::from_millis(25500)).await;
        // Success at 0 (TTL 2), failures from 2 on: retries after 1, 2, 4, 4, ... (capped by
        // the max refresh); the address stays until 20 s after the last success.
        assert_eq!(
            resolver.times(start),
            [0, 2, 3, 5, 9, 13, 17, 21, 25],
            "back-off 1, 2, 4, 4, ..."
        );
        // The first publication carries the list as it is; only the expiry changes it.
        assert_eq!(
            seen,
            [
                (0, cidrs(&["198.51.100.0/24", "192.0.2.1"])),
                (20, cidrs(&["198.51.100.0/24"]))
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn state_is_persisted_and_restored_and_bad_state_is_ignored() {
        let dir = temp_dir("persist");
        let resolver = Scripted::default();
        resolver.set(
            "relay.test",
            NameAnswer {
                v4: FamilyAnswer::Records {
                    addrs: ["192.0.2.1".parse().unwrap()].into(),
                    ttl: 30 * S,
                },
                v6: FamilyAnswer::Records {
                    addrs: ["2001:db8::1".parse().unwrap()].into(),
                    ttl: 30 * S,
                },
            },
        );
        let mut first = engine(&resolver, policy(1, 60, 600), &["relay.test"], Some(&dir));
        assert_eq!(first.restore(), 0, "no file yet");
        first.step().await;
        assert_eq!(first.stats().state_writes, 0, "written only when asked");
        first.save_state().await;
        assert_eq!(first.stats().state_writes, 1);
        first.save_state().await;
        assert_eq!(first.stats().state_writes, 1, "nothing new to write");

        // A restart with DNS down: the saved addresses are back before any lookup.
        let down = Scripted::default();
        let mut second = engine(
            &down,
            policy(1, 60, 600),
            &["relay.test", "other.relay.test"],
            Some(&dir),
        );
        assert_eq!(second.restore(), 2);
        assert_eq!(
            second.wanted(),
            cidrs(&["198.51.100.0/24", "192.0.2.1", "2001:db8::1"])
        );
        second.step().await;
        assert_eq!(second.stats().failures, 2, "both names failed");
        assert_eq!(
            second.wanted(),
            cidrs(&["198.51.100.0/24", "192.0.2.1", "2001:db8::1"]),
            "failures keep the restored addresses"
        );

        // With a grace shorter than the file's age, nothing is restored.
        let file = StateFile::in_dir(&dir);
        let mut saved = file.load().unwrap().unwrap();
        for state in saved.names.values_mut() {
            for family in [&mut state.ipv4, &mut state.ipv6] {
                family.confirmed_unix = family.confirmed_unix.map(|t| t - 700);
            }
        }
        file.save(&saved).unwrap();
        let mut third = engine(&down, policy(1, 60, 600), &["relay.test"], Some(&dir));
        assert_eq!(third.restore(), 0);
        assert_eq!(third.wanted(), cidrs(&["198.51.100.0/24"]));

        // A corrupt file is reported and ignored.
        std::fs::write(
            file.path(),
            "{\"version\": 1, \"names\": {\"relay.test.\": 7}}",
        )
        .unwrap();
        let mut fourth = engine(&down, policy(1, 60, 600), &["relay.test"], Some(&dir));
        assert_eq!(fourth.restore(), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn entries_kept_in_place_are_only_what_the_guards_allow_now() {
        let resolver = Scripted::default();
        let mut fallback = engine(&resolver, policy(1, 60, 600), &["relay.test"], None)
            .with_guards(Guards {
                allow_within: cidrs(&["192.0.2.0/24"]).into_iter().collect(),
                ..Guards::default()
            });
        let in_place = cidrs(&[
            "198.51.100.0/24", // static now: wanted anyway, not screened
            "192.0.2.1",
            "203.0.113.9", // outside --dns-allow-within
            "192.0.0.0/8", // shorter than --dns-min-prefix-v4
        ]);
        assert_eq!(fallback.keep_in_place(&in_place), 1);
        assert_eq!(fallback.wanted(), cidrs(&["198.51.100.0/24", "192.0.2.1"]));
        let refusals = &fallback.stats().refusals_by_guard;
        assert_eq!(refusals.get("allow-within"), Some(&1), "{refusals:?}");
        assert_eq!(refusals.get("min-prefix"), Some(&1), "{refusals:?}");

        // One name: the cap is the per-source cap; over it, nothing is kept.
        let mut capped =
            engine(&resolver, policy(1, 60, 600), &["relay.test"], None).with_guards(Guards {
                max_prefixes: 1,
                ..Guards::default()
            });
        assert_eq!(capped.keep_in_place(&cidrs(&["192.0.2.1", "192.0.2.2"])), 0);
        assert_eq!(capped.wanted(), cidrs(&["198.51.100.0/24"]));
        assert_eq!(
            capped.stats().refusals_by_guard.get("max-prefixes"),
            Some(&1)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn entries_kept_in_place_survive_failures_until_every_source_answers() {
        let resolver = Scripted::default();
        resolver.set("a.relay.test", v4(&["192.0.2.1"], 30));
        // b.relay.test fails (NXDOMAIN) at first.
        let mut engine = engine(
            &resolver,
            policy(1, 60, 600),
            &["a.relay.test", "b.relay.test"],
            None,
        );
        engine.keep_in_place(&cidrs(&["192.0.2.1", "192.0.2.2"]));
        engine.step().await;
        assert_eq!(
            engine.wanted(),
            cidrs(&["198.51.100.0/24", "192.0.2.1", "192.0.2.2"]),
            "one source still failing: what was in place stays"
        );
        resolver.set("b.relay.test", v4(&["192.0.2.3"], 30));
        tokio::time::sleep(5 * S).await;
        engine.step().await;
        assert_eq!(
            engine.wanted(),
            cidrs(&["198.51.100.0/24", "192.0.2.1", "192.0.2.3"]),
            "every source answered: the answers replace what was in place"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn entries_kept_in_place_go_after_the_stale_grace_without_answers() {
        let resolver = Scripted::default();
        let mut engine = engine(&resolver, policy(1, 60, 600), &["relay.test"], None);
        engine.keep_in_place(&cidrs(&["192.0.2.1"]));
        engine.step().await;
        assert!(engine.wanted().contains(&"192.0.2.1".parse().unwrap()));
        assert!(engine.next_event().unwrap() <= Instant::now() + 600 * S);
        tokio::time::sleep(601 * S).await;
        engine.step().await;
        assert_eq!(engine.wanted(), cidrs(&["198.51.100.0/24"]));
    }

    #[tokio::test(start_paused = true)]
    async fn restored_counts_only_what_the_guards_let_through() {
        let dir = temp_dir("restore-guards");
        let resolver = Scripted::default();
        resolver.set("relay.test", v4(&["192.0.2.1", "203.0.113.9"], 30));
        let mut first = engine(&resolver, policy(1, 60, 600), &["relay.test"], Some(&dir));
        first.step().await;
        first.save_state().await;

        // The next run allows only 192.0.2.0/24: the other saved address is refused.
        let mut second = engine(&resolver, policy(1, 60, 600), &["relay.test"], Some(&dir))
            .with_guards(Guards {
                allow_within: cidrs(&["192.0.2.0/24"]).into_iter().collect(),
                ..Guards::default()
            });
        assert_eq!(second.restore(), 1);
        assert_eq!(second.wanted(), cidrs(&["198.51.100.0/24", "192.0.2.1"]));

        // Refused whole, nothing counts as restored, so the daemon's pinned fallback (screened
        // too) decides.
        let mut third = engine(&resolver, policy(1, 60, 600), &["relay.test"], Some(&dir))
            .with_guards(Guards {
                allow_within: cidrs(&["198.51.100.128/25"]).into_iter().collect(),
                ..Guards::default()
            });
        assert_eq!(third.restore(), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn spf_record(text: &str, ttl: u64) -> Answer<Vec<String>> {
        Answer::Records {
            data: vec![text.to_owned()],
            ttl: Duration::from_secs(ttl),
        }
    }

    fn spf_engine(resolver: &Scripted, guards: Guards) -> DnsEngine<Scripted> {
        engine(resolver, policy(1, 60, 600), &[], None)
            .with_spf(&["_spf.relay.test".parse().unwrap()].into())
            .with_guards(guards)
    }

    #[tokio::test(start_paused = true)]
    async fn an_spf_record_that_passes_nothing_keeps_the_last_good_prefixes() {
        let resolver = Scripted::default();
        resolver.set_txt(
            "_spf.relay.test",
            spf_record("v=spf1 ip4:192.0.2.0/26 -all", 5),
        );
        let mut engine = spf_engine(&resolver, Guards::default());
        engine.step().await;
        assert_eq!(engine.wanted(), cidrs(&["198.51.100.0/24", "192.0.2.0/26"]));
        // A hijacked or broken zone: nothing passes any more.
        resolver.set_txt("_spf.relay.test", spf_record("v=spf1 -all", 5));
        tokio::time::sleep(6 * S).await;
        engine.step().await;
        assert_eq!(
            engine.wanted(),
            cidrs(&["198.51.100.0/24", "192.0.2.0/26"]),
            "an empty expansion is a failure, not an empty set"
        );
        assert_eq!(
            engine.stats().failures_by_kind.get("empty answer"),
            Some(&1)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn fresh_parts_and_kept_parts_together_stay_under_the_cap() {
        let resolver = Scripted::default();
        resolver.set_txt(
            "_spf.relay.test",
            spf_record("v=spf1 include:_a.relay.test include:_b.relay.test -all", 5),
        );
        resolver.set_txt(
            "_a.relay.test",
            spf_record("v=spf1 ip4:192.0.2.1 ip4:192.0.2.2 -all", 5),
        );
        resolver.set_txt("_b.relay.test", spf_record("v=spf1 ip4:192.0.2.3 -all", 5));
        let guards = Guards {
            max_prefixes: 3,
            ..Guards::default()
        };
        let mut engine = spf_engine(&resolver, guards);
        engine.step().await;
        let first = cidrs(&["198.51.100.0/24", "192.0.2.1", "192.0.2.2", "192.0.2.3"]);
        assert_eq!(engine.wanted(), first);
        // _a fails and keeps its two; _b now gives two new ones: 4 together, over the cap.
        resolver.set_txt("_a.relay.test", Answer::Failed(FailureKind::Timeout));
        resolver.set_txt(
            "_b.relay.test",
            spf_record("v=spf1 ip4:192.0.2.4 ip4:192.0.2.5 -all", 5),
        );
        tokio::time::sleep(6 * S).await;
        engine.step().await;
        assert_eq!(engine.wanted(), first, "the last good set stands");
        assert_eq!(
            engine.stats().refusals_by_guard.get("max-prefixes"),
            Some(&1)
        );
    }
}
