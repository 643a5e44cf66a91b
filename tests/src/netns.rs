//! Network namespaces joined by veth pairs, created by the test and removed on drop (also when
//! the test panics). Names include the pid, so parallel tests and runs never collide.

use std::{
    fs::File,
    net::{SocketAddr, TcpListener, TcpStream},
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread,
    time::Duration,
};

use nix::sched::{CloneFlags, setns};

static NEXT_ID: AtomicUsize = AtomicUsize::new(0);

/// Runs `ip ARGS`, panicking with its stderr on failure.
pub fn ip(args: &[&str]) {
    let output = Command::new("ip")
        .args(args)
        .output()
        .expect("running ip (iproute2)");
    assert!(
        output.status.success(),
        "ip {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A named network namespace, deleted on drop.
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `mxg<pid>-<n>-<tag>` with its loopback up.
    pub fn new(tag: &str) -> Netns {
        crate::harness::require_root();
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let name = format!("mxg{}-{id}-{tag}", std::process::id());
        ip(&["netns", "add", &name]);
        let netns = Netns { name };
        netns.ip(&["link", "set", "lo", "up"]);
        netns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n NAME ARGS`.
    pub fn ip(&self, args: &[&str]) {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        ip(&full);
    }

    /// A command that runs `program` inside this namespace. Unlike `ip netns exec` it keeps
    /// the host's mount namespace, so the program sees the host's bpffs (pins outlive it).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let path = format!("/run/netns/{}", self.name);
        let file = File::open(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
        let mut command = Command::new(program);
        // SAFETY: setns is async-signal-safe; `file` is moved into the closure and stays open
        // until the child execs.
        unsafe {
            use std::os::unix::process::CommandExt as _;
            command.pre_exec(move || {
                setns(&file, CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)
            });
        }
        command
    }

    /// Runs `f` on a thread that has entered this namespace. Sockets created inside `f` stay
    /// in the namespace after `f` returns.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.name);
        thread::spawn(move || {
            let file = File::open(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
            setns(&file, CloneFlags::CLONE_NEWNET).unwrap_or_else(|e| panic!("setns {path}: {e}"));
            f()
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
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
        self.run(move || TcpStream::connect_timeout(&addr, timeout))
    }

    /// Listens on `port` (all addresses, IPv4 and IPv6) in this namespace.
    pub fn listen(&self, port: u16) -> Listener {
        let listener = self
            .run(move || TcpListener::bind(("::", port)))
            .unwrap_or_else(|e| panic!("binding port {port} in {}: {e}", self.name));
        Listener::start(listener)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace also deletes the veth ends inside it.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
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

/// Connects `a:a_if` and `b:b_if` with a veth pair, both ends up.
pub fn veth(a: &Netns, a_if: &str, b: &Netns, b_if: &str) {
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
    ]);
    a.ip(&["link", "set", a_if, "up"]);
    b.ip(&["link", "set", b_if, "up"]);
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

/// Addresses of a lab host.
#[derive(Clone, Copy, Debug)]
pub struct HostAddrs {
    pub v4: std::net::Ipv4Addr,
    pub v6: std::net::Ipv6Addr,
}

/// The mail-gateway topology: a switch (a bridge in its own namespace) joining the mail
/// server, the filtering service's relay and a direct sender, each with an `eth0`.
pub struct MailLab {
    pub server: Netns,
    pub relay: Netns,
    pub direct: Netns,
    // Dropped last: the hosts' veth peers live here.
    pub switch: Netns,
}

impl MailLab {
    pub const SERVER: HostAddrs = HostAddrs {
        v4: std::net::Ipv4Addr::new(192, 0, 2, 1),
        v6: std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1),
    };
    pub const RELAY: HostAddrs = HostAddrs {
        v4: std::net::Ipv4Addr::new(192, 0, 2, 10),
        v6: std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10),
    };
    pub const DIRECT: HostAddrs = HostAddrs {
        v4: std::net::Ipv4Addr::new(192, 0, 2, 66),
        v6: std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x66),
    };

    pub fn new() -> MailLab {
        let switch = Netns::new("sw");
        switch.ip(&["link", "add", "br0", "type", "bridge"]);
        switch.ip(&["link", "set", "br0", "up"]);
        let host = |tag: &str, addrs: HostAddrs| {
            let netns = Netns::new(tag);
            let port = format!("p-{tag}");
            veth(&netns, "eth0", &switch, &port);
            switch.ip(&["link", "set", &port, "master", "br0"]);
            netns.ip(&["addr", "add", &format!("{}/24", addrs.v4), "dev", "eth0"]);
            netns.ip(&[
                "addr",
                "add",
                &format!("{}/64", addrs.v6),
                "dev",
                "eth0",
                "nodad",
            ]);
            netns
        };
        let server = host("srv", Self::SERVER);
        let relay = host("rly", Self::RELAY);
        let direct = host("dir", Self::DIRECT);
        MailLab {
            server,
            relay,
            direct,
            switch,
        }
    }
}

impl Default for MailLab {
    fn default() -> Self {
        Self::new()
    }
}
