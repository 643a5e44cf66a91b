//! Typed handles on the program's maps, opened from a freshly loaded object or from the pins.
//! The daemon, `status` and `detach` all read and write the maps through these types.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, anyhow};
use aya::{
    Ebpf,
    maps::{Array, HashMap, Map, MapData, PerCpuArray},
};
use filter_common::{
    Action, Config, Counters, DEFAULT_REJECT_PER_CPU_PER_SEC, DropSample, DroppedSource, Family,
    FamilyCounters, PORT_OPEN, PORT_PROTECTED, PortFlag, map_names,
};

use crate::links::PinDir;

/// Where maps are opened from.
pub enum MapSource<'a> {
    /// The object just loaded: its maps are taken out of it (each once).
    Object(&'a mut Ebpf),
    /// The maps pinned under a pin directory's current layout.
    Pins(&'a PinDir),
}

impl MapSource<'_> {
    /// Opens the map `name`.
    pub fn open(&mut self, name: &str) -> anyhow::Result<Map> {
        match self {
            MapSource::Object(ebpf) => ebpf
                .take_map(name)
                .ok_or_else(|| anyhow!("BPF object has no map {name} (or it was taken already)")),
            MapSource::Pins(pins) => {
                let path = pins.map_path(name);
                let data = MapData::from_pin(&path)
                    .with_context(|| format!("opening pinned map {}", path.display()))?;
                Map::from_map_data(data)
                    .with_context(|| format!("pinned map {} has an unknown type", path.display()))
            }
        }
    }

    /// Opens the map `name` as the typed handle `T`.
    pub fn typed<T>(&mut self, name: &str) -> anyhow::Result<T>
    where
        T: TryFrom<Map, Error = aya::maps::MapError>,
    {
        T::try_from(self.open(name)?)
            .with_context(|| format!("map {name} has an unexpected type or layout"))
    }
}

/// `PORTS`: which TCP ports are protected.
pub struct PortMap(Array<MapData, PortFlag>);

impl PortMap {
    pub fn open(source: &mut MapSource) -> anyhow::Result<Self> {
        source.typed(map_names::PORTS).map(PortMap)
    }

    /// The ports currently protected.
    pub fn read(&self) -> anyhow::Result<BTreeSet<u16>> {
        let mut ports = BTreeSet::new();
        for (index, flag) in self.0.iter().enumerate() {
            if flag.context("reading the port map")? == PORT_PROTECTED {
                ports.insert(u16::try_from(index).context("port index out of range")?);
            }
        }
        Ok(ports)
    }

    /// Makes exactly `ports` protected, given the `previous` set. New ports are protected
    /// before old ones are released, so a port that stays in the set is never unprotected.
    pub fn set(&mut self, ports: &BTreeSet<u16>, previous: &BTreeSet<u16>) -> anyhow::Result<()> {
        for &port in ports.difference(previous) {
            self.0
                .set(u32::from(port), PORT_PROTECTED, 0)
                .with_context(|| format!("protecting port {port}"))?;
        }
        for &port in previous.difference(ports) {
            self.0
                .set(u32::from(port), PORT_OPEN, 0)
                .with_context(|| format!("releasing port {port}"))?;
        }
        Ok(())
    }
}

/// `CONFIG`: the action for denied SYNs and the RST rate limit.
pub struct SettingsMap(Array<MapData, Config>);

impl SettingsMap {
    pub fn open(source: &mut MapSource) -> anyhow::Result<Self> {
        source.typed(map_names::CONFIG).map(SettingsMap)
    }

    fn read(&self) -> anyhow::Result<Config> {
        self.0.get(&0, 0).context("reading the config map")
    }

    /// The action in force.
    pub fn action(&self) -> anyhow::Result<Action> {
        Ok(Action::from_raw(self.read()?.action))
    }

