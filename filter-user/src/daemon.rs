//! `mxguard run`: load, fill, attach, report counters, detach on SIGINT/SIGTERM.

use std::collections::BTreeSet;

use anyhow::Context as _;
use filter_common::{Action, Counters, Family};
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    cli::RunPlan,
    dns::{AllowlistUpdate, DnsEngine, Enforcer},
    filter::Filter,
    links::{AttachOutcome, PinDir, PinPersistence, detach_unconfigured},
    metrics,
    milter::MilterHandle,
    netwatch::InterfaceWatch,
    notify::{Notifier, status_line},
    samples::DropSamples,
};

/// Runs the filter until SIGINT or SIGTERM. Every input was validated in `plan`; a failure
/// while loading or attaching leaves nothing attached.
/// `reload` re-reads the configuration on SIGHUP.
pub async fn run(
    plan: RunPlan,
    reload: impl Fn() -> anyhow::Result<RunPlan>,
) -> anyhow::Result<()> {
    let sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let sighup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;

    // Bind the metrics port before touching the kernel: a taken port is a config error.
    if let Some(addr) = plan.options.metrics_addr {
        metrics::serve(addr)?;
        tracing::info!(%addr, "serving Prometheus metrics on /metrics");
    }
    // Likewise the milter's endpoint; it serves once the allowlist is known.
    let bound_milter = plan
        .milter
        .as_ref()
        .map(|settings| MilterHandle::bind(settings, &plan.options.state_dir))
        .transpose()?;
    if plan.options.iface.is_empty() {
        let bound = bound_milter.context("no --iface and no --milter: nothing to run")?;
        return run_milter_only(
            plan,
            reload,
            bound,
            Signals {
                sigint,
                sigterm,
                sighup,
            },
        )
        .await;
    }
    let Signals {
        mut sigint,
        mut sigterm,
        mut sighup,
    } = Signals {
        sigint,
        sigterm,
        sighup,
    };
    let pins = PinDir::new(&plan.options.pin_dir);
    pins.ensure_bpffs()?;
    // Before the maps are touched: a second daemon on the same pins must not change them.
    let _pin_lock = pins.lock()?;
    let pins_outlive_us = check_persistence(&pins, &plan)?;
    // Maps pinned by an earlier run are reused: allowlist, ports and counters carry over.
    let mut filter = Filter::load_pinned(&pins)?;
    // A start that cannot take over the pinned links must fail before it changes the maps
    // those links' program reads.
    filter
        .links
        .check_pinned_modes(&plan.options.iface, plan.mode)?;
    let previous_ports = filter.maps.ports.read()?;
    // Maps are filled before any attach, so a fresh interface is never filtered with an
    // empty allowlist, and an adopted one switches program with its data already in place.
    filter.maps.ports.set(&plan.ports, &previous_ports)?;
    filter
        .maps
        .settings
        .set_reject_rate(plan.options.reject_rate)?;
    if plan.action == Action::Monitor {
        tracing::warn!("action monitor: nothing is dropped, would-be drops are only counted");
    }
    // The state file first: a restart while DNS is down keeps the last known relays.
    let (initial, mut sources) = AllowSources::start(&plan, &filter.allowlist.entries()?)?;
    // Fills the allowlist and sets the action: the configured one, or monitor while the
    // allowlist is still empty (unless --strict) until it holds an address.
    let mut enforcer = Enforcer::start(&mut filter, &initial, plan.action, plan.options.strict)?;
    let mut milter = bound_milter.map(|bound| bound.serve(&initial));
    let results = filter.attach_all_pinned(&plan.options.iface, plan.mode)?;
    for (iface, (mode, outcome)) in plan.options.iface.iter().zip(&results) {
        match outcome {
            AttachOutcome::Attached => {
                tracing::info!(iface = %iface, mode = %mode, "attached XDP filter")
            }
            AttachOutcome::Adopted => {
                tracing::info!(iface = %iface, mode = %mode, "attached XDP filter (took over the pinned one without a gap)")
            }
            AttachOutcome::Upgraded { from_version } => tracing::info!(
                iface = %iface,
                mode = %mode,
                "attached XDP filter (replaced pin layout v{from_version} without a gap)"
            ),
        }
    }
    detach_unconfigured(&pins, &plan.options.iface);
    for (iface, (mode, _)) in plan.options.iface.iter().zip(&results) {
        metrics::publish_attachment(iface, &mode.to_string());
    }
    let attached: Vec<_> = results.iter().map(|(mode, _)| *mode).collect();
    let mut interfaces = InterfaceWatch::start(&filter, &plan.options.iface, &attached, plan.mode);
    tracing::info!(
        ports = ?plan.ports,
        allowlist = initial.len(),
        "filtering SYNs to the protected ports from sources outside the allowlist"
    );
    for cidr in &plan.allow {
        tracing::info!(%cidr, "allowlisted");
    }
    // Every interface is attached and the allowlist filled (or the start-up monitor state is
    // in force, which the STATUS= line says): systemd may start what depends on the filter.
    let mut notifier = Notifier::from_env();
    notifier.ready(status_line(&plan, enforcer.action(), initial.len()));
    let mut watchdog = notifier.watchdog_ticker();

    let mut ticker = stats_ticker(&plan);
    let mut plan = plan;
    // Sampled drops are tallied into the pinned DROPPED_SOURCES map for `status`; without
    // them the filter works the same, so a failure here is only a warning.
    let mut samples = match DropSamples::open(&mut filter.program.maps()) {
        Ok(samples) => Some(samples),
        Err(error) => {
            tracing::warn!("drop sampling unavailable: {error:#}");
            None
        }
    };
    // Metrics are refreshed from the maps every second; cheap (a few map reads).
    let mut metrics_tick = tokio::time::interval(std::time::Duration::from_secs(1));
    metrics_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut milter_tick = milter_status_ticker();
    // An allowlist the map could not be brought to (a map write failed halfway): retried on
    // this tick until it takes, or until a newer one replaces it. Without it a list of static
    // prefixes alone would never be retried.
    let mut unsynced: Option<BTreeSet<crate::cidr::Cidr>> = None;
    let mut sync_retry = tokio::time::interval(SYNC_RETRY);
    sync_retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let signal_name = loop {
        tokio::select! {
            _ = sigint.recv() => break "SIGINT",
            _ = sigterm.recv() => break "SIGTERM",
            _ = async { watchdog.as_mut().expect("guarded").tick().await }, if watchdog.is_some() => {
                notifier.watchdog();
            }
            _ = async { ticker.as_mut().expect("guarded").tick().await }, if ticker.is_some() => {
                log_counters(&filter);
                log_milter_counters(milter.as_ref());
            }
            _ = metrics_tick.tick(), if plan.options.metrics_addr.is_some() => publish_metrics(&filter),
            _ = milter_tick.tick(), if milter.is_some() => {
                milter.as_mut().expect("guarded").write_status();
            }
            batch = async { samples.as_mut().expect("guarded").next_batch().await }, if samples.is_some() => {
                match batch.and_then(|batch| filter.maps.dropped_sources.tally(&batch)) {
                    Ok(()) => {}
                    Err(error) => {
                        tracing::warn!("drop sampling stopped: {error:#}");
                        samples = None;
                    }
                }
            }
            _ = sync_retry.tick(), if unsynced.is_some() => {
                let wanted = unsynced.take().expect("guarded");
                match enforcer.apply(&mut filter, &wanted) {
                    Ok(_) => tracing::info!(entries = wanted.len(), "allowlist map update retried: done"),
                    Err(error) => {
                        tracing::error!("updating the allowlist failed again (retrying in {SYNC_RETRY:?}): {error:#}");
                        unsynced = Some(wanted);
                    }
                }
            }
            update = sources.next_update() => {
                unsynced = None;
                if let Err(error) = enforcer.apply(&mut filter, &update.wanted) {
                    tracing::error!("updating the allowlist failed (retrying in {SYNC_RETRY:?}): {error:#}");
                    unsynced = Some(update.wanted.clone());
                    sync_retry.reset();
                }
                if let Some(milter) = &mut milter {
                    milter.set_allowlist(&update.wanted);
                }
                notifier.status(status_line(&plan, enforcer.action(), update.wanted.len()));
                metrics::publish_dns(&update.stats);
            }
            () = interfaces.changed() => interfaces.check(&mut filter),
            _ = sighup.recv() => {
                notifier.reloading();
                match reload().and_then(|new| reconfigure(&mut filter, &mut enforcer, &mut sources, milter.as_mut(), &plan, new)) {
                    Ok(new) => {
                        plan = new;
                        ticker = stats_ticker(&plan);
                        tracing::info!("configuration reloaded");
                    }
                    Err(error) => tracing::error!("reload rejected, the running configuration stays: {error:#}"),
                }
                let entries = filter.allowlist.entries().map_or(0, |entries| entries.len());
                notifier.ready(status_line(&plan, enforcer.action(), entries));
            }
        }
    };
    notifier.stopping();
    sources.stop();
    tracing::info!(signal = signal_name, "stopping");
    log_counters(&filter);
    log_milter_counters(milter.as_ref());
    if let Some(milter) = milter {
        milter.stop();
    }
    if plan.options.detach_on_exit {
        filter.links.detach_all();
        tracing::info!("detached; bye");
    } else if pins_outlive_us {
        tracing::info!(
            pins = %plan.options.pin_dir.display(),
            "the filter stays attached and enforcing; `mxguard detach` removes it"
        );
    } else {
        tracing::warn!(
            pins = %plan.options.pin_dir.display(),
            "the pins are private to this mount namespace: the filter ends with this process"
        );
    }
    Ok(())
}

