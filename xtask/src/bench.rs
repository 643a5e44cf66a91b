//! `cargo xtask bench`: builds the benchmark binary (crate `bench`) and runs it as root from
//! the workspace root. The logic lives in that crate; xtask stays free of the BPF build.

use std::{path::Path, path::PathBuf, process::Command};

use anyhow::Context as _;

pub fn bench(root: &Path, quick: bool, pcaps: &[PathBuf]) -> anyhow::Result<()> {
    test_kit::root::ensure_root("cargo xtask bench")?;
    // The dev profile, so a CI run reuses what `cargo xtask test` built (the bench crate
    // itself is optimised through its profile override).
    let mut build = crate::cargo(root);
    build.args(["build", "--package", "bench", "--bin", "mxguard-bench"]);
    crate::setup::run(&mut build)?;
    let mut run = Command::new(root.join("target/debug/mxguard-bench"));
    run.current_dir(root);
    if quick {
        run.arg("--quick");
    }
    for pcap in pcaps {
        // Relative to where the user ran cargo, not to the workspace root.
        let pcap = std::env::current_dir()
            .context("current directory")?
            .join(pcap);
        run.arg("--pcap").arg(pcap);
    }
    crate::setup::run(&mut run)
}
