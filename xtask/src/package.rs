//! `cargo xtask package`: the release binary, its man pages and completions, and a .deb built
//! with cargo-deb (metadata in filter-user/Cargo.toml). With `--check`, also a newer build of
//! the same package and the end-to-end test that installs, upgrades and purges them
//! (tests/tests/package.rs).

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, bail};
use test_kit::root::ensure_root;

use crate::setup::run;

pub fn package(root: &Path, check: bool) -> anyhow::Result<()> {
    if check {
        ensure_root("cargo xtask package --check")?;
    }
    let started = Instant::now();
    crate::build(root, true)?;
    generate_assets(root)?;
    // Same contents, a higher Debian revision: what an upgrade installs. Built first, since
    // every cargo-deb run deletes the package's other versions from target/debian.
    let upgrade = check
        .then(|| {
            cargo_deb(
                root,
                &root.join("target/debian-check"),
                &["--deb-revision", "2"],
            )
        })
        .transpose()?;
    let deb = cargo_deb(root, &root.join("target/debian"), &[])?;
    eprintln!("package: {}", deb.display());
    if let Some(upgrade) = upgrade {
        let mut test = crate::cargo(root);
        test.args(["test", "--package", "tests", "--test", "package"])
            .args(["--", "--test-threads", "1"])
            .env("MXGUARD_DEB", &deb)
            .env("MXGUARD_DEB_UPGRADE", &upgrade)
            .env("MXGUARD_BIN", "/usr/bin/mxguard");
        run(&mut test)?;
    }
    eprintln!("package: done in {:.0?}", started.elapsed());
    Ok(())
}

/// Man pages (gzipped, as Debian ships them) and completions, written by the built binary
/// into target/package-assets, where the package's asset list expects them.
fn generate_assets(root: &Path) -> anyhow::Result<()> {
    let assets = root.join("target/package-assets");
    if assets.exists() {
        std::fs::remove_dir_all(&assets)
            .with_context(|| format!("removing {}", assets.display()))?;
    }
    run(Command::new(root.join("target/release/mxguard"))
        .arg("generate-docs")
        .arg(&assets))?;
    let man = assets.join("man");
    let mut pages = 0;
    for entry in std::fs::read_dir(&man).with_context(|| format!("reading {}", man.display()))? {
        let page = entry?.path();
        // -n: no name or time stamp inside, so two builds give the same bytes.
        run(Command::new("gzip").arg("-9nf").arg(&page))?;
        pages += 1;
    }
    if pages == 0 {
        bail!("no man page generated in {}", man.display());
    }
    Ok(())
}

/// Runs cargo-deb on the release build into `out_dir`; returns the .deb it wrote.
fn cargo_deb(root: &Path, out_dir: &Path, extra: &[&str]) -> anyhow::Result<PathBuf> {
    if out_dir.exists() {
        std::fs::remove_dir_all(out_dir)
            .with_context(|| format!("removing {}", out_dir.display()))?;
    }
    let mut command = crate::cargo(root);
    command
        .args(["deb", "--package", "filter-user", "--no-build", "--output"])
        .arg(out_dir)
        .args(extra);
    eprintln!("running {command:?}");
    let output = command
        .output()
        .with_context(|| format!("running {command:?}"))?;
    eprint!("{}", String::from_utf8_lossy(&output.stderr));
    if !output.status.success() {
        bail!("{command:?} failed: {}", output.status);
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let deb = stdout
        .lines()
        .rev()
        .map(str::trim)
        .find(|line| line.ends_with(".deb"))
        .with_context(|| format!("cargo-deb printed no .deb path: {stdout}"))?;
    Ok(root.join(deb))
}
