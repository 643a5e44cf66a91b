//! Running the real `mxguard` binary as a child process, killed on drop.

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

/// The `mxguard` binary: `$MXGUARD_BIN`, else `target/<profile>/mxguard` next to the test.
pub fn mxguard_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("MXGUARD_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test>-<hash> -> target/<profile>/mxguard
    let path = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target dir")
        .join("mxguard");
    assert!(
        path.is_file(),
        "{} not found: build it first (cargo build -p filter-user) or set MXGUARD_BIN",
        path.display()
    );
    path
}

/// Runs `mxguard ARGS` to completion inside `netns` (status, detach, check-config).
pub fn mxguard_output(netns: &crate::netns::Netns, args: &[&str]) -> std::process::Output {
    netns
        .command(mxguard_bin())
        .args(args)
        .output()
        .expect("running mxguard")
}

/// `mxguard status --json --interval 0 --pin-dir PIN_DIR EXTRA` inside `netns`, parsed; panics
/// unless it succeeds and prints JSON.
pub fn status_json(
    netns: &crate::netns::Netns,
    pin_dir: &str,
    extra: &[&str],
) -> serde_json::Value {
    let mut args = vec!["status", "--json", "--interval", "0", "--pin-dir", pin_dir];
    args.extend_from_slice(extra);
    let output = mxguard_output(netns, &args);
    assert!(
        output.status.success(),
        "status failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("status --json prints JSON")
}

/// A running child whose stderr lines are collected; SIGTERM then SIGKILL on drop.
pub struct Daemon {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Daemon {
    /// Starts `command` with stderr captured (stdout too, merged into the same log).
    pub fn spawn(mut command: Command) -> Daemon {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {command:?}: {e}"));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        for stream in [
            Box::new(stdout) as Box<dyn std::io::Read + Send>,
            Box::new(stderr),
        ] {
            let lines = lines.clone();
            thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    lines.lock().expect("log lock").push(line);
                }
            });
        }
        Daemon { child, lines }
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Everything the child printed so far.
    pub fn log(&self) -> String {
        self.lines.lock().expect("log lock").join("\n")
    }

    /// The last lines the child printed, for failure messages.
    pub fn log_tail(&self) -> String {
        let lines = self.lines.lock().expect("log lock");
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Waits until a printed line satisfies `matches`, returning it; panics with the log on
    /// timeout or if the child exits first.
    pub fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        matches: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self
                .lines
                .lock()
                .expect("log lock")
                .iter()
                .find(|l| matches(l))
            {
                return line.clone();
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                thread::sleep(Duration::from_millis(100));
                panic!(
                    "mxguard exited ({status}) before {what}:\n{}",
                    self.log_tail()
                );
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}:\n{}",
                self.log_tail()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                return self.child.wait().expect("wait after kill");
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for the child to exit by itself (for commands expected to fail fast).
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                thread::sleep(Duration::from_millis(100));
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "process still running:\n{}",
                self.log_tail()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop();
        }
    }
}

/// The body of `GET /metrics` from the daemon's Prometheus endpoint at `addr`, fetched from
/// inside `netns`; panics unless the answer is 200.
pub fn scrape_metrics(netns: &crate::netns::Netns, addr: std::net::SocketAddr) -> String {
    netns
        .enter(move || {
            use std::io::{Read, Write};
            let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))
                .expect("metrics port");
            stream
                .write_all(b"GET /metrics HTTP/1.1\r\nHost: mxguard\r\nConnection: close\r\n\r\n")
                .expect("sending the request");
            let mut response = String::new();
            stream
                .read_to_string(&mut response)
                .expect("reading the answer");
            assert!(response.starts_with("HTTP/1.1 200"), "{response}");
            response
                .split_once("\r\n\r\n")
                .map(|(_, body)| body.to_owned())
                .unwrap_or_default()
        })
        .expect("entering the namespace")
}
