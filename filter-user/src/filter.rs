//! The loaded XDP program and its maps: load, fill, attach, read counters.

use std::{collections::BTreeSet, path::PathBuf};

use anyhow::{Context as _, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, LpmTrie, Map, MapData, PerCpuArray, lpm_trie::Key},
    programs::{
        Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        xdp::{XdpLink, XdpLinkId},
    },
};
use filter_common::{
    Action, AllowEntry, BLOCK_PREFIX_LEN, BLOCK_WORDS, Config, DEFAULT_REJECT_PER_CPU_PER_SEC,
    Family, FamilyCounters, PORT_OPEN, PORT_PROTECTED, PROGRAM_NAME, PortFlag, SUMMARY_PREFIX_LEN,
    SUMMARY_WORDS, map_names,
};

use crate::{
    BPF_OBJECT,
    cidr::Cidr,
    fast_path::{Fam, FastPath, MappedBitmap},
    pins::{LAYOUT_VERSION, PinDir},
};

/// How to attach to an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AttachMode {
    /// Native (driver) XDP if the driver has it, otherwise generic.
    Auto,
    /// Native (driver) XDP only.
    Native,
    /// Generic (skb) XDP: works on every interface, slower.
    Generic,
}

/// The mode an attachment actually got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachedMode {
    Native,
    Generic,
}

impl std::fmt::Display for AttachedMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AttachedMode::Native => "native",
            AttachedMode::Generic => "generic",
        })
    }
}

/// Counters summed over all CPUs, one row per [`Family`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters(pub [FamilyCounters; 3]);

impl Counters {
    pub fn family(&self, family: Family) -> &FamilyCounters {
        &self.0[family as usize]
    }

    pub fn total(&self) -> FamilyCounters {
        let mut total = FamilyCounters::default();
        for row in &self.0 {
            total.add(row);
        }
        total
    }
}

/// How an attachment is held.
enum LinkHandle {
    /// Owned by the program: dropping the filter detaches.
    Owned(XdpLinkId),
    /// Pinned on bpffs: survives the daemon; removing the pin (and this fd) detaches.
    Pinned { link: FdLink, path: PathBuf },
}

struct Attachment {
    iface: String,
    mode: AttachedMode,
    handle: LinkHandle,
}

/// What `attach_pinned` did for an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachOutcome {
    /// No filter was there: attached fresh.
    Attached,
    /// A filter of this layout was there: its link now runs this program (no gap).
    Adopted,
    /// A filter of an older pin layout was there: replaced in place (no gap), old pins removed.
    Upgraded { from_version: u32 },
}

/// The loaded program with its maps. Dropping it detaches owned attachments; pinned ones stay.
pub struct Filter {
    ebpf: Ebpf,
    attachments: Vec<Attachment>,
    pins: Option<PinDir>,
    /// The allowlist fast path's bitmaps (see `fast_path`), kept in step with the tries by
    /// `allow` and `disallow`.
    fast_path: FastPath,
}

impl Filter {
    /// Loads the embedded program into the kernel (this runs the verifier) with an empty
    /// allowlist, no protected ports and the `Drop` action. Nothing is attached yet.
    pub fn load() -> anyhow::Result<Self> {
        let ebpf = Ebpf::load(BPF_OBJECT).context("loading the BPF object")?;
        Self::finish_load(ebpf, None)
    }

    /// Loads the program with its maps pinned under `pins` (current layout): maps already
    /// pinned there are reused, so the allowlist, ports and counters carry over.
    pub fn load_pinned(pins: &PinDir) -> anyhow::Result<Self> {
        pins.create()?;
        let mut loader = EbpfLoader::new();
        for name in map_names::ALL {
            loader.map_pin_path(name, pins.map_path(name));
        }
        let ebpf = loader.load(BPF_OBJECT).with_context(|| {
            format!(
                "loading the BPF object with maps pinned under {}",
                pins.root().display()
            )
        })?;
        Self::finish_load(ebpf, Some(pins.clone()))
    }

