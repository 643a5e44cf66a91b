//! The loaded XDP program and its maps: load, fill, attach, read counters.

use std::collections::BTreeSet;

use anyhow::{Context as _, anyhow};
use aya::{
    Ebpf,
    maps::{Array, LpmTrie, MapData, PerCpuArray, lpm_trie::Key},
    programs::{Xdp, XdpMode, xdp::XdpLinkId},
};
use filter_common::{
    Action, AllowEntry, BLOCK_PREFIX_LEN, BLOCK_WORDS, Config, Family, FamilyCounters, PORT_OPEN,
    PORT_PROTECTED, PROGRAM_NAME, PortFlag, SUMMARY_PREFIX_LEN, SUMMARY_WORDS, map_names,
};

use crate::{
    BPF_OBJECT,
    cidr::Cidr,
    fast_path::{Fam, FastPath, MappedBitmap},
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

/// The loaded program with its maps. Dropping it detaches from every interface.
pub struct Filter {
    ebpf: Ebpf,
    attachments: Vec<(String, XdpLinkId, AttachedMode)>,
    /// The allowlist fast path's bitmaps (see `fast_path`), kept in step with the tries by
    /// `allow` and `disallow`.
    fast_path: FastPath,
}

impl Filter {
    /// Loads the embedded program into the kernel (this runs the verifier) with an empty
    /// allowlist, no protected ports and the `Drop` action. Nothing is attached yet.
    pub fn load() -> anyhow::Result<Self> {
        let mut ebpf = Ebpf::load(BPF_OBJECT).context("loading the BPF object")?;
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
            fast_path: FastPath::new(levels),
        };
        filter.set_action(Action::Drop)?;
        // The bitmaps start zeroed, matching the empty tries of a fresh load.
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
        let map: Array<&MapData, PortFlag> = self.map_ref(map_names::PORTS)?;
        let mut ports = BTreeSet::new();
        for (index, flag) in map.iter().enumerate() {
            if flag.context("reading the port map")? == PORT_PROTECTED {
                ports.insert(u16::try_from(index).context("port index out of range")?);
            }
        }
        Ok(ports)
    }

    pub fn set_action(&mut self, action: Action) -> anyhow::Result<()> {
        let mut map: Array<&mut MapData, Config> = self.map(map_names::CONFIG)?;
        map.set(
            0,
            Config {
                action: action as u32,
            },
            0,
        )
        .context("writing the action")
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
        let mut set = BTreeSet::new();
        let v4: LpmTrie<&MapData, [u8; 4], AllowEntry> = self.map_ref(map_names::ALLOW_V4)?;
        for key in v4.keys() {
            let key = key.context("reading the IPv4 allowlist")?;
            set.insert(Cidr::new(
                key.data().into(),
                u8::try_from(key.prefix_len())?,
            )?);
        }
        let v6: LpmTrie<&MapData, [u8; 16], AllowEntry> = self.map_ref(map_names::ALLOW_V6)?;
        for key in v6.keys() {
            let key = key.context("reading the IPv6 allowlist")?;
            let addr = std::net::Ipv6Addr::from(key.data());
            let prefix_len = u8::try_from(key.prefix_len())?;
            // Not Cidr::new: an IPv4-mapped entry in the v6 trie must be listed as it is.
            set.insert(Cidr::V6 { addr, prefix_len });
        }
        Ok(set)
    }

    /// Counters summed over all CPUs.
    pub fn counters(&self) -> anyhow::Result<Counters> {
        let map: PerCpuArray<&MapData, FamilyCounters> = self.map_ref(map_names::COUNTERS)?;
        let mut counters = Counters::default();
        for family in Family::ALL {
            let per_cpu = map.get(&(family as u32), 0).context("reading counters")?;
            for row in per_cpu.iter() {
                counters.0[family as usize].add(row);
            }
        }
        Ok(counters)
    }

    /// Attaches to `iface`. `Auto` tries native first and falls back to generic.
    pub fn attach(&mut self, iface: &str, mode: AttachMode) -> anyhow::Result<AttachedMode> {
        let program = self.program_mut()?;
        let (link, attached) = match mode {
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
        };
        self.attachments.push((iface.to_owned(), link, attached));
        Ok(attached)
    }

    /// Attaches to every interface, or to none: on a failure the ones already attached are
    /// detached again before the error is returned.
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

    /// Detaches from every interface this filter attached to.
    pub fn detach_all(&mut self) {
        let attachments = std::mem::take(&mut self.attachments);
        if let Ok(program) = self.program_mut() {
            for (iface, link, _) in attachments {
                if let Err(error) = program.detach(link) {
                    tracing::warn!(iface, %error, "detaching XDP failed");
                }
            }
        }
    }

    pub fn attachments(&self) -> impl Iterator<Item = (&str, AttachedMode)> {
        self.attachments
            .iter()
            .map(|(iface, _, mode)| (iface.as_str(), *mode))
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

    fn map_ref<'a, T>(&'a self, name: &str) -> anyhow::Result<T>
    where
        T: TryFrom<&'a aya::maps::Map, Error = aya::maps::MapError>,
    {
        let map = self
            .ebpf
            .map(name)
            .ok_or_else(|| anyhow!("BPF object has no map {name}"))?;
        T::try_from(map).with_context(|| format!("map {name} has an unexpected type or layout"))
    }
}

impl Drop for Filter {
    fn drop(&mut self) {
        self.detach_all();
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
