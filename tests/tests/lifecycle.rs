//! Production lifecycle: the pinned filter outlives the daemon (kill -9 included), a restarted
//! daemon takes it over without a gap, an older pin layout is replaced without a gap, `status`
//! works with the daemon down, and `detach` removes everything.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread,
    time::Duration,
};

use test_kit::{
    lab::MailLab,
    pins::TestPins,
    process::{Daemon, mxguard_bin, mxguard_output as mxguard},
};

fn smtp(ip: impl Into<std::net::IpAddr>) -> SocketAddr {
    SocketAddr::new(ip.into(), 25)
}

fn start(lab: &MailLab, pins: &TestPins) -> Daemon {
    let mut command = lab.server.command(mxguard_bin());
    command
        .args([
            "run",
            "--iface",
            "eth0",
            "--allow",
            "192.0.2.10",
            "--allow",
            "2001:db8::10",
        ])
        .args(["--pin-dir", pins.arg(), "--stats-interval", "0"])
        .env("RUST_LOG", "info");
    let mut daemon = Daemon::spawn(command);
    daemon.wait_for("attach", Duration::from_secs(30), |l| {
        l.contains("attached XDP filter")
    });
    daemon
}

/// Connects in a loop from the relay (must always succeed) and from the direct sender (must
/// never succeed) until dropped; counts both.
struct ConnectLoops {
    stop: Arc<AtomicBool>,
    relay_ok: Arc<AtomicUsize>,
    relay_failed: Arc<AtomicUsize>,
    direct_tries: Arc<AtomicUsize>,
    direct_connected: Arc<AtomicUsize>,
    workers: Vec<thread::JoinHandle<()>>,
}