    /// Sets the action, keeping the RST rate limit (the default if none is set yet).
    pub fn set_action(&mut self, action: Action) -> anyhow::Result<()> {
        let current = self.read()?;
        let reject_per_cpu_per_sec = match current.reject_per_cpu_per_sec {
            0 => DEFAULT_REJECT_PER_CPU_PER_SEC,
            rate => rate,
        };
        let config = Config {
            action: action as u32,
            reject_per_cpu_per_sec,
        };
        self.0.set(0, config, 0).context("writing the action")
    }

    /// Sets the RST rate limit of the `reject` action (per CPU, per second).
    pub fn set_reject_rate(&mut self, per_cpu_per_sec: u32) -> anyhow::Result<()> {
        let mut config = self.read()?;
        config.reject_per_cpu_per_sec = per_cpu_per_sec;
        self.0.set(0, config, 0).context("writing the reject rate")
    }
}

/// `COUNTERS`: one row per family, per CPU.
pub struct CounterMap(PerCpuArray<MapData, FamilyCounters>);

impl CounterMap {
    pub fn open(source: &mut MapSource) -> anyhow::Result<Self> {
        source.typed(map_names::COUNTERS).map(CounterMap)
    }

    /// The counters summed over all CPUs.
    pub fn read(&self) -> anyhow::Result<Counters> {
        let mut counters = Counters::default();
        for family in Family::ALL {
            let per_cpu = self
                .0
                .get(&(family as u32), 0)
                .context("reading counters")?;
            for row in per_cpu.iter() {
                counters.family_mut(family).add(row);
            }
        }
        Ok(counters)
    }
}

/// `DROPPED_SOURCES`: the daemon's tally of sampled denied sources, for `status`.
pub struct DroppedSourceMap(HashMap<MapData, [u8; 16], DroppedSource>);

impl DroppedSourceMap {
    pub fn open(source: &mut MapSource) -> anyhow::Result<Self> {
        source
            .typed(map_names::DROPPED_SOURCES)
            .map(DroppedSourceMap)
    }

    /// Adds sampled drops to the tally.
    pub fn tally(&mut self, samples: &[DropSample]) -> anyhow::Result<()> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        for sample in samples {
            let key = dropped_source_key(sample);
            let mut entry = self.0.get(&key, 0).unwrap_or_default();
            entry.samples += 1;
            entry.last_seen_unix_secs = now;
            entry.last_port = sample.port;
            self.0
                .insert(key, entry, 0)
                .context("updating DROPPED_SOURCES")?;
        }
        Ok(())
    }

    /// The `limit` sources sampled most often.
    pub fn top(&self, limit: usize) -> anyhow::Result<Vec<(IpAddr, DroppedSource)>> {
        let mut all = Vec::new();
        for entry in self.0.iter() {
            let (key, value) = entry.context("reading DROPPED_SOURCES")?;
            let v6 = Ipv6Addr::from(key);
            let addr = v6
                .to_ipv4_mapped()
                .map(IpAddr::V4)
                .unwrap_or(IpAddr::V6(v6));
            all.push((addr, value));
        }
        all.sort_by(|a, b| b.1.samples.cmp(&a.1.samples).then(a.0.cmp(&b.0)));
        all.truncate(limit);
        Ok(all)
    }
}

/// The key `DROPPED_SOURCES` uses: IPv6, or IPv4-mapped IPv6 for IPv4 sources.
fn dropped_source_key(sample: &DropSample) -> [u8; 16] {
    if sample.family == Family::Ipv4 as u8 {
        let [a, b, c, d, ..] = sample.source;
        Ipv4Addr::new(a, b, c, d).to_ipv6_mapped().octets()
    } else {
        sample.source
    }
}

/// The maps besides the allowlist (see `allowlist` for that one).
pub struct FilterMaps {
    pub ports: PortMap,
    pub settings: SettingsMap,
    pub counters: CounterMap,
    pub dropped_sources: DroppedSourceMap,
}

impl FilterMaps {
    pub fn open(source: &mut MapSource) -> anyhow::Result<Self> {
        Ok(FilterMaps {
            ports: PortMap::open(source)?,
            settings: SettingsMap::open(source)?,
            counters: CounterMap::open(source)?,
            dropped_sources: DroppedSourceMap::open(source)?,
        })
    }
}
