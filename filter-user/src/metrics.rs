//! Prometheus endpoint (`--metrics-addr`): the BPF counters, the allowlist size and the
//! attachments, copied into the `metrics` registry on every daemon tick and served by
//! metrics-exporter-prometheus's HTTP listener.

use std::{collections::BTreeSet, net::SocketAddr, sync::Mutex};

use anyhow::Context as _;
use filter_common::{Counters, Family};
use metrics::{counter, gauge};

use crate::cidr::Cidr;

/// Starts the HTTP listener on `addr` (must run inside the tokio runtime).
pub fn serve(addr: SocketAddr) -> anyhow::Result<()> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()
        .with_context(|| format!("starting the metrics endpoint on {addr}"))
}

/// Publishes the counters (summed over CPUs; the maps are shared by every interface). The
/// protected-SYN counters share one metric with a `verdict` label; each other counter is
/// `mxguard_<name>_total`.
pub fn publish_counters(counters: &Counters) {
    for family in Family::ALL {
        let label = family.label();
        for (counter, value) in counters.family(family).iter() {
            match counter.syn_verdict() {
                Some(verdict) => counter!(
                    "mxguard_protected_syns_total", "family" => label, "verdict" => verdict
                )
                .absolute(value),
                None => counter!(format!("mxguard_{}_total", counter.name()), "family" => label)
                    .absolute(value),
            }
        }
    }
}

pub fn publish_allowlist(allowlist: &BTreeSet<Cidr>) {
    let v4 = allowlist
        .iter()
        .filter(|c| matches!(c, Cidr::V4 { .. }))
        .count();
    gauge!("mxguard_allowlist_entries", "family" => "ipv4").set(v4 as f64);
    gauge!("mxguard_allowlist_entries", "family" => "ipv6").set((allowlist.len() - v4) as f64);
}

/// DNS lookups, failures and guard refusals: the totals, and per source.
pub fn publish_dns(stats: &crate::dns::DnsStats) {
    counter!("mxguard_dns_lookups_total").absolute(stats.lookups);
    counter!("mxguard_dns_failures_total").absolute(stats.failures);
    counter!("mxguard_dns_expired_total").absolute(stats.expired);
    for (kind, count) in &stats.failures_by_kind {
        counter!("mxguard_dns_failures_by_kind_total", "kind" => kind.clone()).absolute(*count);
    }
    for (guard, count) in &stats.refusals_by_guard {
        counter!("mxguard_dns_refusals_total", "guard" => guard.clone()).absolute(*count);
    }
    // Per source, labelled `kind` (host or spf) and `source` (the configured name). The
    // exporter cannot forget a series: a source a reload removed is published as 0 entries.
    static PUBLISHED: Mutex<BTreeSet<(&'static str, String)>> = Mutex::new(BTreeSet::new());
    let now: BTreeSet<(&'static str, String)> = stats
        .sources
        .keys()
        .map(|source| (source.kind(), source.name().to_owned()))
        .collect();
    let mut published = PUBLISHED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    for (kind, name) in published.difference(&now) {
        gauge!("mxguard_dns_source_entries", "kind" => *kind, "source" => name.clone()).set(0.0);
    }
    published.extend(now);
    for (source, per) in &stats.sources {
        let labels = [
            ("kind", source.kind().to_owned()),
            ("source", source.name().to_owned()),
        ];
        gauge!("mxguard_dns_source_entries", &labels).set(per.entries as f64);
        counter!("mxguard_dns_source_lookups_total", &labels).absolute(per.lookups);
        for (kind, count) in &per.failures_by_kind {
            let mut labels = labels.to_vec();
            labels.push(("failure", kind.clone()));
            counter!("mxguard_dns_source_failures_total", &labels).absolute(*count);
        }
        for (guard, count) in &per.refusals_by_guard {
            let mut labels = labels.to_vec();
            labels.push(("guard", guard.clone()));
            counter!("mxguard_dns_source_refusals_total", &labels).absolute(*count);
        }
        if let Some(at) = per.last_success_unix {
            gauge!("mxguard_dns_source_last_success_timestamp_seconds", &labels).set(at as f64);
        }
    }
}

pub fn publish_attachment(iface: &str, mode: &str) {
    gauge!("mxguard_attached", "interface" => iface.to_owned(), "mode" => mode.to_owned()).set(1.0);
}

/// The interface lost its filter (deleted, or re-created without it yet).
pub fn publish_detachment(iface: &str, mode: &str) {
    gauge!("mxguard_attached", "interface" => iface.to_owned(), "mode" => mode.to_owned()).set(0.0);
}
