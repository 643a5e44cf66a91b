//! Network namespaces and commands run inside them, for the benchmark. Every namespace is named
//! `mxbench<pid>-...` and deleted on drop; `sweep_stale` removes those left by a benchmark
//! process that died (its pid no longer exists), so a killed run never leaks into the next.

use std::{
    fs::File,
    path::Path,
    process::{Command, Stdio},
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread,
};

use anyhow::{Context as _, bail};
use nix::sched::{CloneFlags, setns};

static NEXT_ID: AtomicUsize = AtomicUsize::new(0);
static STOPPING: AtomicBool = AtomicBool::new(false);
/// Namespaces alive now, for the signal handler (Drop does not run when a signal kills us).
static LIVE: Mutex<Vec<String>> = Mutex::new(Vec::new());
/// Commands to run before the namespaces go (e.g. unloading xdp-filter, whose maps are pinned
/// in the global bpffs), keyed by namespace.
static BEFORE_DELETE: Mutex<Vec<(String, Vec<String>)>> = Mutex::new(Vec::new());
const PREFIX: &str = "mxbench";

/// Runs a command and fails with its stderr if it exits non-zero; returns stdout.
pub fn run(command: &mut Command) -> anyhow::Result<String> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {command:?}"))?;
    if !output.status.success() {
        bail!(
            "{command:?} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Runs a command with `input` on its stdin (e.g. `iptables-restore`, `nft -f -`).
pub fn run_with_input(command: &mut Command, input: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {command:?}"))?;
    child
        .stdin
        .take()
        .context("piped stdin")?
        .write_all(input.as_bytes())
        .with_context(|| format!("writing to {command:?}"))?;
    let output = child
        .wait_with_output()
        .with_context(|| format!("waiting for {command:?}"))?;
    if !output.status.success() {
        bail!(
            "{command:?} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// A named network namespace, deleted on drop (with everything inside it: veth ends, XDP
/// attachments, iptables and nftables rules, conntrack state).
pub struct Netns {
    name: String,
}

impl Netns {
    pub fn new(tag: &str) -> anyhow::Result<Netns> {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let name = format!("{PREFIX}{}-{id}-{tag}", std::process::id());
        {
            // Held while creating, so the signal handler (which takes it and never lets go)
            // sees every namespace that exists.
            let mut live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
            if STOPPING.load(Ordering::SeqCst) {
                bail!("stopping on a signal");
            }
            run(Command::new("ip").args(["netns", "add", &name]))?;
            live.push(name.clone());
        }
        let netns = Netns { name };
        netns.ip(&["link", "set", "lo", "up"])?;
        Ok(netns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n NAME ARGS`.
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<String> {
        run(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// A command running `program` in this namespace's network stack only. `nsenter --net`
    /// rather than `ip netns exec`, which remounts /sys and so hides bpffs from libxdp tools.
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net=/run/netns/{}", self.name))
            .arg("--")
            .arg(program);
        command
    }

    /// Writes a sysctl inside the namespace (through /proc/sys of a thread that entered it).
    pub fn sysctl(&self, key: &str, value: &str) -> anyhow::Result<()> {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        let value = value.to_owned();
        self.enter(move || std::fs::write(&path, value).with_context(|| format!("writing {path}")))?
    }

    /// Runs `f` on a thread that has entered this namespace; sockets and netlink requests made
    /// in `f` belong to the namespace.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
        enter_named(&self.name, f)
    }
}

/// Runs `f` on a thread that has entered the namespace `/run/netns/NAME`.
pub fn enter_named<T: Send>(name: &str, f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
    let path = format!("/run/netns/{name}");
    thread::scope(|scope| {
        scope
            .spawn(|| -> anyhow::Result<T> {
                let file = File::open(&path).with_context(|| format!("opening {path}"))?;
                setns(&file, CloneFlags::CLONE_NEWNET)
                    .with_context(|| format!("entering {path}"))?;
                Ok(f())
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
        LIVE.lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|name| name != &self.name);
        BEFORE_DELETE
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(name, _)| name != &self.name);
    }
}

/// Registers a command (run inside `netns` by the signal handler) that undoes something the
/// namespace's deletion alone would leave behind.
pub fn on_signal_cleanup(netns: &Netns, command: &[&str]) {
    BEFORE_DELETE
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((
            netns.name.clone(),
            command.iter().map(|s| s.to_string()).collect(),
        ));
}

/// On SIGINT, SIGTERM or SIGHUP: undo what the run set up (namespaces with their veths, XDP
/// programs, iptables and nftables rules; xdp-filter's pins), then exit. The replayer and the
/// measuring threads die with the process.
pub fn install_signal_cleanup() -> anyhow::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])
        .context("installing signal handlers")?;
    thread::Builder::new()
        .name("mxbench-signals".into())
        .spawn(move || {
            if let Some(signal) = signals.forever().next() {
                eprintln!("bench: signal {signal}, cleaning up");
                STOPPING.store(true, Ordering::SeqCst);
                // Taken and kept until exit: no namespace can appear behind our back.
                let live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
                let before = BEFORE_DELETE
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone();
                for (name, command) in before {
                    let _ = Command::new("nsenter")
                        .arg(format!("--net=/run/netns/{name}"))
                        .arg("--")
                        .args(&command)
                        .stderr(Stdio::null())
                        .status();
                }
                for name in live.iter() {
                    let _ = Command::new("ip").args(["netns", "del", name]).status();
                }
                std::process::exit(128 + signal);
            }
        })
        .context("spawning the signal thread")?;
    Ok(())
}

/// Connects `a:a_if` and `b:b_if` with a veth pair, both ends up.
pub fn veth(a: &Netns, a_if: &str, b: &Netns, b_if: &str) -> anyhow::Result<()> {
    run(Command::new("ip").args([
        "link",
        "add",
        a_if,
        "netns",
        a.name(),
        "type",
        "veth",
        "peer",
        "name",
        b_if,
        "netns",
        b.name(),
    ]))?;
    a.ip(&["link", "set", a_if, "up"])?;
    b.ip(&["link", "set", b_if, "up"])?;
    Ok(())
}

/// Deletes benchmark namespaces whose creating process is gone (a run killed by SIGKILL or a
/// crash cannot clean up after itself). Namespaces of live processes are left alone.
pub fn sweep_stale() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!("bench: removing stale namespace {name} (pid {pid} is gone)");
            let _ = Command::new("ip").args(["netns", "del", &name]).status();
        }
    }
}
