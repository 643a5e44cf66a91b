//! Where the filter is attached and how it outlives the daemon: the XDP links, and their
//! layout on bpffs (attach, adopt, upgrade, detach).
//!
//! Layout under the pin directory (default `/sys/fs/bpf/mxguard`):
//!
//! ```text
//! v1/maps/<MAP>              every map, shared by all interfaces (filter_common::map_names::ALL)
//! v1/links/<iface>@<mode>    one pinned XDP link per interface
//! ```
//!
//! The `v1` directory is the layout version: a daemon only reuses maps of its own layout (aya
//! does not check key and value sizes when it reuses a pin). A link pinned under an older
//! layout is taken over without a gap ([`Links::attach_pinned`]).

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use aya::programs::{
    Xdp, XdpMode,
    links::{FdLink, PinnedLink},
    xdp::XdpLink,
};

/// How to attach to an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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

impl AttachedMode {
    /// The name used in link pin names, logs and `status`.
    pub const fn name(self) -> &'static str {
        match self {
            AttachedMode::Native => "native",
            AttachedMode::Generic => "generic",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        [AttachedMode::Native, AttachedMode::Generic]
            .into_iter()
            .find(|mode| mode.name() == name)
    }
}

impl std::fmt::Display for AttachedMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What [`Links::attach_pinned`] did for an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachOutcome {
    /// No filter was there: attached fresh.
    Attached,
    /// A filter of this layout was there: its link now runs this program (no gap).
    Adopted,
    /// A filter of an older pin layout was there: replaced in place (no gap), old pins removed.
    Upgraded { from_version: u32 },
}

/// How an attachment is held.
enum LinkHandle {
    /// Owned by this process: dropping it detaches.
    Owned(XdpLink),
    /// Pinned on bpffs: survives the daemon; removing the pin (and this fd) detaches.
    Pinned { link: FdLink, path: PathBuf },
}

struct Attachment {
    iface: String,
    handle: LinkHandle,
}

/// The attachments this process holds. Owned ones end when this is dropped; pinned ones stay
/// until [`Links::detach_all`] or `mxguard detach`.
pub struct Links {
    pins: Option<PinDir>,
    attachments: Vec<Attachment>,
}

impl Links {
    /// Links owned by this process only (tests, benchmarks).
    pub fn owned() -> Self {
        Links {
            pins: None,
            attachments: Vec::new(),
        }
    }

    /// Links pinned under `pins` (the daemon).
    pub fn pinned(pins: PinDir) -> Self {
        Links {
            pins: Some(pins),
            attachments: Vec::new(),
        }
    }

    /// Attaches `program` to `iface`, owned by this process (unpinned). `Auto` tries native
    /// first and falls back to generic.
    pub fn attach(
        &mut self,
        program: &mut Xdp,
        iface: &str,
        mode: AttachMode,
    ) -> anyhow::Result<AttachedMode> {
        let (link, attached) = attach_link(program, iface, mode)?;
        self.attachments.push(Attachment {
            iface: iface.to_owned(),
            handle: LinkHandle::Owned(link),
        });
        Ok(attached)
    }

