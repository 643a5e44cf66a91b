//! Idempotent set-up of a fresh machine: rust-src, bpf-linker, Debian packages.
//!
//! Each step checks first and does nothing when its result is already there, so a second run
//! takes seconds. Every action it takes is printed.

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

/// bpf-linker release that builds with the toolchains here (see ../shared/TOOLCHAIN.md).
const BPF_LINKER_VERSION: &str = "0.13.0";

/// cargo-deb release for `cargo xtask package` (MIT; builds with rustc 1.85 and later).
const CARGO_DEB_VERSION: &str = "3.8.0";

/// Debian packages the tests and the lab use (binary that proves each one is there).
const DEBIAN_PACKAGES: &[(&str, &str)] = &[
    ("iproute2", "ip"),
    ("bpftool", "bpftool"),
    // `cargo xtask bench`: the contenders and the veth set-up.
    ("xdp-tools", "xdp-filter"),
    ("iptables", "iptables-restore"),
    ("nftables", "nft"),
    ("ethtool", "ethtool"),
    // `cargo xtask package --check`: `man -l` on the pages, `systemd-analyze verify` the unit.
    ("man-db", "man"),
    ("systemd", "systemd-analyze"),
    // The milter tests, the lab's mail server and the mail-under-flood benchmark: a private
    // Postfix instance (never the system one), swaks as the client, smtp-source as the load.
    ("postfix", "postfix"),
    ("swaks", "swaks"),
    // A second, independent SYN-flood generator for the mail-under-flood benchmark.
    ("hping3", "hping3"),
    // DNSSEC tests: a real signer (dnssec-keygen, dnssec-signzone) and a real authoritative
    // server (named) serving the signed zone inside a test namespace.
    ("bind9-utils", "dnssec-signzone"),
    ("bind9", "named"),
];

/// debconf answers given before installing: "No configuration" leaves no main.cf, so Debian's
/// init script never starts a system Postfix; the tests run their own instances.
const DEBCONF_SELECTIONS: &str = "postfix postfix/main_mailer_type select No configuration\n\
                                  postfix postfix/mailname string mxguard.test\n";

/// Stops maintainer scripts from starting services (named, postfix) on the build machine:
/// the tests start their own instances in namespaces they own.
const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";

pub fn setup(root: &Path) -> anyhow::Result<()> {
    rust_src()?;
    bpf_linker(root)?;
    cargo_deb(root)?;
    debian_packages()?;
    Ok(())
}

/// PATH with `.tools/bin` first, for cargo invocations that link the BPF crate.
pub fn path_with_tools(root: &Path) -> OsString {
    let mut dirs = vec![tools_dir(root).join("bin")];
    dirs.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    std::env::join_paths(dirs).expect("PATH entries contain no separator")
}

fn tools_dir(root: &Path) -> PathBuf {
    root.join(".tools")
}