/// Refuses to start a filter that would silently vanish when the daemon exits: pins on a bpffs
/// that only this mount namespace sees. Returns whether the pins outlive the daemon.
fn check_persistence(pins: &PinDir, plan: &RunPlan) -> anyhow::Result<bool> {
    let options = &plan.options;
    match pins.persistence()? {
        PinPersistence::Host => Ok(true),
        PinPersistence::Unknown => {
            tracing::warn!(
                pins = %pins.root().display(),
                "cannot inspect the init mount namespace: if this bpffs is private to this one \
                 (ip netns exec, a unit with private mounts), the filter ends with the daemon"
            );
            Ok(true)
        }
        PinPersistence::PrivateMountNamespace if options.detach_on_exit => Ok(false),
        PinPersistence::PrivateMountNamespace if options.accept_private_pins => {
            tracing::warn!(
                pins = %pins.root().display(),
                "the bpffs under the pin directory is private to this mount namespace: the \
                 filter will end when the daemon exits (--accept-private-pins)"
            );
            Ok(false)
        }
        PinPersistence::PrivateMountNamespace => anyhow::bail!(
            "the bpffs under pin directory {} is not visible from the host's (init) mount \
             namespace, so the filter would vanish when this daemon exits (ip netns exec \
             remounts /sys; a systemd unit with private mounts gets its own /sys/fs/bpf). Mount \
             bpffs in the host namespace first (mount -t bpf bpf /sys/fs/bpf), or confirm with \
             --accept-private-pins (or use --detach-on-exit)",
            pins.root().display()
        ),
    }
}

