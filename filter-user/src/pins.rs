//! Where the filter lives on bpffs, so it outlives the daemon.
//!
//! Layout under the pin directory (default `/sys/fs/bpf/mxguard`):
//!
//! ```text
//! v1/maps/ALLOW_V4, ALLOW_V6, PORTS, CONFIG, COUNTERS   the maps, shared by every interface
//! v1/links/<iface>@<mode>                              one pinned XDP link per interface
//! ```
//!
//! The `v1` directory is the layout version: a daemon only reuses maps of its own layout (aya
//! does not check key and value sizes when it reuses a pin). An older layout is replaced
//! without a gap: see `Filter::attach_pinned`.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

use crate::filter::AttachedMode;

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
                let mode = match mode {
                    "native" => AttachedMode::Native,
                    "generic" => AttachedMode::Generic,
                    _ => continue,
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

fn is_bpffs(path: &Path) -> anyhow::Result<bool> {
    let stat =
        nix::sys::statfs::statfs(path).with_context(|| format!("statfs {}", path.display()))?;
    Ok(stat.filesystem_type().0 as i64 == BPF_FS_MAGIC)
}
