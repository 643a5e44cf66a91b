//! `mxguard status` and `mxguard detach`: work from the pins alone, daemon running or not.

use std::{collections::BTreeSet, path::Path, time::Duration};

use anyhow::{Context as _, bail};
use aya::maps::{Map, MapData};
use filter_common::{Family, FamilyCounters, map_names};
use serde::Serialize;

use crate::{
    cidr::Cidr,
    filter::{Counters, read_action, read_allowlist, read_counters, read_ports},
    pins::{LAYOUT_VERSION, PinDir},
};

#[derive(Debug, Serialize)]
pub struct Status {
    pub pin_dir: String,
    pub layout_version: u32,
    pub interfaces: Vec<InterfaceStatus>,
    pub action: String,
    pub ports: BTreeSet<u16>,
    pub allowlist: Vec<String>,
    /// Where each allowlist entry comes from: the DNS names whose last answer holds it (from
    /// the state file), or none for static prefixes.
    pub allowlist_origins: Vec<EntryOrigin>,
    pub counters: Vec<FamilyStatus>,
    /// Sources seen most often in the sampled drops (a few samples per second per CPU).
    pub top_dropped_sources: Vec<DroppedSourceStatus>,
    /// Seconds the rates were measured over (0 = no rates).
    pub rate_interval_secs: f64,
}

#[derive(Debug, Serialize)]
pub struct EntryOrigin {
    pub prefix: String,
    /// `static` (a CIDR, allow file or an entry from an earlier configuration) or `dns`.
    pub origin: &'static str,
    pub names: Vec<NameOrigin>,
}

#[derive(Debug, Serialize)]
pub struct NameOrigin {
    pub name: String,
    /// When DNS last answered with this address (Unix seconds), if known.
    pub confirmed_unix_secs: Option<u64>,
    pub confirmed_secs_ago: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct DroppedSourceStatus {
    pub address: String,
    pub samples: u64,
    pub last_port: u16,
    pub last_seen_unix_secs: u64,
}

#[derive(Debug, Serialize)]
pub struct InterfaceStatus {
    pub iface: String,
    pub mode: String,
}

#[derive(Debug, Serialize)]
pub struct FamilyStatus {
    pub family: &'static str,
    #[serde(flatten)]
    pub totals: CounterValues,
    pub per_second: Option<CounterValues>,
}

#[derive(Debug, Serialize, Clone, Copy)]
pub struct CounterValues {
    pub frames: f64,
    pub syn_allowed: f64,
    pub syn_dropped: f64,
    pub syn_rejected: f64,
    pub syn_would_drop: f64,
    pub evasive_dropped: f64,
    pub malformed: f64,
}

impl CounterValues {
    const NAMES: [&str; 7] = [
        "frames",
        "syn_allowed",
        "syn_dropped",
        "syn_rejected",
        "would_drop",
        "evasive",
        "malformed",
    ];

    fn values(&self) -> [f64; 7] {
        [
            self.frames,
            self.syn_allowed,
            self.syn_dropped,
            self.syn_rejected,
            self.syn_would_drop,
            self.evasive_dropped,
            self.malformed,
        ]
    }

    fn of(row: &FamilyCounters) -> Self {
        CounterValues {
            frames: row.get(filter_common::Counter::Frames) as f64,
            syn_allowed: row.get(filter_common::Counter::SynAllowed) as f64,
            syn_dropped: row.get(filter_common::Counter::SynDropped) as f64,
            syn_rejected: row.get(filter_common::Counter::SynRejected) as f64,
            syn_would_drop: row.get(filter_common::Counter::SynWouldDrop) as f64,
            evasive_dropped: row.get(filter_common::Counter::EvasiveDropped) as f64,
            malformed: row.get(filter_common::Counter::Malformed) as f64,
        }
    }