    fn finish_load(mut ebpf: Ebpf, pins: Option<PinDir>) -> anyhow::Result<Self> {
        let program: &mut Xdp = ebpf
            .program_mut(PROGRAM_NAME)
            .ok_or_else(|| anyhow!("BPF object has no program {PROGRAM_NAME}"))?
            .try_into()
            .context("program is not XDP")?;
        program
            .load()
            .context("loading the XDP program into the kernel (verifier)")?;
        let mut levels = Vec::new();
        for (fam, name, block_len, words) in [
            (
                Fam::V4,
                map_names::ALLOW_V4_SUMMARY,
                SUMMARY_PREFIX_LEN,
                SUMMARY_WORDS,
            ),
            (
                Fam::V4,
                map_names::ALLOW_V4_BLOCKS,
                BLOCK_PREFIX_LEN,
                BLOCK_WORDS,
            ),
            (
                Fam::V6,
                map_names::ALLOW_V6_SUMMARY,
                SUMMARY_PREFIX_LEN,
                SUMMARY_WORDS,
            ),
            (
                Fam::V6,
                map_names::ALLOW_V6_BLOCKS,
                BLOCK_PREFIX_LEN,
                BLOCK_WORDS,
            ),
        ] {
            let map = match ebpf.map(name) {
                Some(aya::maps::Map::Array(data)) => MappedBitmap::new(data.fd(), words)
                    .with_context(|| format!("mapping {name}"))?,
                _ => return Err(anyhow!("BPF object has no array map {name}")),
            };
            levels.push((fam, name, block_len, map));
        }
        let mut filter = Filter {
            ebpf,
            attachments: Vec::new(),
            pins,
            fast_path: FastPath::new(levels),
        };
        // Pinned tries may already hold prefixes, and pinned bitmaps may predate them (or be
        // new): derive the bitmaps from the tries before anything is attached.
        let prefixes: Vec<(Fam, u128, u8)> = filter.allowlist()?.iter().map(block_key).collect();
        filter.fast_path.rebuild(&prefixes);
        Ok(filter)
    }

    /// The XDP program, for `BPF_PROG_TEST_RUN`.
    pub fn program(&self) -> anyhow::Result<&Xdp> {
        self.ebpf
            .program(PROGRAM_NAME)
            .ok_or_else(|| anyhow!("no program {PROGRAM_NAME}"))?
            .try_into()
            .context("program is not XDP")
    }

    fn program_mut(&mut self) -> anyhow::Result<&mut Xdp> {
        self.ebpf
            .program_mut(PROGRAM_NAME)
            .ok_or_else(|| anyhow!("no program {PROGRAM_NAME}"))?
            .try_into()
            .context("program is not XDP")
    }

    /// Makes exactly `ports` protected. New ports are protected before old ones are released,
    /// so a port that stays in the set is never unprotected in between.
    pub fn set_ports(
        &mut self,
        ports: &BTreeSet<u16>,
        previous: &BTreeSet<u16>,
    ) -> anyhow::Result<()> {
        let mut map: Array<&mut MapData, PortFlag> = self.map(map_names::PORTS)?;
        for &port in ports.difference(previous) {
            map.set(u32::from(port), PORT_PROTECTED, 0)
                .with_context(|| format!("protecting port {port}"))?;
        }
        for &port in previous.difference(ports) {
            map.set(u32::from(port), PORT_OPEN, 0)
                .with_context(|| format!("releasing port {port}"))?;
        }
        Ok(())
    }

    /// The ports currently protected, read back from the map.
    pub fn ports(&self) -> anyhow::Result<BTreeSet<u16>> {
        read_ports(self.raw_map(map_names::PORTS)?)
    }

    /// The action in force, read back from the map.
    pub fn action(&self) -> anyhow::Result<Action> {
        read_action(self.raw_map(map_names::CONFIG)?)
    }

