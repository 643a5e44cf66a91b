//! `cargo xtask fuzz`: runs the libFuzzer target in `fuzz/`, which feeds arbitrary bytes to
//! the loaded XDP program (BPF_PROG_TEST_RUN) and to the reference classifier and stops at the
//! first difference.
//!
//! The task runs `setup` first: building the target embeds the XDP program, so it needs what
//! setup provides (nightly with rust-src, and bpf-linker), and cargo-fuzz itself needs nightly.

use std::{env, ffi::OsString, path::Path, process::Command};

use anyhow::{Context as _, bail};

/// The cargo-fuzz release that builds with the stable toolchain here (see TOOLCHAIN.md).
const CARGO_FUZZ_VERSION: &str = "0.13.2";
/// The fuzz target (`fuzz/fuzz_targets/verdicts.rs`).
const TARGET: &str = "verdicts";
/// Matches the target's own cap: a 1500-byte MTU plus Ethernet header and two VLAN tags.
const MAX_LEN: usize = 1500 + 14 + 8;

/// Installs cargo-fuzz into `.tools/` if it is missing, then fuzzes for `seconds`. Needs root:
/// the target loads the XDP program. A difference fails with the frame printed as hex and
/// saved under `fuzz/artifacts/verdicts/`.
pub fn fuzz(workspace_root: &Path, seconds: u64) -> anyhow::Result<()> {
    test_kit::root::ensure_root("cargo xtask fuzz")?;
    let tools = workspace_root.join(".tools");
    let path = crate::setup::path_with_tools(workspace_root);
    install_cargo_fuzz(&tools, &path)?;

    let fuzz_dir = workspace_root.join("fuzz");
    // libFuzzer adds what it finds to the first corpus directory (git-ignored); the committed
    // seeds are read only.
    let corpus = fuzz_dir.join("corpus").join(TARGET);
    std::fs::create_dir_all(&corpus).with_context(|| format!("creating {}", corpus.display()))?;
    let seeds = fuzz_dir.join("seeds").join(TARGET);

    let mut command = Command::new("rustup");
    command
        .current_dir(workspace_root)
        .env("PATH", &path)
        .args(["run", "nightly", "cargo", "fuzz", "run"])
        // No sanitizer: the point is the verdict comparison, the code under test is (safe
        // Rust around) a BPF program that the verifier already bounds-checks, and ASan would
        // slow the syscall-bound loop and double the build.
        .args(["--sanitizer", "none", TARGET])
        .arg(&corpus)
        .arg(&seeds)
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-max_len={MAX_LEN}"))
        .arg("-timeout=10")
        .arg("-print_final_stats=1");
    let status = command
        .status()
        .with_context(|| format!("running {command:?}"))?;
    if !status.success() {
        bail!(
            "fuzzing found a difference or failed ({status}); the input is in {}",
            fuzz_dir.join("artifacts").join(TARGET).display()
        );
    }
    Ok(())
}

fn install_cargo_fuzz(tools: &Path, path: &OsString) -> anyhow::Result<()> {
    let binary = tools.join("bin").join("cargo-fuzz");
    if binary.is_file() {
        let output = Command::new(&binary)
            .arg("--version")
            .output()
            .with_context(|| format!("running {}", binary.display()))?;
        if String::from_utf8_lossy(&output.stdout).contains(CARGO_FUZZ_VERSION) {
            return Ok(());
        }
    }
    let mut command = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    command
        .env("PATH", path)
        .args(["install", "--locked", "--force"])
        .arg(format!("cargo-fuzz@{CARGO_FUZZ_VERSION}"))
        .arg("--root")
        .arg(tools);
    let status = command
        .status()
        .with_context(|| format!("running {command:?}"))?;
    if !status.success() {
        bail!("installing cargo-fuzz {CARGO_FUZZ_VERSION} failed: {status}");
    }
    Ok(())
}