    /// Attaches to `iface` through a link pinned on bpffs, so the filter stays when the daemon
    /// stops. An existing pinned link for `iface` (this layout or an older one) is taken over
    /// with an atomic program replacement (BPF_LINK_UPDATE): the interface is never unfiltered.
    pub fn attach_pinned(
        &mut self,
        program: &mut Xdp,
        iface: &str,
        mode: AttachMode,
    ) -> anyhow::Result<(AttachedMode, AttachOutcome)> {
        let pins = self
            .pins
            .clone()
            .context("attach_pinned needs links made with Links::pinned")?;
        let existing = pins
            .links()?
            .into_iter()
            .filter(|link| link.iface == iface)
            .max_by_key(|link| link.version);
        // A link whose device was deleted stays pinned but filters nothing (and cannot be
        // updated): the interface was re-created while no daemon watched it.
        let existing = match existing {
            Some(existing) if matches!(pinned_link_ifindex(&existing.path), Ok(0)) => {
                tracing::warn!(
                    iface,
                    pin = %existing.path.display(),
                    "the pinned XDP link lost its interface (deleted or re-created): attaching afresh"
                );
                remove_dead_pins(&pins, iface)?;
                None
            }
            existing => existing,
        };
        let Some(existing) = existing else {
            let (link, attached) = attach_link(program, iface, mode)?;
            let link = FdLink::try_from(link).context("XDP link is not a bpf_link")?;
            let path = pins.link_path(iface, attached);
            self.hold_pinned(iface, link, path)?;
            return Ok((attached, AttachOutcome::Attached));
        };

        check_mode(iface, mode, &existing)?;
        let pinned = PinnedLink::from_pin(&existing.path)
            .with_context(|| format!("opening the pinned XDP link {}", existing.path.display()))?;
        let link =
            XdpLink::try_from(FdLink::from(pinned)).context("pinned link is not an XDP link")?;
        let link_id = program
            .attach_to_link(link)
            .with_context(|| format!("replacing the program on {iface} (BPF_LINK_UPDATE)"))?;
        let link: FdLink = program
            .take_link(link_id)?
            .try_into()
            .context("XDP link is not a bpf_link")?;

        if existing.version == LAYOUT_VERSION {
            self.attachments.push(Attachment {
                iface: iface.to_owned(),
                handle: LinkHandle::Pinned {
                    link,
                    path: existing.path,
                },
            });
            return Ok((existing.mode, AttachOutcome::Adopted));
        }
        // Pin under the current layout first, then drop the old pin: the link is never unpinned.
        self.hold_pinned(iface, link, pins.link_path(iface, existing.mode))?;
        std::fs::remove_file(&existing.path)
            .with_context(|| format!("removing {}", existing.path.display()))?;
        pins.remove_version_if_unused(existing.version)?;
        Ok((
            existing.mode,
            AttachOutcome::Upgraded {
                from_version: existing.version,
            },
        ))
    }

    fn hold_pinned(&mut self, iface: &str, link: FdLink, path: PathBuf) -> anyhow::Result<()> {
        let link = link
            .pin(&path)
            .with_context(|| format!("pinning the XDP link at {}", path.display()))?;
        self.attachments.push(Attachment {
            iface: iface.to_owned(),
            handle: LinkHandle::Pinned {
                link: link.into(),
                path,
            },
        });
        Ok(())
    }