fn stats_ticker(plan: &RunPlan) -> Option<tokio::time::Interval> {
    (!plan.options.stats_interval.0.is_zero()).then(|| {
        let mut ticker = tokio::time::interval(plan.options.stats_interval.0);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker
    })
}

/// Applies a reloaded configuration without detaching: ports (new ones first), RST rate,
/// action, and the allowlist sources (static prefixes, names, DNS settings). What needs a
/// restart is refused before anything changes.
fn reconfigure(
    filter: &mut Filter,
    enforcer: &mut Enforcer,
    sources: &mut AllowSources,
    milter: Option<&mut MilterHandle>,
    running: &RunPlan,
    new: RunPlan,
) -> anyhow::Result<RunPlan> {
    crate::config::check_reloadable(running, &new)?;
    // Build the new sources before touching anything, so a failure leaves all as it was.
    let in_place = filter.allowlist.entries()?;
    let replacement = (new.allow != running.allow || new.dns != running.dns)
        .then(|| AllowSources::start(&new, &in_place))
        .transpose()?;
    // The allowlist first, so the new ports and action apply to the new entries (a reload
    // from monitor to drop that also adds a relay never drops it). Add-before-remove holds
    // across the switch: sync adds the new set's entries first.
    let initial = match replacement {
        Some((initial, replacement)) => {
            if let Err(error) = enforcer.apply(filter, &initial) {
                // Refused: back to the allowlist as it was, so nothing of the new one stays.
                if let Err(undo) = enforcer.apply(filter, &in_place) {
                    tracing::error!("restoring the allowlist after a failed reload: {undo:#}");
                }
                replacement.stop();
                return Err(error);
            }
            std::mem::replace(sources, replacement).stop();
            Some(initial)
        }
        None => None,
    };
    // Against what the map holds, not the old plan: an earlier reload may have failed after
    // writing some ports.
    let ports_in_place = filter.maps.ports.read()?;
    filter.maps.ports.set(&new.ports, &ports_in_place)?;
    filter
        .maps
        .settings
        .set_reject_rate(new.options.reject_rate)?;
    enforcer.reconfigure(filter, new.action, new.options.strict)?;
    // The milter takes the new policy only once the filter has: a reload refused above
    // leaves it as it was too.
    reconfigure_milter(milter, &new, initial.as_ref());
    tracing::info!(ports = ?new.ports, action = ?new.action, "reloaded configuration applied");
    Ok(new)
}

