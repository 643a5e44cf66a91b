//! The one root check. Everything here loads XDP programs, fills BPF maps or creates network
//! namespaces, none of which works without root, and a silent skip would hide that nothing was
//! tested: callers fail instead, with a message that says what needed root.

use anyhow::bail;

/// Whether this process runs with effective user id 0.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Errors unless running as root; `what` names the command or step that needs it.
pub fn ensure_root(what: &str) -> anyhow::Result<()> {
    if !is_root() {
        bail!(
            "{what} needs root (it loads XDP programs, fills BPF maps and creates network \
             namespaces): run it as root, e.g. with sudo"
        );
    }
    Ok(())
}

/// For tests: panics unless running as root. These tests never skip.
pub fn require_root() {
    if let Err(error) = ensure_root("this test") {
        panic!("{error:#} (cargo xtask test does)");
    }
}