    /// Sets the action for denied SYNs, keeping the RST rate limit (default if unset).
    pub fn set_action(&mut self, action: Action) -> anyhow::Result<()> {
        let mut map: Array<&mut MapData, Config> = self.map(map_names::CONFIG)?;
        let current = map.get(&0, 0).context("reading the config")?;
        let reject_per_cpu_per_sec = match current.reject_per_cpu_per_sec {
            0 => DEFAULT_REJECT_PER_CPU_PER_SEC,
            rate => rate,
        };
        let config = Config {
            action: action as u32,
            reject_per_cpu_per_sec,
        };
        map.set(0, config, 0).context("writing the action")
    }

    /// Sets the RST rate limit of the `reject` action (per CPU, per second).
    pub fn set_reject_rate(&mut self, per_cpu_per_sec: u32) -> anyhow::Result<()> {
        let mut map: Array<&mut MapData, Config> = self.map(map_names::CONFIG)?;
        let mut config = map.get(&0, 0).context("reading the config")?;
        config.reject_per_cpu_per_sec = per_cpu_per_sec;
        map.set(0, config, 0).context("writing the reject rate")
    }

    /// Adds one prefix to the allowlist.
    pub fn allow(&mut self, cidr: &Cidr) -> anyhow::Result<()> {
        // Bits first: a set bit with no trie entry yet is only a slower miss, never a verdict
        // change; the reverse order could drop an allowlisted source.
        let (fam, addr, len) = block_key(cidr);
        self.fast_path.insert(fam, addr, len);
        let result = self.trie_insert(cidr);
        if result.is_err() {
            self.fast_path.remove(fam, addr, len);
        }
        result
    }

    fn trie_insert(&mut self, cidr: &Cidr) -> anyhow::Result<()> {
        const PRESENT: AllowEntry = 1;
        match *cidr {
            Cidr::V4 { addr, prefix_len } => {
                let mut trie: LpmTrie<&mut MapData, [u8; 4], AllowEntry> =
                    self.map(map_names::ALLOW_V4)?;
                trie.insert(&Key::new(u32::from(prefix_len), addr.octets()), PRESENT, 0)
            }
            Cidr::V6 { addr, prefix_len } => {
                let mut trie: LpmTrie<&mut MapData, [u8; 16], AllowEntry> =
                    self.map(map_names::ALLOW_V6)?;
                trie.insert(&Key::new(u32::from(prefix_len), addr.octets()), PRESENT, 0)
            }
        }
        .with_context(|| format!("adding {cidr} to the allowlist"))
    }

    /// Removes one prefix from the allowlist; removing an absent prefix is not an error.
    pub fn disallow(&mut self, cidr: &Cidr) -> anyhow::Result<()> {
        let result = match *cidr {
            Cidr::V4 { addr, prefix_len } => {
                let mut trie: LpmTrie<&mut MapData, [u8; 4], AllowEntry> =
                    self.map(map_names::ALLOW_V4)?;
                trie.remove(&Key::new(u32::from(prefix_len), addr.octets()))
            }
            Cidr::V6 { addr, prefix_len } => {
                let mut trie: LpmTrie<&mut MapData, [u8; 16], AllowEntry> =
                    self.map(map_names::ALLOW_V6)?;
                trie.remove(&Key::new(u32::from(prefix_len), addr.octets()))
            }
        };
        match result {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
            Err(error) => {
                return Err(error).with_context(|| format!("removing {cidr} from the allowlist"));
            }
        }
        // Bits after the trie: they are cleared only once no prefix touches their block.
        let (fam, addr, len) = block_key(cidr);
        self.fast_path.remove(fam, addr, len);
        Ok(())
    }

    /// Turns the allowlist fast path on (the default) or off. Off fills the kernel bitmaps with
    /// ones, so every protected SYN costs a trie lookup: verdicts are the same either way, only
    /// the cost differs (the benchmark measures both).
    pub fn set_fast_path(&mut self, enabled: bool) -> anyhow::Result<()> {
        self.fast_path.set_enabled(enabled);
        Ok(())
    }