/// Applies a reloaded milter policy, and the new sources' first allowlist if they changed.
fn reconfigure_milter(
    milter: Option<&mut MilterHandle>,
    new: &RunPlan,
    initial: Option<&BTreeSet<crate::cidr::Cidr>>,
) {
    if let (Some(milter), Some(settings)) = (milter, &new.milter) {
        milter.set_policy(&settings.policy);
        if let Some(initial) = initial {
            milter.set_allowlist(initial);
        }
    }
}

/// The signals the daemon stops and reloads on.
struct Signals {
    sigint: tokio::signal::unix::Signal,
    sigterm: tokio::signal::unix::Signal,
    sighup: tokio::signal::unix::Signal,
}

/// Milter-only mode (`--milter` without `--iface`), for hosts where XDP cannot run: the same
/// allowlist sources feed the milter alone; no pins, no BPF.
async fn run_milter_only(
    plan: RunPlan,
    reload: impl Fn() -> anyhow::Result<RunPlan>,
    bound: crate::milter::BoundMilter,
    mut signals: Signals,
) -> anyhow::Result<()> {
    let (initial, mut sources) = AllowSources::start(&plan, &BTreeSet::new())?;
    let mut milter = bound.serve(&initial);
    tracing::warn!(
        allowlist = initial.len(),
        "milter-only mode: no --iface, so no XDP filter; only the header check protects"
    );
    let status =
        |entries: usize| format!("milter only (no XDP filter): {entries} allowlist entries");
    let mut notifier = Notifier::from_env();
    notifier.ready(status(initial.len()));
    let mut watchdog = notifier.watchdog_ticker();
    let mut ticker = stats_ticker(&plan);
    let mut milter_tick = milter_status_ticker();
    let mut plan = plan;
    let signal_name = loop {
        tokio::select! {
            _ = signals.sigint.recv() => break "SIGINT",
            _ = signals.sigterm.recv() => break "SIGTERM",
            _ = async { watchdog.as_mut().expect("guarded").tick().await }, if watchdog.is_some() => {
                notifier.watchdog();
            }
            _ = async { ticker.as_mut().expect("guarded").tick().await }, if ticker.is_some() => {
                log_milter_counters(Some(&milter));
            }
            _ = milter_tick.tick() => milter.write_status(),
            update = sources.next_update() => {
                milter.set_allowlist(&update.wanted);
                notifier.status(status(update.wanted.len()));
                metrics::publish_allowlist(&update.wanted);
                metrics::publish_dns(&update.stats);
            }
            _ = signals.sighup.recv() => {
                notifier.reloading();
                let applied = reload().and_then(|new| {
                    crate::config::check_reloadable(&plan, &new)?;
                    let replacement = (new.allow != plan.allow || new.dns != plan.dns)
                        .then(|| AllowSources::start(&new, milter.allowlist()))
                        .transpose()?;
                    reconfigure_milter(Some(&mut milter), &new, replacement.as_ref().map(|(initial, _)| initial));
                    if let Some((_, replacement)) = replacement {
                        std::mem::replace(&mut sources, replacement).stop();
                    }
                    Ok(new)
                });
                match applied {
                    Ok(new) => {
                        plan = new;
                        ticker = stats_ticker(&plan);
                        tracing::info!("configuration reloaded");
                    }
                    Err(error) => tracing::error!("reload rejected, the running configuration stays: {error:#}"),
                }
                notifier.ready(status(milter.allowlist_len()));
            }
        }
    };
    notifier.stopping();
    sources.stop();
    tracing::info!(signal = signal_name, "stopping");
    log_milter_counters(Some(&milter));
    milter.stop();
    Ok(())
}

