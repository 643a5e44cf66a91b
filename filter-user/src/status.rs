//! `mxguard status` and `mxguard detach`: work from the pins alone, daemon running or not.

use std::{collections::BTreeSet, path::Path, time::Duration};

use anyhow::bail;
use filter_common::{Counter, Counters, Family, FamilyCounters};
use serde::Serialize;

use crate::{
    allowlist::AllowlistTries,
    cidr::Cidr,
    links::{LAYOUT_VERSION, PinDir},
    maps::{FilterMaps, MapSource},
};

#[derive(Debug, Serialize)]
pub struct Status {
    pub pin_dir: String,
    pub layout_version: u32,
    pub interfaces: Vec<InterfaceStatus>,
    pub action: String,
    pub ports: BTreeSet<u16>,
    pub allowlist: Vec<String>,
    /// Where each allowlist entry comes from: the DNS names whose last answer holds it and the
    /// SPF chains that reached it (from the state file), or none for static prefixes.
    pub allowlist_origins: Vec<EntryOrigin>,
    pub counters: Vec<FamilyStatus>,
    /// Sources seen most often in the sampled drops (a few samples per second per CPU).
    pub top_dropped_sources: Vec<DroppedSourceStatus>,
    /// Seconds the rates were measured over (0 = no rates).
    pub rate_interval_secs: f64,
    /// The header-check milter's counters, as the daemon last wrote them to the state dir
    /// (`null` without a milter).
    pub milter: Option<MilterStatusReport>,
}

/// The milter's counters with their age.
#[derive(Debug, Serialize)]
pub struct MilterStatusReport {
    #[serde(flatten)]
    pub status: crate::milter::stats::MilterStatus,
    /// Seconds since the daemon wrote them (every 2 s while it runs).
    pub age_secs: u64,
}

/// The milter's last counters under `state_dir`, if a daemon with --milter wrote any.
pub fn read_milter_status(state_dir: &Path) -> Option<MilterStatusReport> {
    let status = crate::milter::stats::read(state_dir)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    Some(MilterStatusReport {
        age_secs: now.saturating_sub(status.updated_unix_secs),
        status,
    })
}

/// The milter's lines of the human-readable status.
pub fn render_milter(report: &MilterStatusReport) -> String {
    let counts = &report.status.counts;
    format!(
        "milter:      {} (pid {}, written {}s ago)\n  verdicts    accepted {}  exempt {}  missing {}  forged {}\n  connections {} (refused {}, errors {})\n",
        report.status.endpoint,
        report.status.pid,
        report.age_secs,
        counts.accepted,
        counts.exempt,
        counts.missing,
        counts.forged,
        counts.connections,
        counts.connections_refused,
        counts.connection_errors,
    )
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
    /// The host name, or an SPF prefix's origin chain (`spf a.test → include:b.test`).
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
    /// `attached`: the pinned link is on a live device; `missing`: its device was deleted (a
    /// re-created one of the same name is not filtered until a daemon attaches to it).
    pub state: &'static str,
    /// The device the link is attached to (0 when missing).
    pub ifindex: u32,
}

impl InterfaceStatus {
    fn of(link: crate::links::PinnedLinkEntry) -> Self {
        // An unreadable link filters nothing we can vouch for.
        let ifindex = crate::links::pinned_link_ifindex(&link.path).unwrap_or(0);
        InterfaceStatus {
            iface: link.iface,
            mode: link.mode.to_string(),
            state: if ifindex == 0 { "missing" } else { "attached" },
            ifindex,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct FamilyStatus {
    pub family: &'static str,
    #[serde(flatten)]
    pub totals: CounterValues,
    pub per_second: Option<CounterValues>,
}

/// One value per [`Counter`], serialized as a map from the counter's name, in row order.
#[derive(Debug, Clone, Copy)]
pub struct CounterValues(pub [f64; Counter::COUNT]);

impl Serialize for CounterValues {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        let mut map = serializer.serialize_map(Some(Counter::COUNT))?;
        for (counter, value) in Counter::ALL.iter().zip(self.0) {
            map.serialize_entry(counter.name(), &value)?;
        }
        map.end()
    }
}

impl CounterValues {
    fn of(row: &FamilyCounters) -> Self {
        CounterValues(Counter::ALL.map(|counter| row.get(counter) as f64))
    }

    fn rate(before: &FamilyCounters, after: &FamilyCounters, secs: f64) -> Self {
        CounterValues(
            Counter::ALL.map(|counter| {
                after.get(counter).saturating_sub(before.get(counter)) as f64 / secs
            }),
        )
    }
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
                .chain(saved.spf.values().flat_map(|spf| {
                    spf.prefixes
                        .iter()
                        .filter(|saved| saved.prefix == *cidr)
                        .map(|saved| NameOrigin {
                            name: crate::dns::spf_expand::render_chain(&saved.chain),
                            confirmed_unix_secs: Some(saved.confirmed_unix),
                            confirmed_secs_ago: Some(now.saturating_sub(saved.confirmed_unix)),
                        })
                }))
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
    let mut source = MapSource::Pins(&pins);
    let maps = FilterMaps::open(&mut source)?;
    let before = maps.counters.read()?;
    let rates = if interval.is_zero() {
        None
    } else {
        std::thread::sleep(interval);
        Some(maps.counters.read()?)
    };
    let after: Counters = rates.unwrap_or(before);
    let secs = interval.as_secs_f64();
    let allowlist: BTreeSet<Cidr> = AllowlistTries::open(&mut source)?.read()?;
    Ok(Status {
        pin_dir: pin_dir.display().to_string(),
        layout_version: LAYOUT_VERSION,
        interfaces: pins.links()?.into_iter().map(InterfaceStatus::of).collect(),
        action: maps.settings.action()?.name().to_owned(),
        ports: maps.ports.read()?,
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
        milter: read_milter_status(state_dir),
        top_dropped_sources: maps
            .dropped_sources
            .top(10)?
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
            .map(|i| match i.state {
                "attached" => format!("{} ({})", i.iface, i.mode),
                _ => format!(
                    "{} ({}, MISSING: interface gone, not filtering)",
                    i.iface, i.mode
                ),
            })
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
    for counter in Counter::ALL {
        out += &format!("{:>16}", counter.name());
    }
    out += "\n";
    for row in &status.counters {
        out += &format!("{:<8}", row.family);
        for value in row.totals.0 {
            out += &format!("{value:>16}");
        }
        out += "\n";
        if let Some(rates) = row.per_second {
            out += &format!("{:<8}", "  /s");
            for value in rates.0 {
                out += &format!("{value:>16.1}");
            }
            out += "\n";
        }
    }
    if let Some(milter) = &status.milter {
        out += &render_milter(milter);
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