fn output(command: &mut Command) -> anyhow::Result<String> {
    let output = command
        .output()
        .with_context(|| format!("running {command:?}"))?;
    if !output.status.success() {
        bail!(
            "{command:?} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Runs `command`, printing it first; fails on a non-zero exit.
pub(crate) fn run(command: &mut Command) -> anyhow::Result<()> {
    eprintln!("running {command:?}");
    let status = command
        .status()
        .with_context(|| format!("running {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed: {status}");
    }
    Ok(())
}

fn rust_src() -> anyhow::Result<()> {
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        "nightly",
    ]))
    .context("the nightly toolchain is needed to build the XDP program")?;
    if installed.lines().any(|line| line.starts_with("rust-src")) {
        return Ok(());
    }
    eprintln!("setup: adding rust-src to the nightly toolchain (for -Z build-std=core)");
    run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

/// LLVM major version of the nightly rustc, from `rustc +nightly -vV`.
fn nightly_llvm_major() -> anyhow::Result<u32> {
    let version = output(Command::new("rustup").args(["run", "nightly", "rustc", "-vV"]))?;
    let llvm = version
        .lines()
        .find_map(|line| line.strip_prefix("LLVM version: "))
        .context("`rustc +nightly -vV` prints no LLVM version")?;
    llvm.split('.')
        .next()
        .and_then(|major| major.trim().parse().ok())
        .with_context(|| format!("odd LLVM version {llvm:?}"))
}

/// Builds bpf-linker into .tools/bin against the nightly's own LLVM, unless the one there was
/// built for the same LLVM major (recorded in a stamp file). If that build fails, it is tried
/// once more against Debian's llvm-N-dev, the second way ../shared/TOOLCHAIN.md gives.
fn bpf_linker(root: &Path) -> anyhow::Result<()> {
    let tools = tools_dir(root);
    let major = nightly_llvm_major()?;
    let stamp = tools.join("bpf-linker.stamp");
    let wanted = format!("bpf-linker {BPF_LINKER_VERSION} llvm-{major}");
    let binary = tools.join("bin/bpf-linker");
    if binary.is_file() && std::fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == wanted) {
        return Ok(());
    }

    eprintln!(
        "setup: building {wanted} into {} (about a minute)",
        tools.display()
    );
    let nightly_prefix = llvm_prefix(&tools, major)?;
    if let Err(first) = install_bpf_linker(&tools, major, &nightly_prefix, None) {
        eprintln!("setup: {first:#}");
        let package = format!("llvm-{major}-dev");
        eprintln!("setup: trying once more against Debian's {package}, one job at a time");
        preseed_debconf()?;
        run(Command::new("apt-get").arg("update").arg("-q"))?;
        run(Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends", &package])
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
        let debian_prefix = PathBuf::from(format!("/usr/lib/llvm-{major}"));
        install_bpf_linker(&tools, major, &debian_prefix, Some(1))
            .context("bpf-linker failed to build against both LLVMs")?;
    }
    std::fs::write(&stamp, format!("{wanted}\n")).context("writing the bpf-linker stamp")?;
    Ok(())
}

/// One `cargo install` of bpf-linker against the LLVM in `llvm_prefix`. The crate's own
/// Cargo.lock is used (`--locked`), so a new release of a dependency cannot break the build;
/// the build directory is inside .tools, not in a possibly small /tmp, and is removed after.
/// The full output goes to a log file; a failure prints its end, where the real error is.
fn install_bpf_linker(
    tools: &Path,
    major: u32,
    llvm_prefix: &Path,
    jobs: Option<u32>,
) -> anyhow::Result<()> {
    let build_dir = tools.join("build-bpf-linker");
    let log_path = tools.join("bpf-linker-build.log");
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("creating {}", log_path.display()))?;
    let mut command = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    command
        .args([
            "install",
            &format!("bpf-linker@{BPF_LINKER_VERSION}"),
            "--locked",
            "--force",
            "--no-default-features",
            "--features",
            &format!("llvm-{major}"),
        ])
        .arg("--root")
        .arg(tools)
        .arg("--target-dir")
        .arg(&build_dir)
        .env("LLVM_PREFIX", llvm_prefix)
        // Debug info makes the link several times larger and is never used.
        .env("CARGO_PROFILE_RELEASE_DEBUG", "false")
        .stdout(log.try_clone().context("duplicating the log file handle")?)
        .stderr(log);
    if let Some(jobs) = jobs {
        command.arg("--jobs").arg(jobs.to_string());
    }
    eprintln!("running {command:?} (output in {})", log_path.display());
    let status = command
        .status()
        .with_context(|| format!("running {command:?}"))?;
    let _ = std::fs::remove_dir_all(&build_dir);
    if !status.success() {
        bail!(
            "building bpf-linker against {} failed ({status}); the end of {}:\n{}",
            llvm_prefix.display(),
            log_path.display(),
            log_tail(&log_path)
        );
    }
    Ok(())
}

