//! The state file: every name's last known good addresses and when DNS last confirmed them, so
//! a restart while DNS is down still protects. Versioned JSON, written atomically (temporary
//! file, fsync, rename, fsync of the directory), so a crash leaves the old or the new file,
//! never half of one.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs::{self, File},
    io::Write as _,
    net::IpAddr,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};

use super::HostName;
use crate::cidr::Cidr;

/// The format written by this version: 2 added `spf`. Loading reads 1 and 2, refuses others.
pub const VERSION: u32 = 2;
/// The oldest format still read.
pub const OLDEST_VERSION: u32 = 1;

/// One family's saved addresses.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedFamily {
    pub addresses: BTreeSet<IpAddr>,
    /// Wall-clock time (Unix seconds) of the last successful answer for this family.
    pub confirmed_unix: Option<u64>,
}

/// One name's saved state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedName {
    pub ipv4: SavedFamily,
    pub ipv6: SavedFamily,
}

/// One prefix an SPF record passed, by one chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedSpfPrefix {
    pub prefix: Cidr,
    /// How it was reached: `["spf a.test", "include:b.test"]`.
    pub chain: Vec<String>,
    /// Wall-clock time (Unix seconds) DNS last confirmed it by this chain.
    pub confirmed_unix: u64,
}

/// One SPF source's saved prefixes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedSpf {
    pub prefixes: Vec<SavedSpfPrefix>,
}

/// The whole file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Saved {
    pub names: BTreeMap<HostName, SavedName>,
    pub spf: BTreeMap<HostName, SavedSpf>,
}

#[derive(Serialize, Deserialize)]
struct FileFormat {
    version: u32,
    names: BTreeMap<String, SavedName>,
    /// Version 2 on; absent in version 1.
    #[serde(default)]
    spf: BTreeMap<String, SavedSpf>,
}

#[derive(Deserialize)]
struct VersionOnly {
    version: u32,
}

/// The state file in a directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateFile {
    path: PathBuf,
}

impl StateFile {
    pub const FILE_NAME: &str = "dns-allowlist.json";