    /// Attaches `iface` afresh after its device was re-created: a new link, pinned under the
    /// current layout in place of the dead one. What was held for `iface` is dropped; nothing
    /// changes if the attach fails.
    pub fn reattach_pinned(
        &mut self,
        program: &mut Xdp,
        iface: &str,
        mode: AttachMode,
    ) -> anyhow::Result<AttachedMode> {
        let pins = self
            .pins
            .clone()
            .context("reattach_pinned needs links made with Links::pinned")?;
        let (link, attached) = attach_link(program, iface, mode)?;
        let link = FdLink::try_from(link).context("XDP link is not a bpf_link")?;
        let (_dead, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.attachments)
            .into_iter()
            .partition(|a| a.iface == iface);
        self.attachments = kept;
        for pinned in pins.links()?.into_iter().filter(|link| link.iface == iface) {
            match std::fs::remove_file(&pinned.path) {
                Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                    return Err(error)
                        .with_context(|| format!("removing {}", pinned.path.display()));
                }
                _ => {}
            }
            if pinned.version != LAYOUT_VERSION {
                pins.remove_version_if_unused(pinned.version)?;
            }
        }
        self.hold_pinned(iface, link, pins.link_path(iface, attached))?;
        Ok(attached)
    }

    /// The ifindex `iface`'s held pinned link is attached to: 0 once its device is gone; `None`
    /// when nothing pinned is held for it or the kernel does not say.
    pub fn link_ifindex(&self, iface: &str) -> Option<u32> {
        self.attachments
            .iter()
            .rev()
            .find(|a| a.iface == iface)
            .and_then(|a| match &a.handle {
                LinkHandle::Pinned { link, .. } => xdp_link_ifindex(link).ok(),
                LinkHandle::Owned(_) => None,
            })
    }

    /// Refuses, before anything is written, a start whose mode differs from a live pinned
    /// link's on one of `ifaces`: the attach would fail after the maps (which that link's
    /// program reads) had already been changed.
    pub fn check_pinned_modes(&self, ifaces: &[String], mode: AttachMode) -> anyhow::Result<()> {
        let Some(pins) = &self.pins else {
            return Ok(());
        };
        let links = pins.links()?;
        for iface in ifaces {
            let existing = links
                .iter()
                .filter(|link| &link.iface == iface)
                .max_by_key(|link| link.version);
            if let Some(existing) = existing
                && !matches!(pinned_link_ifindex(&existing.path), Ok(0))
            {
                check_mode(iface, mode, existing)?;
            }
        }
        Ok(())
    }

    /// Attaches to every interface through pinned links, all or nothing for fresh attachments:
    /// on a failure the ones this call attached fresh are detached again (adopted links keep
    /// filtering) before the error is returned.
    pub fn attach_all_pinned(
        &mut self,
        program: &mut Xdp,
        ifaces: &[String],
        mode: AttachMode,
    ) -> anyhow::Result<Vec<(AttachedMode, AttachOutcome)>> {
        let mut results = Vec::new();
        for iface in ifaces {
            match self.attach_pinned(program, iface, mode) {
                Ok(result) => results.push(result),
                Err(error) => {
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

    /// Detaches from every interface this process holds, pinned or not.
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
                LinkHandle::Owned(link) => {
                    drop(link);
                    Ok(())
                }
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
}

fn attach_link(
    program: &mut Xdp,
    iface: &str,
    mode: AttachMode,
) -> anyhow::Result<(XdpLink, AttachedMode)> {
    let (link_id, attached) = match mode {
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
    Ok((program.take_link(link_id)?, attached))
}

/// Removes every pinned link of `iface` whose device is gone (all layouts), and the older
/// layouts that leaves without links.
fn remove_dead_pins(pins: &PinDir, iface: &str) -> anyhow::Result<()> {
    for pinned in pins.links()?.into_iter().filter(|link| link.iface == iface) {
        if pinned_link_ifindex(&pinned.path)? != 0 {
            continue;
        }
        std::fs::remove_file(&pinned.path)
            .with_context(|| format!("removing {}", pinned.path.display()))?;
        if pinned.version != LAYOUT_VERSION {
            pins.remove_version_if_unused(pinned.version)?;
        }
    }
    Ok(())
}

/// The ifindex the XDP link pinned at `path` is attached to; 0 once its device is gone.
pub fn pinned_link_ifindex(path: &Path) -> anyhow::Result<u32> {
    let pinned = PinnedLink::from_pin(path)
        .with_context(|| format!("opening the pinned XDP link {}", path.display()))?;
    xdp_link_ifindex(&FdLink::from(pinned))
        .with_context(|| format!("reading the pinned XDP link {}", path.display()))
}

/// The ifindex an XDP link is attached to (0 once its device is gone). aya does not expose
/// the link's fd nor the XDP part of its info, so it comes from the fd's `fdinfo`, found by
/// link id.
fn xdp_link_ifindex(link: &FdLink) -> anyhow::Result<u32> {
    let id = link.info().context("reading the link's info")?.id();
    let wanted = format!("link_id:\t{id}");
    for entry in std::fs::read_dir("/proc/self/fdinfo").context("reading /proc/self/fdinfo")? {
        let Ok(text) = std::fs::read_to_string(entry?.path()) else {
            continue;
        };
        if !text.lines().any(|line| line == wanted) {
            continue;
        }
        return text
            .lines()
            .find_map(|line| line.strip_prefix("ifindex:"))
            .and_then(|value| value.trim().parse().ok())
            .with_context(|| format!("link {id} has no ifindex in its fdinfo (not XDP?)"));
    }
    bail!("no fd of this process holds link {id}")
}

/// Removes pinned links (all, or `iface`'s) and, once no link is left, the maps: what
/// `mxguard detach` does, daemon stopped.
pub fn detach_pinned(pins: &PinDir, iface: Option<&str>) -> anyhow::Result<Vec<String>> {
    let links = pins.links()?;
    let chosen: Vec<_> = links
        .iter()
        .filter(|link| iface.is_none_or(|i| i == link.iface))
        .collect();
    if chosen.is_empty() {
        match iface {
            Some(iface) => bail!(
                "no mxguard filter is pinned for {iface} under {}",
                pins.root().display()
            ),
            None if pins.versions()?.is_empty() => {
                bail!("nothing is pinned under {}", pins.root().display())
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

/// Detaches interfaces pinned by an earlier run that are no longer configured, and removes
/// older layouts left without links, so the running configuration is what filters.
pub fn detach_unconfigured(pins: &PinDir, ifaces: &[String]) {
    let links = match pins.links() {
        Ok(links) => links,
        Err(error) => return tracing::warn!("listing pinned links failed: {error:#}"),
    };
    for link in links.iter().filter(|link| !ifaces.contains(&link.iface)) {
        match std::fs::remove_file(&link.path) {
            Ok(()) => {
                tracing::info!(iface = %link.iface, "detached XDP filter: interface no longer configured")
            }
            Err(error) => tracing::warn!(iface = %link.iface, "detaching failed: {error}"),
        }
    }
    let versions: std::collections::BTreeSet<u32> = links.iter().map(|link| link.version).collect();
    for version in versions {
        if version != LAYOUT_VERSION
            && let Err(error) = pins.remove_version_if_unused(version)
        {
            tracing::warn!("removing old pins failed: {error:#}");
        }
    }
}

/// Checks an interface name against the kernel before anything is attached.
pub fn interface_index(iface: &str) -> anyhow::Result<u32> {
    nix::net::if_::if_nametoindex(iface)
        .map_err(|errno| anyhow::anyhow!("unknown interface {iface:?} ({errno}; see `ip link`)"))
}

/// Bumped whenever a map's key, value, size or meaning changes.
pub const LAYOUT_VERSION: u32 = 1;

/// `statfs` magic of bpffs.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/mxguard";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinDir {
    root: PathBuf,
}

/// A pinned XDP link found on bpffs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinnedLinkEntry {
    pub iface: String,
    pub mode: AttachedMode,
    pub path: PathBuf,
    /// The layout version directory it was found in.
    pub version: u32,
}

impl PinDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        PinDir { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn version_dir(&self, version: u32) -> PathBuf {
        self.root.join(format!("v{version}"))
    }

    pub fn map_path(&self, name: &str) -> PathBuf {
        self.version_dir(LAYOUT_VERSION).join("maps").join(name)
    }

    pub fn link_path(&self, iface: &str, mode: AttachedMode) -> PathBuf {
        self.version_dir(LAYOUT_VERSION)
            .join("links")
            .join(format!("{iface}@{mode}"))
    }

    /// Creates the current layout's directories.
    pub fn create(&self) -> anyhow::Result<()> {
        for dir in ["maps", "links"] {
            let path = self.version_dir(LAYOUT_VERSION).join(dir);
            std::fs::create_dir_all(&path)
                .with_context(|| format!("creating {}", path.display()))?;
        }
        Ok(())
    }

    /// Layout versions present on bpffs, current one included.
    pub fn versions(&self) -> anyhow::Result<Vec<u32>> {
        let entries = match std::fs::read_dir(&self.root) {
            Ok(entries) => entries,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(error) => {
                return Err(error).with_context(|| format!("reading {}", self.root.display()));
            }
        };
        let mut versions = Vec::new();
        for entry in entries {
            let name = entry?.file_name();
            if let Some(version) = name
                .to_str()
                .and_then(|n| n.strip_prefix('v'))
                .and_then(|v| v.parse().ok())
            {
                versions.push(version);
            }
        }
        versions.sort_unstable();
        Ok(versions)
    }

    /// Every pinned link, in every layout version.
    pub fn links(&self) -> anyhow::Result<Vec<PinnedLinkEntry>> {
        let mut links = Vec::new();
        for version in self.versions()? {
            let dir = self.version_dir(version).join("links");
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries {
                let entry = entry?;
                let name = entry.file_name().to_string_lossy().into_owned();
                let Some((iface, mode)) = name.rsplit_once('@') else {
                    continue;
                };
                let Some(mode) = AttachedMode::from_name(mode) else {
                    continue;
                };
                links.push(PinnedLinkEntry {
                    iface: iface.to_owned(),
                    mode,
                    path: entry.path(),
                    version,
                });
            }
        }
        Ok(links)
    }

    /// Removes a layout version's map pins and directories if it has no links left.
    /// Returns whether it was removed.
    pub fn remove_version_if_unused(&self, version: u32) -> anyhow::Result<bool> {
        let dir = self.version_dir(version);
        if self.links()?.iter().any(|link| link.version == version) {
            return Ok(false);
        }
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        }
        // The root goes too once nothing is left in it.
        if self.versions()?.is_empty() {
            let _ = std::fs::remove_dir(&self.root);
        }
        Ok(true)
    }

    /// Takes the pin directory for this daemon alone, for as long as the returned lock lives:
    /// two daemons on one directory would overwrite each other's maps. A second daemon gets an
    /// error naming the first.
    pub fn lock(&self) -> anyhow::Result<PinDirLock> {
        std::fs::create_dir_all(&self.root)
            .with_context(|| format!("creating {}", self.root.display()))?;
        let dir = std::fs::File::open(&self.root)
            .with_context(|| format!("opening {}", self.root.display()))?;
        match nix::fcntl::Flock::lock(dir, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Ok(PinDirLock { _lock: lock }),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                let holder = lock_holder(&self.root)
                    .map(|pid| format!("pid {pid}{}", process_summary(pid)))
                    .unwrap_or_else(|| "another process".to_owned());
                bail!(
                    "another mxguard daemon ({holder}) is running on pin directory {}: stop it \
                     first, or give this one its own --pin-dir",
                    self.root.display()
                )
            }
            Err((_, errno)) => {
                Err(errno).with_context(|| format!("locking {}", self.root.display()))
            }
        }
    }

    /// Whether the pins outlive this process: they do when the bpffs holding them is mounted in
    /// the init mount namespace too (the same superblock, at any path). Under `ip netns exec`,
    /// or in a unit with private mounts, a bpffs mounted from inside is private to this
    /// process's mount namespace, and the filter would end with the daemon.
    pub fn persistence(&self) -> anyhow::Result<PinPersistence> {
        // Not by comparing /proc/1/ns/mnt with our own: reading it needs ptrace rights on PID 1,
        // which sandboxes and hardened hosts refuse, while its mountinfo stays readable.
        use std::os::unix::fs::MetadataExt as _;
        let dev = std::fs::metadata(&self.root)
            .with_context(|| format!("reading {}", self.root.display()))?
            .dev();
        let wanted = format!(
            "{}:{}",
            nix::sys::stat::major(dev),
            nix::sys::stat::minor(dev)
        );
        let Ok(mounts) = std::fs::read_to_string("/proc/1/mountinfo") else {
            return Ok(PinPersistence::Unknown);
        };
        // `36 35 0:28 / /sys/fs/bpf rw,nosuid shared:9 - bpf bpf rw,mode=700`
        let visible = mounts.lines().any(|line| {
            let mut fields = line.split_whitespace();
            let device = fields.nth(2);
            let fs_type = line
                .split(" - ")
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next());
            device == Some(wanted.as_str()) && fs_type == Some("bpf")
        });
        Ok(if visible {
            PinPersistence::Host
        } else {
            PinPersistence::PrivateMountNamespace
        })
    }

    /// Makes sure the pin directory is on bpffs, mounting bpffs on /sys/fs/bpf when that is
    /// where it should be and nothing is mounted there yet.
    pub fn ensure_bpffs(&self) -> anyhow::Result<()> {
        let existing = self
            .root
            .ancestors()
            .find(|p| p.exists())
            .unwrap_or(Path::new("/"));
        if is_bpffs(existing)? {
            return Ok(());
        }
        let sys_bpf = Path::new("/sys/fs/bpf");
        if self.root.starts_with(sys_bpf) && existing.starts_with(sys_bpf) {
            tracing::info!("mounting bpffs on /sys/fs/bpf");
            nix::mount::mount(
                Some("bpf"),
                sys_bpf,
                Some("bpf"),
                nix::mount::MsFlags::empty(),
                None::<&str>,
            )
            .context("mounting bpffs on /sys/fs/bpf")?;
            return Ok(());
        }
        bail!(
            "pin directory {} is not on a bpffs (mount one with `mount -t bpf bpf DIR`)",
            self.root.display()
        )
    }
}

/// Whether pinned objects outlive the process that pinned them (see [`PinDir::persistence`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PinPersistence {
    /// The bpffs is mounted where the init mount namespace sees it: pins stay.
    Host,
    /// The bpffs exists only in this process's mount namespace: pins end with it.
    PrivateMountNamespace,
    /// The init mount namespace could not be inspected.
    Unknown,
}

/// Held by the daemon while it runs: an exclusive `flock` on the pin directory, released when
/// the process ends however it ends.
pub struct PinDirLock {
    _lock: nix::fcntl::Flock<std::fs::File>,
}

/// The process holding a `flock` on `path`, from /proc/locks (which names lock holders by
/// device and inode).
fn lock_holder(path: &Path) -> Option<u32> {
    use std::os::unix::fs::MetadataExt as _;
    let metadata = std::fs::metadata(path).ok()?;
    let dev = metadata.dev();
    let (major, minor) = (nix::sys::stat::major(dev), nix::sys::stat::minor(dev));
    let wanted = format!("{major:02x}:{minor:02x}:{}", metadata.ino());
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    locks.lines().find_map(|line| {
        // `1: FLOCK  ADVISORY  WRITE 30644 00:28:156704 0 EOF`
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields.get(1) == Some(&"FLOCK") && fields.get(5) == Some(&wanted.as_str()))
            .then(|| fields.get(4)?.parse().ok())
            .flatten()
    })
}

/// `: <command line>` of a process, for naming it in an error.
fn process_summary(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .ok()
        .map(|raw| {
            let words: Vec<String> = raw
                .split(|&b| b == 0)
                .filter(|word| !word.is_empty())
                .map(|word| String::from_utf8_lossy(word).into_owned())
                .collect();
            format!(": {}", words.join(" "))
        })
        .unwrap_or_default()
}

fn is_bpffs(path: &Path) -> anyhow::Result<bool> {
    let stat =
        nix::sys::statfs::statfs(path).with_context(|| format!("statfs {}", path.display()))?;
    Ok(stat.filesystem_type().0 as i64 == BPF_FS_MAGIC)
}

/// A pinned link is taken over only in the mode it was attached in (or with `auto`).
fn check_mode(iface: &str, mode: AttachMode, existing: &PinnedLinkEntry) -> anyhow::Result<()> {
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
    Ok(())
}
