//! Network namespaces joined by veth pairs. Every namespace is named `mxg<pid>-<n>-<tag>` and
//! deleted on drop (also when a test panics), with everything inside it: veth ends, XDP
//! attachments, iptables and nftables rules. Names carry the creating pid, so parallel tests
//! and runs never collide, and [`sweep_stale`] can remove what a killed run left behind;
//! [`install_signal_cleanup`] covers the runs that are stopped by a signal.

use std::{
    ffi::OsStr,
    fs::File,
    net::{SocketAddr, TcpListener, TcpStream},
    path::Path,
    process::{Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread,
    time::Duration,
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
const PREFIX: &str = "mxg";

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

/// `ip ARGS`.
pub fn ip(args: &[&str]) -> anyhow::Result<String> {
    run(Command::new("ip").args(args))
}

/// A named network namespace, deleted on drop.
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `mxg<pid>-<n>-<tag>` with its loopback up.
    pub fn new(tag: &str) -> anyhow::Result<Netns> {
        crate::root::ensure_root("creating a network namespace")?;
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let name = format!("{PREFIX}{}-{id}-{tag}", std::process::id());
        {
            // Held while creating, so the signal handler (which takes it and never lets go)
            // sees every namespace that exists.
            let mut live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
            if STOPPING.load(Ordering::SeqCst) {
                bail!("stopping on a signal");
            }
            ip(&["netns", "add", &name])?;
            live.push(name.clone());
        }
        let netns = Netns { name };
        netns.ip(&["link", "set", "lo", "up"])?;
        Ok(netns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n NAME ARGS`; returns stdout.
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<String> {
        run(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// A command that runs `program` in this namespace's network stack only. Unlike `ip netns
    /// exec` it keeps the host's mount namespace, so the program sees the host's bpffs: pins
    /// outlive it, and libxdp tools find their pinned maps.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        command_in(&self.name, program)
    }

    /// Writes a sysctl inside the namespace (through /proc/sys of a thread that entered it).
    pub fn sysctl(&self, key: &str, value: &str) -> anyhow::Result<()> {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        let value = value.to_owned();
        self.enter(move || std::fs::write(&path, value).with_context(|| format!("writing {path}")))?
    }

    /// Runs `f` on a thread that has entered this namespace; sockets and netlink requests made
    /// in `f` belong to the namespace, and sockets stay there after `f` returns.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
        enter_named(&self.name, f)
    }

    /// Runs `f` on a background thread inside this namespace.
    pub fn spawn(&self, f: impl FnOnce() + Send + 'static) -> thread::JoinHandle<()> {
        let path = format!("/run/netns/{}", self.name);
        let file = File::open(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
        thread::spawn(move || {
            setns(&file, CloneFlags::CLONE_NEWNET).unwrap_or_else(|e| panic!("setns {path}: {e}"));
            f()
        })
    }

    /// Tries a TCP connect from this namespace to `addr`.
    pub fn connect(&self, addr: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
        self.enter(move || TcpStream::connect_timeout(&addr, timeout))
            .map_err(std::io::Error::other)?
    }

    /// Listens on `port` (all addresses, IPv4 and IPv6) in this namespace; panics if it cannot,
    /// since a test without its listener would test nothing.
    pub fn listen(&self, port: u16) -> Listener {
        let listener = self
            .enter(move || TcpListener::bind(("::", port)))
            .and_then(|bound| Ok(bound?))
            .unwrap_or_else(|e| panic!("binding port {port} in {}: {e:#}", self.name));
        Listener::start(listener)
    }
}

/// A command running `program` in the network namespace `/run/netns/NAME` (see
/// [`Netns::command`]).
pub fn command_in(name: &str, program: impl AsRef<OsStr>) -> Command {
    let path = format!("/run/netns/{name}");
    let mut command = Command::new(program);
    match File::open(&path) {
        Ok(file) => {
            // SAFETY: setns is async-signal-safe; `file` is moved into the closure and stays
            // open until the child execs.
            unsafe {
                use std::os::unix::process::CommandExt as _;
                command.pre_exec(move || {
                    setns(&file, CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)
                });
            }
        }
        Err(error) => {
            // Spawning then fails with this error instead of running in the wrong namespace.
            let code = error.raw_os_error().unwrap_or(nix::libc::ENOENT);
            // SAFETY: the closure only builds an error value from an integer (no allocation).
            unsafe {
                use std::os::unix::process::CommandExt as _;
                command.pre_exec(move || Err(std::io::Error::from_raw_os_error(code)));
            }
        }
    }
    command
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
        // Deleting the namespace also deletes the veth ends inside it.
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
/// programs, iptables and nftables rules, whatever [`on_signal_cleanup`] registered), then
/// exit. Threads working inside the namespaces die with the process.
pub fn install_signal_cleanup() -> anyhow::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])
        .context("installing signal handlers")?;
    thread::Builder::new()
        .name("netns-signals".into())
        .spawn(move || {
            if let Some(signal) = signals.forever().next() {
                eprintln!("signal {signal}: removing the network namespaces");
                STOPPING.store(true, Ordering::SeqCst);
                // Taken and kept until exit: no namespace can appear behind our back.
                let live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
                let before = BEFORE_DELETE
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone();
                for (name, command) in before {
                    if let Some((program, args)) = command.split_first() {
                        let _ = command_in(&name, program)
                            .args(args)
                            .stderr(Stdio::null())
                            .status();
                    }
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
    ip(&[
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
    ])?;
    a.ip(&["link", "set", a_if, "up"])?;
    b.ip(&["link", "set", b_if, "up"])?;
    Ok(())
}

/// Deletes namespaces of ours whose creating process is gone (a run killed by SIGKILL or a
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
            eprintln!("removing stale namespace {name} (pid {pid} is gone)");
            let _ = Command::new("ip").args(["netns", "del", &name]).status();
        }
    }
}

/// Panics unless a TCP connect from `from` to `to` succeeds within 5 s; `context` (say, a
/// daemon's log tail) goes into the message.
pub fn assert_connects(from: &Netns, to: SocketAddr, context: &str) {
    if let Err(error) = from.connect(to, Duration::from_secs(5)) {
        panic!(
            "connect from {} to {to} should succeed: {error}\n{context}",
            from.name()
        );
    }
}

/// Panics unless a TCP connect from `from` to `to` times out (its SYN dropped) within 1.5 s.
pub fn assert_times_out(from: &Netns, to: SocketAddr, context: &str) {
    match from.connect(to, Duration::from_millis(1500)) {
        Ok(_) => panic!(
            "connect from {} to {to} should have been dropped\n{context}",
            from.name()
        ),
        Err(error) => assert_eq!(
            error.kind(),
            std::io::ErrorKind::TimedOut,
            "from {} to {to}: {error}",
            from.name()
        ),
    }
}

/// A TCP listener accepting in the background; counts connections, stops on drop.
pub struct Listener {
    accepted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    worker: Option<thread::JoinHandle<()>>,
}

impl Listener {
    fn start(listener: TcpListener) -> Listener {
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let accepted = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let worker = {
            let (accepted, stop) = (accepted.clone(), stop.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok(_) => {
                            accepted.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => thread::sleep(Duration::from_millis(10)),
                    }
                }
            })
        };
        Listener {
            accepted,
            stop,
            worker: Some(worker),
        }
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}
