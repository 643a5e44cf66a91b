//! The configuration file: `check-config`, command-line overrides, and SIGHUP reloads (a good
//! one applied without detaching, a bad one rejected with the running configuration kept).

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use test_kit::{
    lab::MailLab,
    pins::TestPins,
    process::{Daemon, mxguard_bin, mxguard_output as mxguard, status_json},
};

/// A config file in a private temporary directory, removed on drop.
struct ConfigFile {
    dir: PathBuf,
}

impl ConfigFile {
    fn new(text: &str) -> ConfigFile {
        let dir = std::env::temp_dir().join(format!(
            "mxguard-config-{}-{}",
            std::process::id(),
            fastrand_id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let file = ConfigFile { dir };
        file.write(text);
        file
    }

    fn path(&self) -> PathBuf {
        self.dir.join("mxguard.toml")
    }

    fn arg(&self) -> String {
        self.path().display().to_string()
    }

    /// Replaces the file atomically, as an editor or config manager would.
    fn write(&self, text: &str) {
        let tmp = self.dir.join("mxguard.toml.new");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.path()).unwrap();
    }
}

impl Drop for ConfigFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn fastrand_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

fn smtp(port: u16) -> SocketAddr {
    SocketAddr::new(MailLab::SERVER.v4.into(), port)
}

#[test]
fn check_config_prints_the_effective_configuration_and_flags_override_the_file() {
    let lab = MailLab::new();
    let config = ConfigFile::new(
        "iface = [\"eth0\"]\nport = [2525]\nallow = [\"192.0.2.10\"]\naction = \"reject\"\nstats-interval = \"5s\"\n\
         allow-spf = [\"_netblocks.mx.test\"]\ndns-allow-within = [\"192.0.2.0/24\"]\n",
    );
    let output = mxguard(
        &lab.server,
        &[
            "check-config",
            "--config",
            &config.arg(),
            "--port",
            "25",
            "--port",
            "26",
        ],
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let effective = String::from_utf8_lossy(&output.stdout);
    assert!(
        effective.contains("port = [\n    25,\n    26,\n]")
            || effective.contains("port = [25, 26]"),
        "{effective}"
    );
    assert!(effective.contains("action = \"reject\""), "{effective}");
    assert!(
        effective.contains("allow = [\"192.0.2.10/32\"]"),
        "{effective}"
    );
    assert!(effective.contains("stats-interval = \"5s\""), "{effective}");
    // The DNS guards show, defaults included.
    for guard in [
        "allow-spf = [\"_netblocks.mx.test.\"]",
        "dns-min-prefix-v4 = 12",
        "dns-min-prefix-v6 = 28",
        "dns-max-prefixes = 1024",
        "dns-allow-within = [\"192.0.2.0/24\"]",
        "dns-dnssec = \"off\"",
    ] {
        assert!(effective.contains(guard), "{guard} in:\n{effective}");
    }
}

#[test]
fn check_config_rejects_bad_files_with_the_key_and_line() {
    let lab = MailLab::new();
    let cases = [
        (
            "iface = [\"eth0\"]\nprots = [25]\n",
            &["prots", "line 2"][..],
        ),
        (
            "iface = [\"eth0\"]\nport = [0]\n",
            &["port 0 is out of range"][..],
        ),
        (
            "iface = [\"eth0\"]\nallow = [\"192.0.2.1/24\"]\n",
            &["did you mean 192.0.2.0/24"][..],
        ),
        ("iface = [\"eth9\"]\n", &["unknown interface \"eth9\""][..]),
        ("iface = [\"eth0\"]\naction = \"bounce\"\n", &["action"][..]),
        ("port = [25]\n", &["no interface to protect"][..]),
        (
            "iface = [\"eth0\"]\nallow-spf = [\"spf.mx.test\"]\ndns-min-prefix-v4 = 0\n",
            &["--dns-min-prefix-v4 must be from 1 to 32"][..],
        ),
    ];
    for (text, expected) in cases {
        let config = ConfigFile::new(text);
        let output = mxguard(&lab.server, &["check-config", "--config", &config.arg()]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{text:?} should be rejected");
        for part in expected {
            assert!(
                stderr.contains(part),
                "{text:?}: expected {part:?} in {stderr}"
            );
        }
    }
    let missing = mxguard(
        &lab.server,
        &["check-config", "--config", "/nonexistent/mxguard.toml"],
    );
    assert!(String::from_utf8_lossy(&missing.stderr).contains("cannot read config file"));
}

#[test]
fn sighup_applies_a_good_config_and_rejects_a_bad_one() {
    let lab = MailLab::new();
    let pins = TestPins::new();
    let _smtp = lab.server.listen(25);
    let _alt = lab.server.listen(2525);
    let config = ConfigFile::new("iface = [\"eth0\"]\nport = [25]\nallow = [\"192.0.2.10\"]\n");
    let mut command = lab.server.command(mxguard_bin());
    command.args([
        "run",
        "--config",
        &config.arg(),
        "--pin-dir",
        pins.arg(),
        "--stats-interval",
        "0",
    ]);
    let mut daemon = Daemon::spawn(command);
    daemon.wait_for("attach", Duration::from_secs(30), |l| {
        l.contains("attached XDP filter")
    });
    assert!(
        lab.direct
            .connect(smtp(25), Duration::from_millis(800))
            .is_err(),
        "25 protected"
    );
    lab.direct
        .connect(smtp(2525), Duration::from_secs(3))
        .expect("2525 open");

    let hup = |daemon: &Daemon| {
        let pid = nix::unistd::Pid::from_raw(daemon.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    };
    // Good: protect 2525 instead of 25, and allow the direct sender too.
    config
        .write("iface = [\"eth0\"]\nport = [2525]\nallow = [\"192.0.2.10\", \"192.0.2.64/30\"]\n");
    hup(&daemon);
    daemon.wait_for("reload", Duration::from_secs(5), |l| {
        l.contains("configuration reloaded")
    });
    lab.direct
        .connect(smtp(25), Duration::from_secs(3))
        .expect("25 released");
    lab.direct
        .connect(smtp(2525), Duration::from_secs(3))
        .expect("direct now allowlisted");
    let status = status_json(&lab.server, pins.arg(), &[]);
    assert_eq!(status["ports"], serde_json::json!([2525]));
    assert_eq!(
        status["allowlist"],
        serde_json::json!(["192.0.2.10/32", "192.0.2.64/30"])
    );

    // Bad: an unknown key. Rejected with a clear line; the running configuration stays.
    config.write("iface = [\"eth0\"]\nport = [25]\nalow = [\"192.0.2.10\"]\n");
    hup(&daemon);
    let line = daemon.wait_for("rejection", Duration::from_secs(5), |l| {
        l.contains("reload rejected")
    });
    assert!(line.contains("alow"), "{line}");
    lab.direct
        .connect(smtp(25), Duration::from_secs(3))
        .expect("still the previous configuration");
    assert!(
        lab.relay
            .connect(smtp(2525), Duration::from_secs(3))
            .is_ok()
    );

    // A reload may not change what needs a restart.
    config.write("iface = [\"eth0\"]\nport = [2525]\nmode = \"generic\"\n");
    hup(&daemon);
    daemon.wait_for("restart-only rejection", Duration::from_secs(5), |l| {
        l.contains("reload rejected") && l.contains("only with a restart")
    });
    assert!(daemon.stop().success());
}

#[test]
fn a_reload_from_monitor_to_drop_waits_for_a_first_address() {
    let lab = MailLab::new();
    let pins = TestPins::new();
    let _smtp = lab.server.listen(25);
    // A name no DNS server answers for (nothing listens on the server's port 9), and no
    // state file: the allowlist stays empty.
    let state = ConfigFile::new("");
    let text = |action: &str| {
        format!(
            "iface = [\"eth0\"]\naction = \"{action}\"\nallow-host = [\"relay.mx.test\"]\n\
             dns-server = [\"127.0.0.1:9\"]\ndns-timeout = \"300ms\"\nstate-dir = \"{}\"\n",
            state.dir.display()
        )
    };
    let config = ConfigFile::new(&text("monitor"));
    let mut command = lab.server.command(mxguard_bin());
    command.args(["run", "--config", &config.arg(), "--pin-dir", pins.arg()]);
    command.args(["--stats-interval", "0", "--detach-on-exit"]);
    let mut daemon = Daemon::spawn(command);
    daemon.wait_for("attach", Duration::from_secs(30), |l| {
        l.contains("attached XDP filter")
    });
    config.write(&text("drop"));
    let pid = nix::unistd::Pid::from_raw(daemon.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    daemon.wait_for("reload", Duration::from_secs(5), |l| {
        l.contains("configuration reloaded")
    });
    let status = status_json(&lab.server, pins.arg(), &[]);
    assert_eq!(
        status["action"], "monitor",
        "an empty allowlist must not turn into drop-everything on a reload: {status:#}"
    );
    lab.direct
        .connect(smtp(25), Duration::from_secs(3))
        .expect("port 25 still passes while nothing is allowlisted");
    assert!(daemon.stop().success());
}