    /// Checks that the kernel's fast-path bitmaps are exactly what the tries' contents imply
    /// (all ones when the fast path is off). For tests; reads every bitmap whole.
    pub fn verify_fast_path(&self) -> anyhow::Result<()> {
        let prefixes: Vec<(Fam, u128, u8)> = self.allowlist()?.iter().map(block_key).collect();
        self.fast_path.verify(&prefixes)
    }

    /// Makes the allowlist exactly `wanted`: adds what is new first, then removes what is gone,
    /// so an address present before and after is never missing in between.
    pub fn sync_allowlist(&mut self, wanted: &BTreeSet<Cidr>) -> anyhow::Result<AllowlistChange> {
        let current = self.allowlist()?;
        let change = AllowlistChange {
            added: wanted.difference(&current).copied().collect(),
            removed: current.difference(wanted).copied().collect(),
        };
        for cidr in &change.added {
            self.allow(cidr)?;
        }
        for cidr in &change.removed {
            self.disallow(cidr)?;
        }
        Ok(change)
    }

    /// The prefixes in the allowlist, read back from both tries.
    pub fn allowlist(&self) -> anyhow::Result<BTreeSet<Cidr>> {
        read_allowlist(
            self.raw_map(map_names::ALLOW_V4)?,
            self.raw_map(map_names::ALLOW_V6)?,
        )
    }

    /// Takes the drop-sample ring buffer out of the object (one reader: the daemon).
    pub fn take_drop_samples(&mut self) -> anyhow::Result<aya::maps::RingBuf<MapData>> {
        let map = self
            .ebpf
            .take_map(map_names::DROP_SAMPLES)
            .ok_or_else(|| anyhow!("BPF object has no map {}", map_names::DROP_SAMPLES))?;
        aya::maps::RingBuf::try_from(map).context("DROP_SAMPLES is not a ring buffer")
    }

    /// Adds sampled drops to the `DROPPED_SOURCES` tally.
    pub fn tally_drop_samples(
        &mut self,
        samples: &[filter_common::DropSample],
    ) -> anyhow::Result<()> {
        let map = self
            .ebpf
            .map_mut(map_names::DROPPED_SOURCES)
            .ok_or_else(|| anyhow!("BPF object has no map {}", map_names::DROPPED_SOURCES))?;
        crate::samples::tally(map, samples)
    }

    /// The sources sampled most often.
    pub fn top_dropped_sources(
        &self,
        limit: usize,
    ) -> anyhow::Result<Vec<(std::net::IpAddr, filter_common::DroppedSource)>> {
        crate::samples::top_sources(self.raw_map(map_names::DROPPED_SOURCES)?, limit)
    }

    /// Counters summed over all CPUs.
    pub fn counters(&self) -> anyhow::Result<Counters> {
        read_counters(self.raw_map(map_names::COUNTERS)?)
    }

    /// Attaches to `iface`, owned by this filter (unpinned). `Auto` tries native first and
    /// falls back to generic.
    pub fn attach(&mut self, iface: &str, mode: AttachMode) -> anyhow::Result<AttachedMode> {
        let (link, attached) = self.attach_link(iface, mode)?;
        self.attachments.push(Attachment {
            iface: iface.to_owned(),
            mode: attached,
            handle: LinkHandle::Owned(link),
        });
        Ok(attached)
    }

    fn attach_link(
        &mut self,
        iface: &str,
        mode: AttachMode,
    ) -> anyhow::Result<(XdpLinkId, AttachedMode)> {
        let program = self.program_mut()?;
        Ok(match mode {
            AttachMode::Native => (
                program.attach(iface, XdpMode::Driver)?,
                AttachedMode::Native,
            ),
            AttachMode::Generic => (program.attach(iface, XdpMode::Skb)?, AttachedMode::Generic),
            AttachMode::Auto => match program.attach(iface, XdpMode::Driver) {
                Ok(link) => (link, AttachedMode::Native),
                Err(native_error) => {
                    tracing::info!(iface, error = %native_error, "native XDP unavailable, trying generic");
                    (program.attach(iface, XdpMode::Skb)?, AttachedMode::Generic)
                }
            },
        })
    }

