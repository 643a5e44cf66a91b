//! `cargo xtask`: set-up, build, test and lab commands for mxguard.
//!
//! Every command that needs the toolchain runs `setup` first; `setup` is idempotent and quick
//! when everything is already there.

mod bench;
mod fuzz;
mod package;
mod setup;

use std::{
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use test_kit::root::ensure_root;

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Build, test and try out mxguard")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing need: rust-src for nightly, bpf-linker (built against
    /// nightly's LLVM) in .tools/, and the Debian packages the tests use.
    Setup,
    /// Build the `mxguard` binary (with the XDP program embedded).
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Run the whole test suite (needs root: it loads XDP programs and creates namespaces), the
    /// Debian package's install/upgrade/purge test included (`package --check`).
    Test {
        /// Extra arguments for `cargo test`, e.g. a test name filter.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Without arguments: start the throwaway lab (namespaces, a relay, a direct sender, the
    /// filter) and show it working until Ctrl-C. With `-- ARGS`: run `mxguard run ARGS` on this
    /// machine's real interfaces.
    Run {
        /// Stop the lab after this many rounds of connection checks (default: until Ctrl-C).
        #[arg(long)]
        rounds: Option<u32>,
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// rustfmt check and clippy (-D warnings) on the userspace crates and the BPF crate.
    Lint,
    /// Build the Debian package (release binary, man pages, completions, unit, example
    /// configuration) into target/debian/ with cargo-deb.
    Package {
        /// Also install it, upgrade it with a newer build while a filter is attached, and
        /// purge it again: the package's end-to-end test (needs root; changes this machine's
        /// package database for its duration).
        #[arg(long)]
        check: bool,
    },
    /// Fuzz the XDP program against the reference classifier (libFuzzer via cargo-fuzz).
    Fuzz {
        /// How long to fuzz.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
    /// Benchmark mxguard against an empty XDP program, xdp-filter, iptables, nftables and an
    /// XDP drop-all (needs root); writes target/bench/ and, for a full run, docs/benchmarks.md.
    Bench {
        /// Smoke run, under two minutes (CI).
        #[arg(long)]
        quick: bool,
        /// Replay this pcap/pcapng capture instead of the generated traffic (repeatable).
        #[arg(long, value_name = "FILE")]
        pcap: Vec<PathBuf>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let root = workspace_root();
    match cli.command {
        Task::Setup => setup::setup(&root),
        Task::Build { release } => {
            setup::setup(&root)?;
            build(&root, release)
        }
        Task::Test { args } => {
            setup::setup(&root)?;
            test(&root, &args)
        }
        Task::Run { rounds, args } => {
            setup::setup(&root)?;
            run(&root, rounds, &args)
        }
        Task::Lint => {
            setup::setup(&root)?;
            lint(&root)
        }
        Task::Package { check } => {
            setup::setup(&root)?;
            package::package(&root, check)
        }
        Task::Fuzz { seconds } => {
            setup::setup(&root)?;
            fuzz::fuzz(&root, seconds)
        }
        Task::Bench { quick, pcap } => {
            setup::setup(&root)?;
            bench::bench(&root, quick, &pcap)
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// `cargo` with the project's tools (bpf-linker) first on PATH.
fn cargo(root: &Path) -> Command {
    let mut command = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    command
        .current_dir(root)
        .env("PATH", setup::path_with_tools(root));
    command
}

fn build(root: &Path, release: bool) -> anyhow::Result<()> {
    let mut command = cargo(root);
    command.args(["build", "--package", "filter-user", "--bin", "mxguard"]);
    if release {
        command.arg("--release");
    }
    setup::run(&mut command)
}

fn test(root: &Path, args: &[String]) -> anyhow::Result<()> {
    ensure_root("cargo xtask test")?;
    build(root, false)?;
    let mut command = cargo(root);
    command
        .arg("test")
        .args(args)
        .env("MXGUARD_BIN", root.join("target/debug/mxguard"));
    setup::run(&mut command)?;
    // The whole suite includes the package's end-to-end test, which needs the packages built
    // first; a filtered run (`cargo xtask test -- NAME`) leaves it out.
    if args.is_empty() {
        package::package(root, true)?;
    }
    Ok(())
}

fn run(root: &Path, rounds: Option<u32>, args: &[String]) -> anyhow::Result<()> {
    ensure_root("cargo xtask run")?;
    if args.is_empty() {
        build(root, false)?;
        let mut command = cargo(root);
        command
            .args(["build", "--package", "tests", "--bin", "mxguard-lab"])
            .env("MXGUARD_BIN", root.join("target/debug/mxguard"));
        setup::run(&mut command)?;
        let mut lab = Command::new(root.join("target/debug/mxguard-lab"));
        lab.env("MXGUARD_BIN", root.join("target/debug/mxguard"));
        if let Some(rounds) = rounds {
            lab.arg("--rounds").arg(rounds.to_string());
        }
        // Replace this process, so Ctrl-C reaches the lab alone and it can clean up.
        Err(lab.exec()).context("starting the lab")
    } else {
        build(root, true)?;
        let mut mxguard = Command::new(root.join("target/release/mxguard"));
        mxguard.arg("run").args(args);
        Err(mxguard.exec()).context("starting mxguard")
    }
}

fn lint(root: &Path) -> anyhow::Result<()> {
    let mut fmt = cargo(root);
    fmt.args(["fmt", "--all", "--check"]);
    setup::run(&mut fmt)?;
    let mut clippy = cargo(root);
    clippy.args(["clippy", "--all-targets", "--", "-D", "warnings"]);
    setup::run(&mut clippy)?;
    // `--all-targets` leaves out test targets with `test = false` (the package test).
    let mut clippy_package = cargo(root);
    clippy_package.args([
        "clippy",
        "--package",
        "tests",
        "--test",
        "package",
        "--",
        "-D",
        "warnings",
    ]);
    setup::run(&mut clippy_package)?;
    // The BPF crate only builds for the BPF target with nightly.
    let mut clippy_bpf = Command::new("rustup");
    clippy_bpf
        .current_dir(root.join("filter-ebpf"))
        .env("PATH", setup::path_with_tools(root))
        .args([
            "run",
            "nightly",
            "cargo",
            "clippy",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
        ])
        .args(["--release", "--", "-D", "warnings"]);
    setup::run(&mut clippy_bpf)
}