    pub fn in_dir(dir: &Path) -> Self {
        StateFile {
            path: dir.join(Self::FILE_NAME),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the file: `Ok(None)` when there is none yet; an error when it cannot be read or
    /// is not a valid state file of this version (the caller reports and ignores it).
    pub fn load(&self) -> anyhow::Result<Option<Saved>> {
        let text = match fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => {
                return Err(error)
                    .with_context(|| format!("reading state file {}", self.path.display()));
            }
        };
        parse(&text)
            .map(Some)
            .with_context(|| format!("state file {} is not usable", self.path.display()))
    }

    /// Replaces the file atomically with `saved`.
    pub fn save(&self, saved: &Saved) -> anyhow::Result<()> {
        let dir = self
            .path
            .parent()
            .context("state file path has no directory")?;
        fs::create_dir_all(dir)
            .with_context(|| format!("creating state directory {}", dir.display()))?;
        let text = render(saved)?;
        let temp = dir.join(crate::temporary::unique_name(Self::FILE_NAME));
        let write = || -> anyhow::Result<()> {
            let mut file =
                File::create(&temp).with_context(|| format!("creating {}", temp.display()))?;
            file.write_all(text.as_bytes())
                .with_context(|| format!("writing {}", temp.display()))?;
            file.sync_all()
                .with_context(|| format!("fsync of {}", temp.display()))?;
            fs::rename(&temp, &self.path).with_context(|| {
                format!("renaming {} to {}", temp.display(), self.path.display())
            })?;
            // The rename is only durable once the directory entry is on disk.
            File::open(dir)
                .and_then(|dir| dir.sync_all())
                .with_context(|| format!("fsync of directory {}", dir.display()))
        };
        write().inspect_err(|_| {
            let _ = fs::remove_file(&temp);
        })
    }
}

fn render(saved: &Saved) -> anyhow::Result<String> {
    let file = FileFormat {
        version: VERSION,
        names: saved
            .names
            .iter()
            .map(|(name, state)| (name.to_string(), state.clone()))
            .collect(),
        spf: saved
            .spf
            .iter()
            .map(|(name, state)| (name.to_string(), state.clone()))
            .collect(),
    };
    let mut text = serde_json::to_string_pretty(&file).context("encoding the state file")?;
    text.push('\n');
    Ok(text)
}

fn parse(text: &str) -> anyhow::Result<Saved> {
    // The version first, so a future format gets a clear message instead of a field error.
    let VersionOnly { version } =
        serde_json::from_str(text).context("not JSON with a \"version\" number")?;
    if !(OLDEST_VERSION..=VERSION).contains(&version) {
        bail!(
            "unsupported state file version {version} (this mxguard reads versions \
             {OLDEST_VERSION} to {VERSION})"
        );
    }
    let file: FileFormat = serde_json::from_str(text).context("malformed state file")?;
    let mut names = BTreeMap::new();
    for (text, state) in file.names {
        let name: HostName = text.parse()?;
        if state.ipv4.addresses.iter().any(IpAddr::is_ipv6)
            || state.ipv6.addresses.iter().any(IpAddr::is_ipv4)
        {
            bail!("{name}: an address is filed under the wrong family");
        }
        for family in [&state.ipv4, &state.ipv6] {
            if !family.addresses.is_empty() && family.confirmed_unix.is_none() {
                bail!("{name}: addresses without a confirmation time");
            }
        }
        names.insert(name, state);
    }
    let mut spf = BTreeMap::new();
    for (text, state) in file.spf {
        spf.insert(text.parse()?, state);
    }
    Ok(Saved { names, spf })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("mxguard-state-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    fn sample() -> Saved {
        let mut names = BTreeMap::new();
        names.insert(
            "relay.test".parse().unwrap(),
            SavedName {
                ipv4: SavedFamily {
                    addresses: ["192.0.2.1".parse().unwrap()].into(),
                    confirmed_unix: Some(1_700_000_000),
                },
                ipv6: SavedFamily {
                    addresses: ["2001:db8::1".parse().unwrap()].into(),
                    confirmed_unix: Some(1_700_000_001),
                },
            },
        );
        let mut spf = BTreeMap::new();
        spf.insert(
            "_spf.relay.test".parse().unwrap(),
            SavedSpf {
                prefixes: vec![SavedSpfPrefix {
                    prefix: "198.51.100.0/24".parse().unwrap(),
                    chain: vec!["spf _spf.relay.test".into(), "include:eu.relay.test".into()],
                    confirmed_unix: 1_700_000_002,
                }],
            },
        );
        Saved { names, spf }
    }

    #[test]
    fn saves_and_loads_back() {
        let dir = temp_dir("roundtrip");
        let file = StateFile::in_dir(&dir.join("nested"));
        assert_eq!(file.load().unwrap(), None, "no file yet");
        file.save(&sample()).unwrap();
        assert_eq!(file.load().unwrap(), Some(sample()));
        // Overwriting leaves no temporary file behind.
        file.save(&Saved::default()).unwrap();
        assert_eq!(file.load().unwrap(), Some(Saved::default()));
        let entries: Vec<_> = fs::read_dir(dir.join("nested")).unwrap().collect();
        assert_eq!(entries.len(), 1);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_files_are_errors_not_panics() {
        for (text, expected) in [
            ("", "not JSON"),
            ("{\"version\": 1, \"names\": {", "not JSON"),
            ("garbage\u{0}\u{1}", "not JSON"),
            (
                "{\"version\": 3, \"names\": {}}",
                "unsupported state file version 3",
            ),
            ("{\"names\": {}}", "not JSON with a \"version\""),
            ("{\"version\": 1}", "malformed"),
            (
                "{\"version\":1,\"names\":{\"relay.test.\":{\"ipv4\":{\"addresses\":[\"300.1.1.1\"],\"confirmed_unix\":1},\"ipv6\":{\"addresses\":[],\"confirmed_unix\":null}}}}",
                "malformed",
            ),
            (
                "{\"version\":1,\"names\":{\"relay.test.\":{\"ipv4\":{\"addresses\":[\"2001:db8::1\"],\"confirmed_unix\":1},\"ipv6\":{\"addresses\":[],\"confirmed_unix\":null}}}}",
                "wrong family",
            ),
            (
                "{\"version\":1,\"names\":{\"192.0.2.1\":{\"ipv4\":{\"addresses\":[],\"confirmed_unix\":null},\"ipv6\":{\"addresses\":[],\"confirmed_unix\":null}}}}",
                "invalid host name",
            ),
            (
                "{\"version\":1,\"names\":{\"relay.test.\":{\"ipv4\":{\"addresses\":[\"192.0.2.1\"],\"confirmed_unix\":null},\"ipv6\":{\"addresses\":[],\"confirmed_unix\":null}}}}",
                "without a confirmation time",
            ),
        ] {
            let error = format!("{:#}", parse(text).expect_err(text));
            assert!(error.contains(expected), "{text}: {error}");
        }
    }

    #[test]
    fn version_1_files_still_load() {
        let text = "{\"version\":1,\"names\":{\"relay.test.\":{\"ipv4\":{\"addresses\":[\"192.0.2.1\"],\"confirmed_unix\":1},\"ipv6\":{\"addresses\":[],\"confirmed_unix\":null}}}}";
        let saved = parse(text).unwrap();
        assert_eq!(saved.names.len(), 1);
        assert!(saved.spf.is_empty());
        assert!(render(&saved).unwrap().contains("\"version\": 2"));
    }

    #[test]
    fn unreadable_file_is_an_error() {
        let dir = temp_dir("unreadable");
        // A directory where the file should be: reading fails with an I/O error.
        fs::create_dir_all(dir.join(StateFile::FILE_NAME)).unwrap();
        let error = format!("{:#}", StateFile::in_dir(&dir).load().unwrap_err());
        assert!(error.contains("reading state file"), "{error}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