    /// Attaches to `iface` through a link pinned on bpffs, so the filter stays when the daemon
    /// stops. An existing pinned link for `iface` (this layout or an older one) is taken over
    /// with an atomic program replacement (BPF_LINK_UPDATE): the interface is never unfiltered.
    pub fn attach_pinned(
        &mut self,
        iface: &str,
        mode: AttachMode,
    ) -> anyhow::Result<(AttachedMode, AttachOutcome)> {
        let pins = self
            .pins
            .clone()
            .context("attach_pinned needs a filter loaded with load_pinned")?;
        let existing = pins
            .links()?
            .into_iter()
            .filter(|link| link.iface == iface)
            .max_by_key(|link| link.version);
        let Some(existing) = existing else {
            let (link_id, attached) = self.attach_link(iface, mode)?;
            let link: FdLink = self
                .program_mut()?
                .take_link(link_id)?
                .try_into()
                .context("XDP link is not a bpf_link")?;
            let path = pins.link_path(iface, attached);
            let link = link
                .pin(&path)
                .with_context(|| format!("pinning the XDP link at {}", path.display()))?;
            self.attachments.push(Attachment {
                iface: iface.to_owned(),
                mode: attached,
                handle: LinkHandle::Pinned {
                    link: link.into(),
                    path,
                },
            });
            return Ok((attached, AttachOutcome::Attached));
        };

        if !matches!(
            (mode, existing.mode),
            (AttachMode::Auto, _)
                | (AttachMode::Native, AttachedMode::Native)
                | (AttachMode::Generic, AttachedMode::Generic)
        ) {
            bail!(
                "{iface} is already filtered in {} mode (pinned at {}); changing to {mode:?} needs `mxguard detach --iface {iface}` first",
                existing.mode,
                existing.path.display()
            );
        }
        let pinned = PinnedLink::from_pin(&existing.path)
            .with_context(|| format!("opening the pinned XDP link {}", existing.path.display()))?;
        let link =
            XdpLink::try_from(FdLink::from(pinned)).context("pinned link is not an XDP link")?;
        let program = self.program_mut()?;
        let link_id = program
            .attach_to_link(link)
            .with_context(|| format!("replacing the program on {iface} (BPF_LINK_UPDATE)"))?;
        let link: FdLink = program
            .take_link(link_id)?
            .try_into()
            .context("XDP link is not a bpf_link")?;

        let outcome = if existing.version == LAYOUT_VERSION {
            AttachOutcome::Adopted
        } else {
            // Pin under the current layout first, then drop the old pin: the link is never unpinned.
            let path = pins.link_path(iface, existing.mode);
            let link = link
                .pin(&path)
                .with_context(|| format!("pinning the XDP link at {}", path.display()))?;
            std::fs::remove_file(&existing.path)
                .with_context(|| format!("removing {}", existing.path.display()))?;
            pins.remove_version_if_unused(existing.version)?;
            self.attachments.push(Attachment {
                iface: iface.to_owned(),
                mode: existing.mode,
                handle: LinkHandle::Pinned {
                    link: link.into(),
                    path,
                },
            });
            return Ok((
                existing.mode,
                AttachOutcome::Upgraded {
                    from_version: existing.version,
                },
            ));
        };
        self.attachments.push(Attachment {
            iface: iface.to_owned(),
            mode: existing.mode,
            handle: LinkHandle::Pinned {
                link,
                path: existing.path,
            },
        });
        Ok((existing.mode, outcome))
    }

