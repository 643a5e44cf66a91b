//! `mxguard run`: load, fill, attach, report counters, detach on SIGINT/SIGTERM.

use std::collections::BTreeSet;

use anyhow::Context as _;
use filter_common::Family;
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    cli::RunPlan,
    filter::{Counters, Filter},
};

/// Runs the filter until SIGINT or SIGTERM. Every input was validated in `plan`; a failure
/// while loading or attaching leaves nothing attached.
pub async fn run(plan: RunPlan) -> anyhow::Result<()> {
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;

    let mut filter = Filter::load()?;
    filter.set_ports(&plan.ports, &BTreeSet::new())?;
    filter.sync_allowlist(&plan.allow)?;
    if plan.allow.is_empty() {
        tracing::warn!("the allowlist is empty: every SYN to a protected port will be dropped");
    }
    let modes = filter.attach_all(&plan.ifaces, plan.mode)?;
    for (iface, mode) in plan.ifaces.iter().zip(&modes) {
        tracing::info!(iface = %iface, mode = %mode, "attached XDP filter");
    }
    tracing::info!(
        ports = ?plan.ports,
        allowlist = plan.allow.len(),
        "filtering SYNs to the protected ports from sources outside the allowlist"
    );
    for cidr in &plan.allow {
        tracing::info!(%cidr, "allowlisted");
    }

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
        }
    };
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