impl ConnectLoops {
    fn start(lab: &MailLab) -> ConnectLoops {
        let stop = Arc::new(AtomicBool::new(false));
        let counters: [Arc<AtomicUsize>; 4] = Default::default();
        let [relay_ok, relay_failed, direct_tries, direct_connected] = counters.clone();
        let relay_run = {
            let (stop, ok, failed) = (stop.clone(), relay_ok.clone(), relay_failed.clone());
            move || {
                while !stop.load(Ordering::Relaxed) {
                    for to in [smtp(MailLab::SERVER.v4), smtp(MailLab::SERVER.v6)] {
                        match std::net::TcpStream::connect_timeout(&to, Duration::from_secs(3)) {
                            Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                            Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                        };
                    }
                    thread::sleep(Duration::from_millis(20));
                }
            }
        };
        let direct_run = {
            let (stop, tries, connected) =
                (stop.clone(), direct_tries.clone(), direct_connected.clone());
            move || {
                while !stop.load(Ordering::Relaxed) {
                    for to in [smtp(MailLab::SERVER.v4), smtp(MailLab::SERVER.v6)] {
                        tries.fetch_add(1, Ordering::Relaxed);
                        if std::net::TcpStream::connect_timeout(&to, Duration::from_millis(300))
                            .is_ok()
                        {
                            connected.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
        };
        let relay = lab.relay.spawn(relay_run);
        let direct = lab.direct.spawn(direct_run);
        ConnectLoops {
            stop,
            relay_ok,
            relay_failed,
            direct_tries,
            direct_connected,
            workers: vec![relay, direct],
        }
    }

    /// Stops the loops and asserts that no relay connect failed and no direct one succeeded.
    fn finish(mut self, what: &str) {
        self.stop.store(true, Ordering::Relaxed);
        for worker in self.workers.drain(..) {
            worker.join().expect("connect loop");
        }
        let (ok, failed) = (
            self.relay_ok.load(Ordering::Relaxed),
            self.relay_failed.load(Ordering::Relaxed),
        );
        let (tries, connected) = (
            self.direct_tries.load(Ordering::Relaxed),
            self.direct_connected.load(Ordering::Relaxed),
        );
        assert!(
            ok > 10 && tries > 4,
            "{what}: loops barely ran (relay {ok}, direct {tries})"
        );
        assert_eq!(
            failed,
            0,
            "{what}: {failed} of {} relay connects failed",
            ok + failed
        );
        assert_eq!(
            connected, 0,
            "{what}: {connected} of {tries} direct connects got through"
        );
    }
}

impl Drop for ConnectLoops {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The pinned filter is still the one `start` set up: its allowlist, port 25 and drop.
fn assert_filter_of_start_untouched(lab: &MailLab, pins: &TestPins, why: &str) {
    let status = status_json(lab, pins);
    assert_eq!(
        status["allowlist"],
        serde_json::json!(["192.0.2.10/32", "2001:db8::10/128"]),
        "{why}"
    );
    assert_eq!(status["ports"], serde_json::json!([25]), "ports untouched");
    assert_eq!(status["action"], "drop", "action untouched");
}

fn status_json(lab: &MailLab, pins: &TestPins) -> serde_json::Value {
    test_kit::process::status_json(&lab.server, pins.arg(), &[])
}

fn counter(status: &serde_json::Value, family: &str, field: &str) -> u64 {
    let row = status["counters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["family"] == family)
        .unwrap();
    row[field].as_f64().unwrap() as u64
}

#[test]
fn filter_survives_kill_9_and_a_restart_takes_it_over_without_a_gap() {
    let lab = MailLab::new();
    let pins = TestPins::new();
    let _smtp = lab.server.listen(25);
    let mut first = start(&lab, &pins);
    let loops = ConnectLoops::start(&lab);
    thread::sleep(Duration::from_secs(1));

    // kill -9: no chance to clean up; the pinned link keeps enforcing.
    let pid = nix::unistd::Pid::from_raw(first.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
    first.wait_exit(Duration::from_secs(5));
    thread::sleep(Duration::from_secs(1));
    let dropped_while_down = counter(&status_json(&lab, &pins), "ipv4", "syn_dropped");
    assert!(dropped_while_down > 0);

    let mut second = start(&lab, &pins);
    second.wait_for("takeover", Duration::from_secs(5), |l| {
        l.contains("took over the pinned one")
    });
    thread::sleep(Duration::from_secs(1));
    loops.finish("kill -9 and restart");
    // Counters continue across the takeover.
    assert!(counter(&status_json(&lab, &pins), "ipv4", "syn_dropped") > dropped_while_down);
    assert!(second.stop().success());
}

#[test]
fn an_older_pin_layout_is_replaced_without_a_gap() {
    let lab = MailLab::new();
    let pins = TestPins::new();
    let _smtp = lab.server.listen(25);
    let mut first = start(&lab, &pins);
    assert!(first.stop().success());
    // Pretend the running filter was pinned by an older release: layout v0.
    std::fs::rename(pins.path().join("v1"), pins.path().join("v0")).expect("renaming on bpffs");
    let loops = ConnectLoops::start(&lab);
    thread::sleep(Duration::from_millis(500));

    let mut second = start(&lab, &pins);
    second.wait_for("upgrade", Duration::from_secs(5), |l| {
        l.contains("replaced pin layout v0")
    });
    thread::sleep(Duration::from_secs(1));
    loops.finish("pin layout upgrade");
    assert!(
        !pins.path().join("v0").exists(),
        "the old layout's pins are removed"
    );
    assert!(pins.path().join("v1/links/eth0@native").exists());
    assert!(second.stop().success());
}

#[test]
fn status_works_with_the_daemon_down_and_detach_removes_everything() {
    let lab = MailLab::new();
    let pins = TestPins::new();
    let _smtp = lab.server.listen(25);
    let mut daemon = start(&lab, &pins);
    assert!(
        lab.direct
            .connect(smtp(MailLab::SERVER.v4), Duration::from_millis(500))
            .is_err()
    );
    assert!(daemon.stop().success());
    assert!(
        daemon.log().contains("stays attached and enforcing"),
        "{}",
        daemon.log_tail()
    );

    // Daemon down: still enforcing, and status reads the pins.
    assert!(
        lab.direct
            .connect(smtp(MailLab::SERVER.v4), Duration::from_millis(500))
            .is_err()
    );
    let status = status_json(&lab, &pins);
    assert_eq!(status["interfaces"][0]["iface"], "eth0");
    assert_eq!(status["interfaces"][0]["mode"], "native");
    assert_eq!(status["ports"], serde_json::json!([25]));
    assert_eq!(status["action"], "drop");
    assert_eq!(
        status["allowlist"],
        serde_json::json!(["192.0.2.10/32", "2001:db8::10/128"])
    );
    assert!(counter(&status, "ipv4", "syn_dropped") >= 2);
    // The sampled drops were tallied by the daemon into a pinned map.
    let top = &status["top_dropped_sources"][0];
    assert_eq!(top["address"], "192.0.2.66", "{status:#}");
    assert!(top["samples"].as_u64().unwrap() >= 1);
    assert_eq!(top["last_port"], 25);
    let table = mxguard(
        &lab.server,
        &["status", "--interval", "200ms", "--pin-dir", pins.arg()],
    );
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("eth0 (native)") && table.contains("192.0.2.10/32"),
        "{table}"
    );

    let output = mxguard(&lab.server, &["detach", "--pin-dir", pins.arg()]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "detached eth0"
    );
    lab.direct
        .connect(smtp(MailLab::SERVER.v4), Duration::from_secs(3))
        .expect("detached: direct connects");
    assert!(!pins.path().exists(), "detach removes the pins");

    let again = mxguard(&lab.server, &["status", "--pin-dir", pins.arg()]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("no mxguard filter is pinned"));
}

#[test]
fn a_second_daemon_on_the_same_pins_exits_naming_the_first_and_changes_nothing() {
    let lab = MailLab::new();
    let pins = TestPins::new();
    let mut first = start(&lab, &pins);

    // Another allowlist, another port and another action: had it run, all three would show.
    let mut command = lab.server.command(mxguard_bin());
    command.args([
        "run",
        "--iface",
        "eth0",
        "--allow",
        "192.0.2.66",
        "--port",
        "2525",
        "--action",
        "monitor",
        "--pin-dir",
        pins.arg(),
        "--stats-interval",
        "0",
    ]);
    let mut second = Daemon::spawn(command);
    let status = second.wait_exit(Duration::from_secs(20));
    let log = second.log();
    assert!(
        !status.success(),
        "the second daemon must refuse to run: {log}"
    );
    assert!(
        log.contains(&format!("another mxguard daemon (pid {}", first.id()))
            && log.contains(pins.arg()),
        "the error names the first daemon and the pin directory: {log}"
    );

    assert_filter_of_start_untouched(&lab, &pins, "the first daemon's allowlist is untouched");
    assert!(
        first.log().matches("attached XDP filter").count() == 1,
        "the first daemon kept running undisturbed: {}",
        first.log_tail()
    );

    // Once the first is gone, the pins are free for a successor.
    assert!(first.stop().success());
    let mut successor = start(&lab, &pins);
    assert!(successor.stop().success());
}

/// A directory for a bpffs mounted inside a private mount namespace (so the host never sees the
/// mount); removed on drop.
struct PrivateMountPoint(std::path::PathBuf);

impl PrivateMountPoint {
    fn new() -> Self {
        let path =
            std::env::temp_dir().join(format!("mxguard-private-bpffs-{}", std::process::id()));
        std::fs::create_dir_all(&path).expect("creating the mount point");
        PrivateMountPoint(path)
    }
}

impl Drop for PrivateMountPoint {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// `mxguard run` in its own mount namespace, on pins in a bpffs mounted only there: what
/// `ip netns exec` or a unit with private mounts that mounts bpffs itself amounts to.
fn start_on_private_pins(lab: &MailLab, mount_point: &PrivateMountPoint, extra: &[&str]) -> Daemon {
    let dir = mount_point.0.display().to_string();
    let script = format!(
        "mount -t bpf bpf {dir} && exec {bin} run --iface eth0 --allow 192.0.2.10 \
         --pin-dir {dir}/pins --stats-interval 0 \"$@\"",
        bin = mxguard_bin().display()
    );
    let mut command = lab.server.command("unshare");
    command
        .args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            &script,
            "sh",
        ])
        .args(extra)
        .env("RUST_LOG", "info");
    Daemon::spawn(command)
}

#[test]
fn pins_private_to_a_mount_namespace_are_refused_unless_confirmed() {
    let lab = MailLab::new();
    let mount_point = PrivateMountPoint::new();
    let _smtp = lab.server.listen(25);
    let to = smtp(MailLab::SERVER.v4);

    let mut refused = start_on_private_pins(&lab, &mount_point, &[]);
    let status = refused.wait_exit(Duration::from_secs(20));
    let log = refused.log();
    assert!(
        !status.success(),
        "a filter that would vanish with the daemon must not start: {log}"
    );
    assert!(
        log.contains("not visible from the host") && log.contains("--accept-private-pins"),
        "the error says plainly what is wrong and how to confirm: {log}"
    );
    assert!(
        lab.direct.connect(to, Duration::from_secs(2)).is_ok(),
        "nothing was attached by the refused start"
    );

    let mut confirmed = start_on_private_pins(&lab, &mount_point, &["--accept-private-pins"]);
    confirmed.wait_for("attach", Duration::from_secs(30), |l| {
        l.contains("attached XDP filter")
    });
    assert!(
        confirmed.log().contains("private to this mount namespace"),
        "a confirmed start still warns: {}",
        confirmed.log_tail()
    );
    assert!(
        lab.direct.connect(to, Duration::from_millis(500)).is_err(),
        "the confirmed filter enforces while the daemon runs"
    );
    assert!(confirmed.stop().success());
    assert!(
        confirmed
            .log()
            .contains("the filter ends with this process")
            && !confirmed.log().contains("stays attached and enforcing"),
        "the exit message tells the truth: {}",
        confirmed.log_tail()
    );
    // And so it is: the private bpffs went with the namespace, and the link with it.
    let gone = (0..50).any(|_| {
        let connected = lab.direct.connect(to, Duration::from_millis(200)).is_ok();
        if !connected {
            thread::sleep(Duration::from_millis(100));
        }
        connected
    });
    assert!(
        gone,
        "the filter on private pins ended with the daemon, as the log said"
    );
}

#[test]
fn a_start_in_another_mode_than_the_pinned_link_fails_before_changing_the_maps() {
    let lab = MailLab::new();
    let pins = TestPins::new();
    let mut first = start(&lab, &pins);
    let attached = first.wait_for("the mode", Duration::from_secs(5), |l| {
        l.contains("attached XDP filter")
    });
    // The pinned link stays enforcing after the daemon.
    assert!(first.stop().success());
    let other_mode = if attached.contains("native") {
        "generic"
    } else {
        "native"
    };

    let mut command = lab.server.command(mxguard_bin());
    command
        .args(["run", "--iface", "eth0", "--mode", other_mode])
        .args([
            "--allow",
            "192.0.2.66",
            "--port",
            "2525",
            "--action",
            "monitor",
        ])
        .args(["--pin-dir", pins.arg(), "--stats-interval", "0"]);
    let mut second = Daemon::spawn(command);
    let exit = second.wait_exit(Duration::from_secs(20));
    let log = second.log();
    assert!(!exit.success(), "a mode change needs a detach first: {log}");
    assert!(log.contains("mxguard detach --iface eth0"), "{log}");

    assert_filter_of_start_untouched(
        &lab,
        &pins,
        "the refused start left the pinned allowlist as it was",
    );
}