    /// Attaches to every interface, or to none: on a failure the ones attached by this call are
    /// detached again before the error is returned (adopted ones are left as they were).
    pub fn attach_all(
        &mut self,
        ifaces: &[String],
        mode: AttachMode,
    ) -> anyhow::Result<Vec<AttachedMode>> {
        let mut modes = Vec::new();
        for iface in ifaces {
            match self.attach(iface, mode) {
                Ok(attached) => modes.push(attached),
                Err(error) => {
                    self.detach_all();
                    return Err(error.context(format!("attaching XDP ({mode:?}) to {iface}")));
                }
            }
        }
        Ok(modes)
    }

    /// Pinned counterpart of [`Filter::attach_all`]: all or nothing for fresh attachments.
    pub fn attach_all_pinned(
        &mut self,
        ifaces: &[String],
        mode: AttachMode,
    ) -> anyhow::Result<Vec<(AttachedMode, AttachOutcome)>> {
        let mut results = Vec::new();
        for iface in ifaces {
            match self.attach_pinned(iface, mode) {
                Ok(result) => results.push(result),
                Err(error) => {
                    // Undo what this call attached fresh; adopted links keep filtering.
                    let fresh: Vec<String> = ifaces
                        .iter()
                        .zip(&results)
                        .filter(|(_, (_, outcome))| *outcome == AttachOutcome::Attached)
                        .map(|(iface, _)| iface.clone())
                        .collect();
                    self.detach(|name| fresh.iter().any(|f| f == name));
                    return Err(error.context(format!("attaching XDP ({mode:?}) to {iface}")));
                }
            }
        }
        Ok(results)
    }

    /// Detaches from every interface this filter holds, pinned or not.
    pub fn detach_all(&mut self) {
        self.detach(|_| true);
    }

    fn detach(&mut self, which: impl Fn(&str) -> bool) {
        let (gone, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.attachments)
            .into_iter()
            .partition(|a| which(&a.iface));
        self.attachments = kept;
        for attachment in gone {
            let result = match attachment.handle {
                LinkHandle::Owned(link) => self.program_mut().and_then(|p| Ok(p.detach(link)?)),
                // Dropping our fd after the pin goes releases the last reference: detached.
                LinkHandle::Pinned { link, path } => {
                    let result = std::fs::remove_file(&path)
                        .with_context(|| format!("removing {}", path.display()));
                    drop(link);
                    result
                }
            };
            match result {
                Ok(()) => tracing::info!(iface = attachment.iface, "detached XDP filter"),
                Err(error) => {
                    tracing::warn!(iface = attachment.iface, "detaching XDP failed: {error:#}")
                }
            }
        }
        if let Some(pins) = &self.pins
            && self.attachments.is_empty()
            && let Err(error) = pins.remove_version_if_unused(LAYOUT_VERSION)
        {
            tracing::warn!("removing unused pins failed: {error:#}");
        }
    }

    pub fn attachments(&self) -> impl Iterator<Item = (&str, AttachedMode)> {
        self.attachments.iter().map(|a| (a.iface.as_str(), a.mode))
    }

    fn raw_map(&self, name: &str) -> anyhow::Result<&Map> {
        self.ebpf
            .map(name)
            .ok_or_else(|| anyhow!("BPF object has no map {name}"))
    }

    fn map<'a, T>(&'a mut self, name: &str) -> anyhow::Result<T>
    where
        T: TryFrom<&'a mut aya::maps::Map, Error = aya::maps::MapError>,
    {
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or_else(|| anyhow!("BPF object has no map {name}"))?;
        T::try_from(map).with_context(|| format!("map {name} has an unexpected type or layout"))
    }
}

impl Drop for Filter {
    fn drop(&mut self) {
        // Owned links go with the program anyway; pinned ones are meant to stay.
        let owned: Vec<String> = self
            .attachments
            .iter()
            .filter(|a| matches!(a.handle, LinkHandle::Owned(_)))
            .map(|a| a.iface.clone())
            .collect();
        if !owned.is_empty() {
            self.detach(|iface| owned.iter().any(|o| o == iface));
        }
    }
}