/// The last lines of a build log, each cut to a readable length: a failed link prints one
/// enormous command line before the line that says what went wrong.
fn log_tail(path: &Path) -> String {
    const LINES: usize = 40;
    const WIDTH: usize = 300;
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(LINES)..]
        .iter()
        .map(|line| match line.char_indices().nth(WIDTH) {
            Some((cut, _)) => format!("{} [...]", &line[..cut]),
            None => (*line).to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Installs cargo-deb into .tools/bin unless that version is there already.
fn cargo_deb(root: &Path) -> anyhow::Result<()> {
    let tools = tools_dir(root);
    let binary = tools.join("bin/cargo-deb");
    if binary.is_file()
        && output(Command::new(&binary).arg("--version"))
            .is_ok_and(|version| version.split_whitespace().nth(1) == Some(CARGO_DEB_VERSION))
    {
        return Ok(());
    }
    eprintln!(
        "setup: installing cargo-deb {CARGO_DEB_VERSION} into {} (about two minutes)",
        tools.display()
    );
    run(
        Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
            .args([
                "install",
                &format!("cargo-deb@{CARGO_DEB_VERSION}"),
                "--locked",
                "--force",
            ])
            .arg("--root")
            .arg(&tools),
    )
}

/// A directory whose `lib/libLLVM.so` is nightly's own shared LLVM: the right major version
/// by construction, with nothing to install.
fn llvm_prefix(tools: &Path, major: u32) -> anyhow::Result<PathBuf> {
    let sysroot =
        output(Command::new("rustup").args(["run", "nightly", "rustc", "--print", "sysroot"]))?;
    let lib = Path::new(sysroot.trim()).join("lib");
    let library = std::fs::read_dir(&lib)
        .with_context(|| format!("reading {}", lib.display()))?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .find(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with(&format!("libLLVM.so.{major}")))
        })
        .with_context(|| format!("no libLLVM.so.{major}* in {}", lib.display()))?;
    let prefix = tools.join(format!("llvm-{major}"));
    std::fs::create_dir_all(prefix.join("lib"))?;
    let link = prefix.join("lib/libLLVM.so");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&library, &link)
        .with_context(|| format!("linking {} to {}", link.display(), library.display()))?;
    Ok(prefix)
}

fn debian_packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = DEBIAN_PACKAGES
        .iter()
        .filter(|(_, binary)| !on_path(binary))
        .map(|(package, _)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("setup: installing Debian packages {missing:?}");
    preseed_debconf()?;
    run(Command::new("apt-get").arg("update").arg("-q"))?;
    let _no_services = NoServiceStarts::install()?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn preseed_debconf() -> anyhow::Result<()> {
    use std::io::Write;
    let mut child = Command::new("debconf-set-selections")
        .stdin(std::process::Stdio::piped())
        .spawn()
        .context("starting debconf-set-selections")?;
    child
        .stdin
        .take()
        .context("debconf-set-selections has no stdin")?
        .write_all(DEBCONF_SELECTIONS.as_bytes())
        .context("writing debconf selections")?;
    let status = child.wait().context("waiting for debconf-set-selections")?;
    anyhow::ensure!(status.success(), "debconf-set-selections failed: {status}");
    Ok(())
}

/// A policy-rc.d that denies every service start for as long as it lives; one that was there
/// before is left alone.
struct NoServiceStarts {
    ours: bool,
}

impl NoServiceStarts {
    fn install() -> anyhow::Result<Self> {
        use std::os::unix::fs::PermissionsExt;
        let path = Path::new(POLICY_RC_D);
        if path.exists() {
            return Ok(Self { ours: false });
        }
        std::fs::write(
            path,
            "#!/bin/sh\n# written by cargo xtask setup while it installs packages\nexit 101\n",
        )
        .with_context(|| format!("writing {POLICY_RC_D}"))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("making {POLICY_RC_D} executable"))?;
        Ok(Self { ours: true })
    }
}

impl Drop for NoServiceStarts {
    fn drop(&mut self) {
        if self.ours
            && let Err(error) = std::fs::remove_file(POLICY_RC_D)
        {
            eprintln!("setup: could not remove {POLICY_RC_D}: {error}");
        }
    }
}

fn on_path(binary: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .any(|dir| dir.join(binary).is_file())
}
