//! A private, real Debian Postfix instance for tests and benchmarks, and a `swaks` runner.
//!
//! Each [`Postfix`] lives in its own directory (config, queue, data, maildir, log) under the
//! temp dir, listens on one address and port (on loopback, or inside a network namespace the
//! caller owns) and is stopped, killed and removed on drop, also when a test panics. Nothing of
//! the system's Postfix is used or touched: Debian's package installed with "No configuration"
//! has no /etc/postfix/main.cf, and every instance runs from its own `-c DIR`.
//!
//! ```no_run
//! # use test_kit::postfix::{PostfixConfig, Swaks, Transport};
//! let postfix = PostfixConfig::new("127.0.0.1:2525".parse().unwrap())
//!     .transport(Transport::Maildir)
//!     .milter("inet:127.0.0.1:9900", "tempfail")
//!     .start()
//!     .unwrap();
//! let sent = Swaks::new(postfix.addr()).header("X-Test", "1").run();
//! assert_eq!(sent.code, 0, "{}", sent.transcript);
//! postfix.wait_delivered(1, std::time::Duration::from_secs(10)).unwrap();
//! ```

use std::{
    ffi::OsStr,
    io::{BufRead as _, BufReader},
    net::{IpAddr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::atomic::{AtomicUsize, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::netns::{Netns, command_in, enter_named, run};

static NEXT_ID: AtomicUsize = AtomicUsize::new(0);

/// Where accepted mail goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// Postfix's `discard` transport: delivered and thrown away (the fastest; for load).
    Discard,
    /// One maildir for every recipient, read back with [`Postfix::delivered`].
    Maildir,
    /// Every accepted mail is put on hold ([`Postfix::hold_queue`]); nothing is delivered.
    Hold,
}

/// How to build the instance; [`PostfixConfig::start`] starts it.
#[derive(Clone, Debug)]
pub struct PostfixConfig {
    listen: SocketAddr,
    also_listen: Vec<SocketAddr>,
    netns: Option<String>,
    milter: Option<(String, String)>,
    milter_timeout: Option<Duration>,
    transport: Transport,
    params: Vec<(String, String)>,
}

impl PostfixConfig {
    /// An instance whose smtpd listens on `listen`, delivering to maildir, without a milter.
    pub fn new(listen: SocketAddr) -> PostfixConfig {
        PostfixConfig {
            listen,
            also_listen: Vec::new(),
            netns: None,
            milter: None,
            milter_timeout: None,
            transport: Transport::Maildir,
            params: Vec::new(),
        }
    }

    /// One more smtpd service on `addr` (say, the same port on an IPv6 address).
    pub fn also_listen(mut self, addr: SocketAddr) -> PostfixConfig {
        self.also_listen.push(addr);
        self
    }

    /// Runs every Postfix process inside `netns` (network stack only; the file system is the
    /// host's). `netns` must outlive the instance.
    pub fn netns(mut self, netns: &Netns) -> PostfixConfig {
        self.netns = Some(netns.name().to_owned());
        self
    }

    /// `smtpd_milters = ENDPOINT` (`inet:HOST:PORT` or `unix:PATH`) with
    /// `milter_default_action = ACTION` (accept, reject, tempfail, quarantine).
    pub fn milter(mut self, endpoint: &str, default_action: &str) -> PostfixConfig {
        self.milter = Some((endpoint.to_owned(), default_action.to_owned()));
        self
    }

    /// Sets `milter_connect_timeout`, `milter_command_timeout` and `milter_content_timeout`.
    pub fn milter_timeout(mut self, timeout: Duration) -> PostfixConfig {
        self.milter_timeout = Some(timeout);
        self
    }

    pub fn transport(mut self, transport: Transport) -> PostfixConfig {
        self.transport = transport;
        self
    }

    /// Any further main.cf parameter (applied last, so it overrides the fixture's own).
    pub fn param(mut self, name: &str, value: &str) -> PostfixConfig {
        self.params.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Creates the directory, writes the configuration, starts Postfix and waits until its
    /// SMTP port answers with a 220 banner.
    pub fn start(self) -> anyhow::Result<Postfix> {
        crate::root::ensure_root("starting a private Postfix")?;
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("mxguard-postfix-{}-{id}", std::process::id()));
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        }
        // From here on Drop cleans up, whatever fails.
        let postfix = Postfix { dir, config: self };
        postfix.write_config()?;
        postfix.postfix(&["start"])?;
        postfix.wait_listening(Duration::from_secs(20))?;
        Ok(postfix)
    }
}

/// One message in the Postfix queue (a line of `postqueue -j`).
#[derive(Clone, Debug)]
pub struct QueuedMessage {
    /// `maildrop`, `incoming`, `active`, `deferred` or `hold`.
    pub queue_name: String,
    pub queue_id: String,
    pub sender: String,
    pub recipients: Vec<String>,
}

/// A running private Postfix; stopped and removed on drop.
pub struct Postfix {
    dir: PathBuf,
    config: PostfixConfig,
}

impl Postfix {
    /// The domain the instance accepts mail for.
    pub const DOMAIN: &'static str = "mx.mxguard.test";
    /// A recipient it accepts.
    pub const RECIPIENT: &'static str = "postmaster@mx.mxguard.test";
    const POSTFIX_USER: &'static str = "postfix";

    pub fn addr(&self) -> SocketAddr {
        self.config.listen
    }

    /// The instance's configuration directory (`postfix -c`, `postqueue -c`).
    pub fn config_dir(&self) -> PathBuf {
        self.dir.join("conf")
    }

    fn maildir(&self) -> PathBuf {
        self.dir.join("mail")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("maillog")
    }

    /// A command for one of Postfix's programs, in the instance's namespace if it has one.
    fn command(&self, program: impl AsRef<OsStr>) -> Command {
        match &self.config.netns {
            Some(name) => command_in(name, program),
            None => Command::new(program),
        }
    }

    /// `postconf -c DIR ARGS`; returns stdout.
    pub fn postconf(&self, args: &[&str]) -> anyhow::Result<String> {
        run(Command::new("postconf")
            .arg("-c")
            .arg(self.config_dir())
            .args(args))
    }

    /// `postfix -c DIR ARGS`. Postfix writes its errors to stderr only when that is a
    /// terminal (otherwise to a log the failed start never opened), so this runs under
    /// `script`, which gives it one and hands the text back.
    fn postfix(&self, args: &[&str]) -> anyhow::Result<String> {
        let command_line = format!(
            "postfix -c {} {}",
            self.config_dir().display(),
            args.join(" ")
        );
        run(self.command("script").args([
            "--quiet",
            "--return",
            "--command",
            &command_line,
            "/dev/null",
        ]))
        .with_context(|| format!("{command_line}\nlog:\n{}", self.log_tail()))
    }

    fn write_config(&self) -> anyhow::Result<()> {
        let conf = self.config_dir();
        for sub in ["conf", "queue", "data", "mail"] {
            std::fs::create_dir_all(self.dir.join(sub))
                .with_context(|| format!("creating {}/{sub}", self.dir.display()))?;
        }
        // The data directory and the maildir belong to the mail system's user.
        for sub in ["data", "mail"] {
            run(Command::new("chown")
                .arg(format!("{0}:{0}", Self::POSTFIX_USER))
                .arg(self.dir.join(sub)))?;
        }
        std::fs::write(conf.join("main.cf"), "")
            .with_context(|| format!("writing {}/main.cf", conf.display()))?;
        std::fs::copy("/usr/share/postfix/master.cf.dist", conf.join("master.cf"))
            .context("copying /usr/share/postfix/master.cf.dist (is postfix installed?)")?;

        // master.cf: no chroot (the private dirs are outside any chroot), and the only inet
        // service is smtpd on our address and port.
        self.postconf(&["-F", "*/*/chroot = n"])?;
        self.postconf(&["-MX", "smtp/inet"])?;
        for addr in std::iter::once(&self.config.listen).chain(&self.config.also_listen) {
            let service = match addr.ip() {
                IpAddr::V4(ip) => format!("{ip}:{}", addr.port()),
                IpAddr::V6(ip) => format!("[{ip}]:{}", addr.port()),
            };
            self.postconf(&[
                "-M",
                &format!("{service}/inet = {service} inet n - n - - smtpd"),
            ])?;
        }

        let dir = self.dir.display().to_string();
        let uid = nix::unistd::User::from_name(Self::POSTFIX_USER)
            .context("looking up the postfix user")?
            .context("no postfix user (is postfix installed?)")?;
        let mut params: Vec<(String, String)> = [
            ("compatibility_level", "3.6".to_owned()),
            ("queue_directory", format!("{dir}/queue")),
            ("data_directory", format!("{dir}/data")),
            // The postlog service (enabled in master.cf.dist) writes it.
            ("maillog_file", format!("{dir}/maillog")),
            ("maillog_file_prefixes", dir.clone()),
            // The explicit service address above limits what smtpd binds; "all" avoids
            // Postfix's check that a 127.x other than 127.0.0.1 is an interface address.
            ("inet_interfaces", "all".to_owned()),
            ("myhostname", Self::DOMAIN.to_owned()),
            ("mydomain", "mxguard.test".to_owned()),
            ("mydestination", String::new()),
            ("biff", "no".to_owned()),
            // No local delivery, so no aliases (Debian has no /etc/aliases.db here).
            ("alias_maps", String::new()),
            ("alias_database", String::new()),
            // No DNS from tests: no reverse lookups of clients, no lookups when relaying.
            ("smtpd_peername_lookup", "no".to_owned()),
            ("smtp_dns_support_level", "disabled".to_owned()),
            ("smtpd_error_sleep_time", "0".to_owned()),
            (
                "default_transport",
                "error:this test server only takes local mail".to_owned(),
            ),
            ("virtual_mailbox_domains", Self::DOMAIN.to_owned()),
            ("virtual_mailbox_base", format!("{dir}/mail")),
            // One maildir ("delivered/", the slash makes it a maildir) for every recipient.
            ("virtual_mailbox_maps", "static:delivered/".to_owned()),
            ("virtual_uid_maps", format!("static:{}", uid.uid)),
            ("virtual_gid_maps", format!("static:{}", uid.gid)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let mut push = |k: &str, v: String| params.push((k.to_owned(), v));
        match self.config.transport {
            Transport::Maildir => {}
            Transport::Discard => push("virtual_transport", "discard:".to_owned()),
            Transport::Hold => push(
                "smtpd_end_of_data_restrictions",
                "check_client_access static:HOLD".to_owned(),
            ),
        }
        if let Some((endpoint, action)) = &self.config.milter {
            push("smtpd_milters", endpoint.clone());
            push("milter_default_action", action.clone());
        }
        if let Some(timeout) = self.config.milter_timeout {
            let value = format!("{}ms", timeout.as_millis().max(1));
            for name in [
                "milter_connect_timeout",
                "milter_command_timeout",
                "milter_content_timeout",
            ] {
                push(name, value.clone());
            }
        }
        params.extend(self.config.params.iter().cloned());
        self.postconf_set(&params)
    }

    fn postconf_set(&self, params: &[(String, String)]) -> anyhow::Result<()> {
        let mut args = vec!["-e".to_owned()];
        args.extend(params.iter().map(|(k, v)| format!("{k}={v}")));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.postconf(&args).map(drop)
    }

    /// Changes main.cf parameters and reloads; new smtpd processes (every connection after
    /// this returns) use them.
    pub fn set_params(&self, params: &[(&str, &str)]) -> anyhow::Result<()> {
        let owned: Vec<(String, String)> = params
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        self.postconf_set(&owned)?;
        self.reload()
    }

    /// `postfix reload`, waiting until the master logged that it re-read its configuration.
    pub fn reload(&self) -> anyhow::Result<()> {
        let before = self.log().matches("reload -- version").count();
        self.postfix(&["reload"])?;
        self.wait_log("the reload", Duration::from_secs(10), |log| {
            log.matches("reload -- version").count() > before
        })
        .map(drop)?;
        // Idle smtpd processes of the old generation exit when the master closes their
        // status channel; give them a moment so the next connection meets a new one.
        thread::sleep(Duration::from_millis(300));
        Ok(())
    }

    fn wait_listening(&self, timeout: Duration) -> anyhow::Result<()> {
        let addr = self.config.listen;
        let deadline = Instant::now() + timeout;
        loop {
            let banner = self.in_netns(move || -> std::io::Result<String> {
                let stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
                stream.set_read_timeout(Some(Duration::from_secs(5)))?;
                let mut line = String::new();
                BufReader::new(stream).read_line(&mut line)?;
                Ok(line)
            })?;
            match banner {
                Ok(line) if line.starts_with("220") => return Ok(()),
                Ok(line) => bail!("{addr} answered {line:?} instead of a 220 banner"),
                Err(error) if Instant::now() > deadline => {
                    bail!(
                        "Postfix did not answer on {addr}: {error}\nlog:\n{}",
                        self.log_tail()
                    )
                }
                Err(_) => thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    fn in_netns<T: Send>(&self, f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
        match &self.config.netns {
            Some(name) => enter_named(name, f),
            None => Ok(f()),
        }
    }

    /// Postfix's log so far (its `maillog_file`).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The last lines of the log, for failure messages.
    pub fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Waits until the whole log satisfies `matches`; returns it.
    pub fn wait_log(
        &self,
        what: &str,
        timeout: Duration,
        matches: impl Fn(&str) -> bool,
    ) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.log();
            if matches(&log) {
                return Ok(log);
            }
            if Instant::now() > deadline {
                bail!(
                    "timed out waiting for {what} in Postfix's log:\n{}",
                    self.log_tail()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Every message in the queue (`postqueue -j`).
    pub fn queue(&self) -> anyhow::Result<Vec<QueuedMessage>> {
        let output = run(Command::new("postqueue")
            .arg("-c")
            .arg(self.config_dir())
            .arg("-j"))?;
        output
            .lines()
            .filter(|line| !line.trim().is_empty())
            .map(|line| {
                let value: serde_json::Value = serde_json::from_str(line)
                    .with_context(|| format!("postqueue -j printed {line:?}"))?;
                let text = |key: &str| value[key].as_str().unwrap_or_default().to_owned();
                Ok(QueuedMessage {
                    queue_name: text("queue_name"),
                    queue_id: text("queue_id"),
                    sender: text("sender"),
                    recipients: value["recipients"]
                        .as_array()
                        .map(|all| {
                            all.iter()
                                .filter_map(|r| r["address"].as_str().map(str::to_owned))
                                .collect()
                        })
                        .unwrap_or_default(),
                })
            })
            .collect()
    }

    /// The messages on hold (quarantined by a milter, or [`Transport::Hold`]).
    pub fn hold_queue(&self) -> anyhow::Result<Vec<QueuedMessage>> {
        Ok(self
            .queue()?
            .into_iter()
            .filter(|message| message.queue_name == "hold")
            .collect())
    }

    /// The queue ids of every queued message.
    pub fn queue_ids(&self) -> anyhow::Result<Vec<String>> {
        Ok(self.queue()?.into_iter().map(|m| m.queue_id).collect())
    }

    /// The full text (headers and body) of every mail delivered to the maildir, oldest first.
    pub fn delivered(&self) -> Vec<String> {
        let mut files: Vec<(std::time::SystemTime, PathBuf)> = ["new", "cur"]
            .iter()
            .filter_map(|sub| std::fs::read_dir(self.maildir().join("delivered").join(sub)).ok())
            .flat_map(|entries| entries.flatten())
            .map(|entry| {
                let modified = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .unwrap_or(std::time::UNIX_EPOCH);
                (modified, entry.path())
            })
            .collect();
        files.sort();
        files
            .iter()
            .filter_map(|(_, path)| std::fs::read_to_string(path).ok())
            .collect()
    }

    /// Waits until at least `count` mails were delivered to the maildir; returns them all.
    pub fn wait_delivered(&self, count: usize, timeout: Duration) -> anyhow::Result<Vec<String>> {
        let deadline = Instant::now() + timeout;
        loop {
            let delivered = self.delivered();
            if delivered.len() >= count {
                return Ok(delivered);
            }
            if Instant::now() > deadline {
                bail!(
                    "{} of {count} mails delivered in {timeout:?}\nlog:\n{}",
                    delivered.len(),
                    self.log_tail()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops Postfix (`postfix stop`) and removes its directory.
    pub fn stop(self) -> anyhow::Result<()> {
        let stopped = self.postfix(&["stop"]).map(drop);
        drop(self);
        stopped
    }

    fn processes(&self) -> Vec<i32> {
        instance_pids(&self.config_dir())
    }
}

/// The pids of the processes of the instance configured in `config_dir`: Postfix passes
/// `MAIL_CONFIG=DIR` to every daemon it starts. Empty once an instance is gone.
pub fn instance_pids(config_dir: &Path) -> Vec<i32> {
    let marker = format!("MAIL_CONFIG={}", config_dir.display());
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .map(|environ| {
                    environ
                        .split(|b| *b == 0)
                        .any(|var| var == marker.as_bytes())
                })
                .unwrap_or(false)
        })
        .collect()
}

impl Drop for Postfix {
    fn drop(&mut self) {
        // `abort` is a no-op once `stop` ran; it kills the master at once otherwise.
        let _ = self.postfix(&["abort"]);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let left = self.processes();
            if left.is_empty() {
                break;
            }
            let signal = if Instant::now() > deadline {
                nix::sys::signal::Signal::SIGKILL
            } else {
                nix::sys::signal::Signal::SIGTERM
            };
            for pid in left {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
            }
            thread::sleep(Duration::from_millis(100));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A loopback-style address for an instance: `ip` with a port that was free a moment ago.
pub fn free_addr(ip: IpAddr) -> SocketAddr {
    let listener = std::net::TcpListener::bind((ip, 0))
        .unwrap_or_else(|e| panic!("binding {ip}:0 to find a free port: {e}"));
    listener.local_addr().expect("bound address")
}

/// A `swaks` run: one SMTP transaction, by default from `sender@relay.test` to
/// [`Postfix::RECIPIENT`].
#[derive(Clone, Debug)]
pub struct Swaks {
    args: Vec<String>,
    netns: Option<String>,
}

/// What a `swaks` run gave.
#[derive(Clone, Debug)]
pub struct SwaksOutcome {
    /// swaks' exit code: 0 accepted, 23 refused at MAIL, 24 at RCPT, 25 at DATA, 26 refused
    /// after the data (a milter's verdict), 2 no connection, 6 connection closed.
    pub code: i32,
    /// The SMTP conversation as swaks printed it, plus its stderr.
    pub transcript: String,
}

impl SwaksOutcome {
    /// The queue id from a `250 ... queued as ID` reply.
    pub fn queue_id(&self) -> Option<&str> {
        let (_, rest) = self.transcript.split_once("queued as ")?;
        rest.split_whitespace().next()
    }

    /// The server's reply to the end of the data (the line after the lone "."), if it came.
    pub fn data_reply(&self) -> Option<&str> {
        let mut lines = self.transcript.lines().skip_while(|l| l.trim() != "-> .");
        lines.next()?;
        lines
            .next()
            .map(|l| l.trim_start_matches("<** ").trim_start_matches("<-  "))
    }
}

impl Swaks {
    pub fn new(server: SocketAddr) -> Swaks {
        let server = match server.ip() {
            IpAddr::V4(ip) => format!("{ip}:{}", server.port()),
            IpAddr::V6(ip) => format!("[{ip}]:{}", server.port()),
        };
        Swaks {
            args: vec![
                "--server".into(),
                server,
                "--to".into(),
                Postfix::RECIPIENT.into(),
                "--from".into(),
                "sender@relay.test".into(),
                "--helo".into(),
                "client.test".into(),
                "--timeout".into(),
                "30".into(),
            ],
            netns: None,
        }
    }

    /// Runs swaks inside `netns`.
    pub fn netns(mut self, netns: &Netns) -> Swaks {
        self.netns = Some(netns.name().to_owned());
        self
    }

    /// The source address to connect from (e.g. 127.0.0.7 for a distinct loopback client).
    pub fn local_interface(self, addr: IpAddr) -> Swaks {
        self.arg("--local-interface").arg(&addr.to_string())
    }

    pub fn to(self, recipient: &str) -> Swaks {
        self.arg("--to").arg(recipient)
    }

    pub fn from(self, sender: &str) -> Swaks {
        self.arg("--from").arg(sender)
    }

    /// Adds a header line `NAME: VALUE` (repeatable; the same name twice gives two headers).
    pub fn header(self, name: &str, value: &str) -> Swaks {
        self.arg("--add-header").arg(&format!("{name}: {value}"))
    }

    pub fn body(self, body: &str) -> Swaks {
        self.arg("--body").arg(body)
    }

    /// Any further swaks argument.
    pub fn arg(mut self, arg: &str) -> Swaks {
        self.args.push(arg.to_owned());
        self
    }

    /// Runs the transaction; panics only if swaks cannot be started at all.
    pub fn run(&self) -> SwaksOutcome {
        let mut command = match &self.netns {
            Some(name) => command_in(name, "swaks"),
            None => Command::new("swaks"),
        };
        let output = command
            .args(&self.args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running swaks (is it installed?): {e}"));
        let mut transcript = String::from_utf8_lossy(&output.stdout).into_owned();
        transcript.push_str(&String::from_utf8_lossy(&output.stderr));
        SwaksOutcome {
            code: output.status.code().unwrap_or(-1),
            transcript,
        }
    }
}