/// The family, address bits and length of a prefix, as the block bitmaps index them. The IPv6
/// trie may hold an IPv4-mapped prefix (see `allowlist`); it goes into the IPv6 bitmap with it.
fn block_key(cidr: &Cidr) -> (Fam, u128, u8) {
    match *cidr {
        // Masked, in case a prefix was built by hand with host bits set: the trie ignores them.
        Cidr::V4 { addr, prefix_len } => {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(prefix_len))
                .unwrap_or(0);
            (Fam::V4, u128::from(addr.to_bits() & mask), prefix_len)
        }
        Cidr::V6 { addr, prefix_len } => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(prefix_len))
                .unwrap_or(0);
            (Fam::V6, addr.to_bits() & mask, prefix_len)
        }
    }
}

/// The protected ports in a `PORTS` map.
pub fn read_ports(map: &Map) -> anyhow::Result<BTreeSet<u16>> {
    let map: Array<&MapData, PortFlag> =
        map.try_into().context("PORTS has an unexpected layout")?;
    let mut ports = BTreeSet::new();
    for (index, flag) in map.iter().enumerate() {
        if flag.context("reading the port map")? == PORT_PROTECTED {
            ports.insert(u16::try_from(index).context("port index out of range")?);
        }
    }
    Ok(ports)
}

/// The action in a `CONFIG` map.
pub fn read_action(map: &Map) -> anyhow::Result<Action> {
    let map: Array<&MapData, Config> = map.try_into().context("CONFIG has an unexpected layout")?;
    Ok(Action::from_raw(
        map.get(&0, 0).context("reading the action")?.action,
    ))
}

/// The prefixes in the two allowlist tries.
pub fn read_allowlist(v4: &Map, v6: &Map) -> anyhow::Result<BTreeSet<Cidr>> {
    let mut set = BTreeSet::new();
    let v4: LpmTrie<&MapData, [u8; 4], AllowEntry> =
        v4.try_into().context("ALLOW_V4 has an unexpected layout")?;
    for key in v4.keys() {
        let key = key.context("reading the IPv4 allowlist")?;
        set.insert(Cidr::new(
            key.data().into(),
            u8::try_from(key.prefix_len())?,
        )?);
    }
    let v6: LpmTrie<&MapData, [u8; 16], AllowEntry> =
        v6.try_into().context("ALLOW_V6 has an unexpected layout")?;
    for key in v6.keys() {
        let key = key.context("reading the IPv6 allowlist")?;
        let addr = std::net::Ipv6Addr::from(key.data());
        let prefix_len = u8::try_from(key.prefix_len())?;
        // Not Cidr::new: an IPv4-mapped entry in the v6 trie must be listed as it is.
        set.insert(Cidr::V6 { addr, prefix_len });
    }
    Ok(set)
}

/// Counters of a `COUNTERS` map, summed over all CPUs.
pub fn read_counters(map: &Map) -> anyhow::Result<Counters> {
    let map: PerCpuArray<&MapData, FamilyCounters> = map
        .try_into()
        .context("COUNTERS has an unexpected layout")?;
    let mut counters = Counters::default();
    for family in Family::ALL {
        let per_cpu = map.get(&(family as u32), 0).context("reading counters")?;
        for row in per_cpu.iter() {
            counters.0[family as usize].add(row);
        }
    }
    Ok(counters)
}

/// What [`Filter::sync_allowlist`] changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllowlistChange {
    pub added: Vec<Cidr>,
    pub removed: Vec<Cidr>,
}

impl AllowlistChange {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty()
    }
}

/// Checks an interface name against the kernel before anything is attached.
pub fn interface_index(iface: &str) -> anyhow::Result<u32> {
    nix::net::if_::if_nametoindex(iface)
        .map_err(|errno| anyhow!("unknown interface {iface:?} ({errno}; see `ip link`)"))
}
