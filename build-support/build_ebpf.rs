// Shared by the build scripts that embed a BPF crate (filter-user, bench), through `include!`:
// build scripts cannot share code through a normal dependency without a crate of their own.

/// Builds the workspace's BPF crate `package` with nightly through aya-build, finding
/// bpf-linker on PATH or in the project's `.tools/bin` (`cargo xtask setup` puts it there).
fn build_ebpf_package(package: &str) -> anyhow::Result<()> {
    use std::{env, path::PathBuf};

    use anyhow::{Context as _, bail};

    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let workspace = manifest_dir.parent().context("the crate has no parent directory")?;
    let tools_bin = workspace.join(".tools/bin");
    println!("cargo:rerun-if-changed={}", tools_bin.join("bpf-linker").display());

    let path = env::var_os("PATH").unwrap_or_default();
    let on_path = env::split_paths(&path).any(|dir| dir.join("bpf-linker").is_file());
    if !on_path {
        if !tools_bin.join("bpf-linker").is_file() {
            bail!(
                "bpf-linker not found on PATH nor in {}: run `cargo xtask setup` first",
                tools_bin.display()
            );
        }
        let mut dirs = vec![tools_bin];
        dirs.extend(env::split_paths(&path));
        // SAFETY: build scripts are single-threaded here; the nested cargo that aya-build spawns
        // inherits this PATH and so finds the project's bpf-linker.
        unsafe { env::set_var("PATH", env::join_paths(dirs)?) };
    }

    // aya-build watches the BPF crate's own directory only; the shared types it is built from
    // change the object too, and a stale object would disagree with userspace on map layouts.
    println!(
        "cargo:rerun-if-changed={}",
        workspace.join("filter-common").display()
    );

    // Measurement variants only (filter-ebpf's `off-*` features, docs/benchmarks.md).
    println!("cargo:rerun-if-env-changed=MXGUARD_EBPF_FEATURES");
    let features = env::var("MXGUARD_EBPF_FEATURES").unwrap_or_default();
    let features: Vec<&str> = if package == "filter-ebpf" {
        features.split(',').filter(|f| !f.is_empty()).collect()
    } else {
        Vec::new()
    };
    if !features.is_empty() {
        println!("cargo:warning=building {package} with measurement features {features:?}");
    }

    let ebpf_dir = workspace.join(package);
    let ebpf_dir = ebpf_dir.to_str().context("non-UTF-8 workspace path")?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: package,
            root_dir: ebpf_dir,
            features: &features,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
