//! Man pages and shell completions, generated from the one clap declaration for the Debian
//! package (`mxguard generate-docs DIR`, run by `cargo xtask package`).

use std::path::Path;

use anyhow::Context as _;
use clap::CommandFactory as _;
use clap_complete::Shell;

use crate::cli::Cli;

/// Writes `DIR/man/mxguard.1` and one page per subcommand (`mxguard-run.1`, ...), and
/// `DIR/completions/` for bash, zsh and fish.
pub fn generate(dir: &Path) -> anyhow::Result<()> {
    let man = dir.join("man");
    std::fs::create_dir_all(&man).with_context(|| format!("creating {}", man.display()))?;
    clap_mangen::generate_to(Cli::command(), &man)
        .with_context(|| format!("writing man pages to {}", man.display()))?;
    let completions = dir.join("completions");
    std::fs::create_dir_all(&completions)
        .with_context(|| format!("creating {}", completions.display()))?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut Cli::command(), "mxguard", &completions)
            .with_context(|| format!("writing {shell} completions"))?;
    }
    Ok(())
}
