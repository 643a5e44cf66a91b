//! `mxguard run`: load, fill, attach, report counters, detach on SIGINT/SIGTERM.

use std::collections::BTreeSet;

use anyhow::Context as _;
use filter_common::Family;
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    cli::RunPlan,
    dns::{AllowlistUpdate, DnsEngine, Enforcer},
    filter::{Counters, Filter},
};

/// Runs the filter until SIGINT or SIGTERM. Every input was validated in `plan`; a failure
/// while loading or attaching leaves nothing attached.
pub async fn run(plan: RunPlan) -> anyhow::Result<()> {
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;

    let mut filter = Filter::load()?;
    filter.set_ports(&plan.ports, &BTreeSet::new())?;
    // The state file first: a restart while DNS is down keeps the last known relays.
    let mut dns = match &plan.dns {
        Some(settings) => Some(DnsEngine::from_settings(settings, &plan.allow)?),
        None => None,
    };
    let initial = match &mut dns {
        Some(engine) => {
            engine.restore();
            engine.wanted()
        }
        None => plan.allow.clone(),
    };
    // Monitor while the allowlist is empty (unless --strict), drop once it holds something.
    let mut enforcer = Enforcer::start(&mut filter, &initial, plan.strict)?;
    let modes = filter.attach_all(&plan.ifaces, plan.mode)?;
    for (iface, mode) in plan.ifaces.iter().zip(&modes) {
        tracing::info!(iface = %iface, mode = %mode, "attached XDP filter");
    }
    tracing::info!(
        ports = ?plan.ports,
        allowlist = initial.len(),
        "filtering SYNs to the protected ports from sources outside the allowlist"
    );
    for cidr in &plan.allow {
        tracing::info!(%cidr, "allowlisted");
    }

    // The DNS task publishes the wanted allowlist; this loop alone touches the filter.
    let (dns_tx, mut dns_rx) = tokio::sync::watch::channel(AllowlistUpdate::default());
    let dns_task = dns.map(|engine| {
        if let Some(settings) = &plan.dns {
            tracing::info!(
                hosts = ?settings.hosts.iter().map(ToString::to_string).collect::<Vec<_>>(),
                servers = ?settings.servers,
                policy = ?settings.policy,
                state_dir = %settings.state_dir.display(),
                "resolving allowlist host names"
            );
        }
        tokio::spawn(engine.run(dns_tx))
    });
    let mut dns_open = dns_task.is_some();

    let mut ticker = (!plan.stats_interval.is_zero()).then(|| {
        let mut ticker = tokio::time::interval(plan.stats_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker
    });
    let signal_name = loop {
        tokio::select! {
            _ = sigint.recv() => break "SIGINT",
            _ = sigterm.recv() => break "SIGTERM",
            _ = async { ticker.as_mut().expect("guarded").tick().await }, if ticker.is_some() => {
                log_counters(&filter);
            }
            changed = dns_rx.changed(), if dns_open => {
                if changed.is_err() {
                    // Fail static: the map keeps what it has.
                    tracing::error!("the DNS task ended; the allowlist stays as it is");
                    dns_open = false;
                    continue;
                }
                let update = dns_rx.borrow_and_update().clone();
                if let Err(error) = enforcer.apply(&mut filter, &update.wanted) {
                    tracing::error!("updating the allowlist failed: {error:#}");
                }
            }
        }
    };
    if let Some(task) = dns_task {
        task.abort();
    }
    tracing::info!(signal = signal_name, "stopping");
    log_counters(&filter);
    filter.detach_all();
    tracing::info!("detached; bye");
    Ok(())
}

fn log_counters(filter: &Filter) {
    match filter.counters() {
        Ok(counters) => tracing::info!("{}", summary(&counters)),
        Err(error) => tracing::warn!("reading counters failed: {error:#}"),
    }
}

/// One line: per family, frames seen and the protected-SYN verdicts.
pub fn summary(counters: &Counters) -> String {
    let mut parts = Vec::new();
    for family in Family::ALL {
        let row = counters.family(family);
        parts.push(format!(
            "{}: frames={} syn_allowed={} syn_dropped={} syn_would_drop={} evasive_dropped={} malformed={}",
            family.label(),
            row.frames,
            row.syn_allowed,
            row.syn_dropped,
            row.syn_would_drop,
            row.evasive_dropped,
            row.malformed
        ));
    }
    format!("counters {}", parts.join(" | "))
}
