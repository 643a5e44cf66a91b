//! Prometheus endpoint (`--metrics-addr`): the BPF counters, the allowlist size and the
//! attachments, copied into the `metrics` registry on every daemon tick and served by
//! metrics-exporter-prometheus's HTTP listener.

use std::{collections::BTreeSet, net::SocketAddr};

use anyhow::Context as _;
use filter_common::Family;
use metrics::{counter, gauge};

use crate::{cidr::Cidr, filter::Counters};

/// Starts the HTTP listener on `addr` (must run inside the tokio runtime).
pub fn serve(addr: SocketAddr) -> anyhow::Result<()> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()
        .with_context(|| format!("starting the metrics endpoint on {addr}"))
}

/// Publishes the counters (summed over CPUs; the maps are shared by every interface).
pub fn publish_counters(counters: &Counters) {
    for family in Family::ALL {
        let row = counters.family(family);
        let label = family.label();
        counter!("mxguard_frames_total", "family" => label)
            .absolute(row.get(filter_common::Counter::Frames));
        for (verdict, value) in [
            ("allowed", row.get(filter_common::Counter::SynAllowed)),
            ("dropped", row.get(filter_common::Counter::SynDropped)),
            ("rejected", row.get(filter_common::Counter::SynRejected)),
            ("would_drop", row.get(filter_common::Counter::SynWouldDrop)),
        ] {
            counter!("mxguard_protected_syns_total", "family" => label, "verdict" => verdict)
                .absolute(value);
        }
        counter!("mxguard_evasive_dropped_total", "family" => label)
            .absolute(row.get(filter_common::Counter::EvasiveDropped));
        counter!("mxguard_malformed_total", "family" => label)
            .absolute(row.get(filter_common::Counter::Malformed));
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

/// DNS lookups and failures (the engine's totals over all names).
pub fn publish_dns(stats: &crate::dns::DnsStats) {
    counter!("mxguard_dns_lookups_total").absolute(stats.lookups);
    counter!("mxguard_dns_failures_total").absolute(stats.failures);
    counter!("mxguard_dns_expired_total").absolute(stats.expired);
    for (kind, count) in &stats.failures_by_kind {
        counter!("mxguard_dns_failures_by_kind_total", "kind" => kind.clone()).absolute(*count);
    }
}

pub fn publish_attachment(iface: &str, mode: &str) {
    gauge!("mxguard_attached", "interface" => iface.to_owned(), "mode" => mode.to_owned()).set(1.0);
}
