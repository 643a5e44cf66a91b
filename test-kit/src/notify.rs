//! A NOTIFY_SOCKET a test listens on, and `mxguard run` started with systemd's environment:
//! how the readiness and package tests see the daemon's sd_notify messages.

use std::{
    os::unix::net::UnixDatagram,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use crate::{lab::MailLab, pins::TestPins, process::Daemon};

static NEXT_SOCKET: AtomicUsize = AtomicUsize::new(0);

/// A NOTIFY_SOCKET: a unix datagram socket collecting every message sent to it.
pub struct NotifySocket {
    path: PathBuf,
    messages: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl NotifySocket {
    pub fn bind() -> NotifySocket {
        let path = std::env::temp_dir().join(format!(
            "mxguard-notify-{}-{}.sock",
            std::process::id(),
            NEXT_SOCKET.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_file(&path);
        let socket = UnixDatagram::bind(&path).expect("binding the notify socket");
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("socket timeout");
        let messages = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        {
            let (messages, stop) = (messages.clone(), stop.clone());
            thread::spawn(move || {
                let mut buffer = [0u8; 4096];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(len) = socket.recv(&mut buffer) {
                        let text = String::from_utf8_lossy(&buffer[..len]).into_owned();
                        messages.lock().expect("messages lock").push(text);
                    }
                }
            });
        }
        NotifySocket {
            path,
            messages,
            stop,
        }
    }

    pub fn count(&self) -> usize {
        self.messages.lock().expect("messages lock").len()
    }

    /// The first message from index `from` on with every line of `lines`; panics (listing what
    /// arrived) after `timeout`.
    pub fn wait_for(
        &self,
        from: usize,
        lines: &[&str],
        timeout: Duration,
        daemon: &Daemon,
    ) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            {
                let messages = self.messages.lock().expect("messages lock");
                if let Some(found) = messages.iter().skip(from).find(|message| {
                    lines
                        .iter()
                        .all(|line| message.lines().any(|l| l.starts_with(line)))
                }) {
                    return found.clone();
                }
                assert!(
                    Instant::now() < deadline,
                    "no notification with {lines:?} in {:?}\n{}",
                    &messages[from.min(messages.len())..],
                    daemon.log_tail()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = std::fs::remove_file(&self.path);
    }
}

/// `mxguard run` from `bin` in the lab's server, on its own pins, with systemd's environment
/// (NOTIFY_SOCKET, a 1 s watchdog) and an empty configuration file (an installed package's
/// /etc/mxguard/mxguard.toml must not be read).
pub fn start_notified(
    lab: &MailLab,
    pins: &TestPins,
    bin: &Path,
    notify: &NotifySocket,
    extra: &[&str],
) -> Daemon {
    let mut command = lab.server.command(bin);
    command
        .args(["run", "--config", "/dev/null", "--iface", "eth0"])
        .args(["--pin-dir", pins.arg(), "--stats-interval", "0"])
        .args(extra)
        .env("NOTIFY_SOCKET", &notify.path)
        .env("WATCHDOG_USEC", "1000000")
        .env("RUST_LOG", "info");
    Daemon::spawn(command)
}

/// READY=1 with STATUS=, WATCHDOG=1 at half the interval, RELOADING=1 then READY=1 on SIGHUP.
pub fn check_readiness(daemon: &mut Daemon, notify: &NotifySocket, expected_status: &str) {
    let ready = notify.wait_for(0, &["READY=1", "STATUS="], Duration::from_secs(30), daemon);
    assert!(ready.contains(expected_status), "{ready:?}");
    // Logged before READY=1 is sent (the log pipe may lag the datagram a little).
    daemon.wait_for("attach before READY=1", Duration::from_secs(2), |l| {
        l.contains("attached XDP filter")
    });
    let after_ready = notify.count();
    notify.wait_for(after_ready, &["WATCHDOG=1"], Duration::from_secs(3), daemon);

    let before_hup = notify.count();
    let pid = nix::unistd::Pid::from_raw(daemon.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).expect("SIGHUP");
    let reloading = notify.wait_for(
        before_hup,
        &["RELOADING=1", "MONOTONIC_USEC="],
        Duration::from_secs(10),
        daemon,
    );
    let reloading_at = {
        let messages = notify.messages.lock().expect("messages lock");
        messages
            .iter()
            .skip(before_hup)
            .position(|m| *m == reloading)
            .expect("just seen")
            + before_hup
    };
    let ready_again = notify.wait_for(
        reloading_at + 1,
        &["READY=1", "STATUS="],
        Duration::from_secs(10),
        daemon,
    );
    assert!(ready_again.contains(expected_status), "{ready_again:?}");
}