    fn rate(before: &FamilyCounters, after: &FamilyCounters, secs: f64) -> Self {
        let per = |a: u64, b: u64| a.saturating_sub(b) as f64 / secs;
        CounterValues {
            frames: per(
                after.get(filter_common::Counter::Frames),
                before.get(filter_common::Counter::Frames),
            ),
            syn_allowed: per(
                after.get(filter_common::Counter::SynAllowed),
                before.get(filter_common::Counter::SynAllowed),
            ),
            syn_dropped: per(
                after.get(filter_common::Counter::SynDropped),
                before.get(filter_common::Counter::SynDropped),
            ),
            syn_rejected: per(
                after.get(filter_common::Counter::SynRejected),
                before.get(filter_common::Counter::SynRejected),
            ),
            syn_would_drop: per(
                after.get(filter_common::Counter::SynWouldDrop),
                before.get(filter_common::Counter::SynWouldDrop),
            ),
            evasive_dropped: per(
                after.get(filter_common::Counter::EvasiveDropped),
                before.get(filter_common::Counter::EvasiveDropped),
            ),
            malformed: per(
                after.get(filter_common::Counter::Malformed),
                before.get(filter_common::Counter::Malformed),
            ),
        }
    }
}

fn open_map(pins: &PinDir, name: &str) -> anyhow::Result<Map> {
    let path = pins.map_path(name);
    let data = MapData::from_pin(&path)
        .with_context(|| format!("opening pinned map {}", path.display()))?;
    Map::from_map_data(data)
        .with_context(|| format!("pinned map {} has an unknown type", path.display()))
}

/// Names each allowlist entry's source from the DNS state file (unreadable: all `static`).
fn origins(allowlist: &BTreeSet<Cidr>, state_dir: &Path) -> Vec<EntryOrigin> {
    let saved = crate::dns::state_file::StateFile::in_dir(state_dir)
        .load()
        .ok()
        .flatten()
        .unwrap_or_default();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    allowlist
        .iter()
        .map(|cidr| {
            let names: Vec<NameOrigin> = saved
                .names
                .iter()
                .filter_map(|(name, entry)| {
                    let family = if matches!(cidr, Cidr::V4 { .. }) {
                        &entry.ipv4
                    } else {
                        &entry.ipv6
                    };
                    let host = family.addresses.iter().any(|a| Cidr::host(*a) == *cidr);
                    host.then(|| NameOrigin {
                        name: name.to_string(),
                        confirmed_unix_secs: family.confirmed_unix,
                        confirmed_secs_ago: family.confirmed_unix.map(|t| now.saturating_sub(t)),
                    })
                })
                .collect();
            EntryOrigin {
                prefix: cidr.to_string(),
                origin: if names.is_empty() { "static" } else { "dns" },
                names,
            }
        })
        .collect()
}

/// Reads the pinned filter's state; counter rates are measured over `interval`; entry origins
/// come from the DNS state file in `state_dir`.
pub fn read_status(pin_dir: &Path, interval: Duration, state_dir: &Path) -> anyhow::Result<Status> {
    let pins = PinDir::new(pin_dir);
    if !pins.versions()?.contains(&LAYOUT_VERSION) {
        bail!(
            "no mxguard filter is pinned under {} (layout v{LAYOUT_VERSION})",
            pin_dir.display()
        );
    }
    let counters_map = open_map(&pins, map_names::COUNTERS)?;
    let before = read_counters(&counters_map)?;
    let rates = if interval.is_zero() {
        None
    } else {
        std::thread::sleep(interval);
        Some(read_counters(&counters_map)?)
    };
    let after: Counters = rates.unwrap_or(before);
    let secs = interval.as_secs_f64();
    let allowlist: BTreeSet<Cidr> = read_allowlist(
        &open_map(&pins, map_names::ALLOW_V4)?,
        &open_map(&pins, map_names::ALLOW_V6)?,
    )?;
    Ok(Status {
        pin_dir: pin_dir.display().to_string(),
        layout_version: LAYOUT_VERSION,
        interfaces: pins
            .links()?
            .into_iter()
            .map(|link| InterfaceStatus {
                iface: link.iface,
                mode: link.mode.to_string(),
            })
            .collect(),
        action: format!("{:?}", read_action(&open_map(&pins, map_names::CONFIG)?)?).to_lowercase(),
        ports: read_ports(&open_map(&pins, map_names::PORTS)?)?,
        allowlist: allowlist.iter().map(ToString::to_string).collect(),
        allowlist_origins: origins(&allowlist, state_dir),
        counters: Family::ALL
            .iter()
            .map(|&family| FamilyStatus {
                family: family.label(),
                totals: CounterValues::of(after.family(family)),
                per_second: rates.map(|_| {
                    CounterValues::rate(before.family(family), after.family(family), secs)
                }),
            })
            .collect(),
        rate_interval_secs: if rates.is_some() { secs } else { 0.0 },
        top_dropped_sources: crate::samples::top_sources(
            &open_map(&pins, map_names::DROPPED_SOURCES)?,
            10,
        )?
        .into_iter()
        .map(|(address, source)| DroppedSourceStatus {
            address: address.to_string(),
            samples: source.samples,
            last_port: source.last_port,
            last_seen_unix_secs: source.last_seen_unix_secs,
        })
        .collect(),
    })
}

/// The human-readable table.
pub fn render(status: &Status) -> String {
    let mut out = String::new();
    let interfaces = if status.interfaces.is_empty() {
        "none (not attached)".to_owned()
    } else {
        status
            .interfaces
            .iter()
            .map(|i| format!("{} ({})", i.iface, i.mode))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let ports = status
        .ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    out += &format!(
        "pins:        {} (layout v{})\n",
        status.pin_dir, status.layout_version
    );
    out += &format!("interfaces:  {interfaces}\n");
    out += &format!("action:      {}\n", status.action);
    out += &format!(
        "ports:       {}\n",
        if ports.is_empty() {
            "none".into()
        } else {
            ports
        }
    );
    out += &format!("allowlist:   {} entries\n", status.allowlist.len());
    for entry in &status.allowlist_origins {
        let names: Vec<String> = entry
            .names
            .iter()
            .map(|n| match n.confirmed_secs_ago {
                Some(ago) => format!("{} (confirmed {ago}s ago)", n.name),
                None => n.name.clone(),
            })
            .collect();
        let origin = if names.is_empty() {
            "static".to_owned()
        } else {
            names.join(", ")
        };
        out += &format!("  {:<44} {origin}\n", entry.prefix);
    }
    out += &format!("{:<8}", "counters");
    for name in CounterValues::NAMES {
        out += &format!("{name:>13}");
    }
    out += "\n";
    for row in &status.counters {
        out += &format!("{:<8}", row.family);
        for value in row.totals.values() {
            out += &format!("{value:>13}");
        }
        out += "\n";
        if let Some(rates) = row.per_second {
            out += &format!("{:<8}", "  /s");
            for value in rates.values() {
                out += &format!("{value:>13.1}");
            }
            out += "\n";
        }
    }
    if !status.top_dropped_sources.is_empty() {
        out += "top dropped sources (sampled):\n";
        for source in &status.top_dropped_sources {
            out += &format!(
                "  {:<40} {:>8} samples, last port {}\n",
                source.address, source.samples, source.last_port
            );
        }
    }
    out
}

/// Removes pinned links (all, or `iface`'s) and, once no link is left, the maps.
pub fn detach(pin_dir: &Path, iface: Option<&str>) -> anyhow::Result<Vec<String>> {
    let pins = PinDir::new(pin_dir);
    let links = pins.links()?;
    let chosen: Vec<_> = links
        .iter()
        .filter(|link| iface.is_none_or(|i| i == link.iface))
        .collect();
    if chosen.is_empty() {
        match iface {
            Some(iface) => bail!(
                "no mxguard filter is pinned for {iface} under {}",
                pin_dir.display()
            ),
            None if pins.versions()?.is_empty() => {
                bail!("nothing is pinned under {}", pin_dir.display())
            }
            None => {}
        }
    }
    let mut detached = Vec::new();
    for link in chosen {
        std::fs::remove_file(&link.path)
            .with_context(|| format!("removing {}", link.path.display()))?;
        detached.push(link.iface.clone());
    }
    for version in pins.versions()? {
        pins.remove_version_if_unused(version)?;
    }
    Ok(detached)
}