/// How often the milter's counters are written for `mxguard status`.
fn milter_status_ticker() -> tokio::time::Interval {
    let mut ticker = tokio::time::interval(std::time::Duration::from_secs(2));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker
}

/// How soon an allowlist update that failed halfway is tried again.
const SYNC_RETRY: std::time::Duration = std::time::Duration::from_secs(5);

fn log_milter_counters(milter: Option<&MilterHandle>) {
    if let Some(milter) = milter {
        tracing::info!("{}", milter.counts().summary());
    }
}

/// Where the allowlist comes from: static prefixes alone, or the DNS engine (which includes
/// them) running as a task that publishes the wanted set.
struct AllowSources {
    task: Option<tokio::task::JoinHandle<()>>,
    updates: Option<tokio::sync::watch::Receiver<AllowlistUpdate>>,
}

impl AllowSources {
    /// Restores names from the state file and starts resolving; returns the allowlist to fill
    /// right away. When the state file gives nothing (missing, corrupt or unwritable), the
    /// entries already in the map (`in_place`: pinned by an earlier run, or the allowlist
    /// before a reload) are kept until every DNS source answers: a lost state file must not
    /// empty a working allowlist.
    fn start(
        plan: &RunPlan,
        in_place: &BTreeSet<crate::cidr::Cidr>,
    ) -> anyhow::Result<(BTreeSet<crate::cidr::Cidr>, Self)> {
        let Some(settings) = &plan.dns else {
            return Ok((
                plan.allow.clone(),
                AllowSources {
                    task: None,
                    updates: None,
                },
            ));
        };
        let mut engine = DnsEngine::from_settings(settings, &plan.allow)?;
        let restored = engine.restore();
        if restored == 0 && !in_place.is_empty() {
            let kept = engine.keep_in_place(in_place);
            tracing::warn!(
                entries = in_place.len(),
                kept,
                "no addresses restored from the state file: keeping the allowlist in place until every DNS source answers"
            );
        }
        let initial = engine.wanted();
        tracing::info!(
            hosts = ?settings.hosts.iter().map(ToString::to_string).collect::<Vec<_>>(),
            spf = ?settings.spf.iter().map(ToString::to_string).collect::<Vec<_>>(),
            guards = ?settings.guards,
            dnssec = ?settings.dnssec,
            servers = ?settings.servers,
            policy = ?settings.policy,
            state_dir = %settings.state_dir.display(),
            "resolving allowlist host names"
        );
        let (sender, receiver) = tokio::sync::watch::channel(AllowlistUpdate::default());
        let task = tokio::spawn(engine.run(sender));
        Ok((
            initial,
            AllowSources {
                task: Some(task),
                updates: Some(receiver),
            },
        ))
    }

    /// The next published allowlist; pending forever without DNS, or once the task ended
    /// (fail static: the map keeps what it has).
    async fn next_update(&mut self) -> AllowlistUpdate {
        if let Some(updates) = &mut self.updates {
            if updates.changed().await.is_ok() {
                return updates.borrow_and_update().clone();
            }
            tracing::error!("the DNS task ended; the allowlist stays as it is");
            self.updates = None;
        }
        std::future::pending().await
    }

    fn stop(self) {
        if let Some(task) = self.task {
            task.abort();
        }
    }
}

fn publish_metrics(filter: &Filter) {
    match (filter.maps.counters.read(), filter.allowlist.entries()) {
        (Ok(counters), Ok(allowlist)) => {
            metrics::publish_counters(&counters);
            metrics::publish_allowlist(&allowlist);
        }
        (Err(error), _) | (_, Err(error)) => {
            tracing::warn!("reading maps for metrics failed: {error:#}")
        }
    }
}

fn log_counters(filter: &Filter) {
    match filter.maps.counters.read() {
        Ok(counters) => tracing::info!("{}", summary(&counters)),
        Err(error) => tracing::warn!("reading counters failed: {error:#}"),
    }
}

/// One line: per family, every counter by name.
pub fn summary(counters: &Counters) -> String {
    let families: Vec<String> = Family::ALL
        .iter()
        .map(|&family| {
            let values: Vec<String> = counters
                .family(family)
                .iter()
                .map(|(counter, value)| format!("{}={value}", counter.name()))
                .collect();
            format!("{}: {}", family.label(), values.join(" "))
        })
        .collect();
    format!("counters {}", families.join(" | "))
}
