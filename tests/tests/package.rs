//! The Debian package, end to end. Not part of a plain `cargo test` (tests/Cargo.toml sets
//! `test = false`): `cargo xtask package --check`, which `cargo xtask test` runs, builds the two
//! packages it needs and runs it. It installs the .deb with dpkg,
//! checks its contents, the installed binary, unit and man pages, upgrades it while a filter
//! started from the installed binary is attached, removes and purges it, and leaves the
//! machine as it found it.

use std::{
    net::SocketAddr,
    path::Path,
    process::{Command, Output},
    time::Duration,
};

use test_kit::{
    lab::MailLab,
    netns::{assert_connects, assert_times_out},
    notify::{NotifySocket, check_readiness, start_notified},
    pins::TestPins,
    process::status_json,
};

fn smtp(ip: impl Into<std::net::IpAddr>) -> SocketAddr {
    SocketAddr::new(ip.into(), 25)
}

const RELAY_ONLY: &[&str] = &["--allow", "192.0.2.10", "--allow", "2001:db8::10"];

// --- the package ---------------------------------------------------------------------------

const INSTALLED_BIN: &str = "/usr/bin/mxguard";
const UNIT: &str = "/usr/lib/systemd/system/mxguard.service";
const MAN_PAGES: &[&str] = &[
    "mxguard",
    "mxguard-run",
    "mxguard-detach",
    "mxguard-check-config",
    "mxguard-status",
];

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"))
}

/// Runs and panics with both streams unless it succeeds; returns stdout and stderr.
fn run_ok(program: &str, args: &[&str]) -> (String, String) {
    let output = run(program, args);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    );
    assert!(
        output.status.success(),
        "{program} {args:?} failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    (stdout, stderr)
}

fn installed_version() -> Option<String> {
    let output = run("dpkg-query", &["-W", "-f=${Status} ${Version}", "mxguard"]);
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    (output.status.success() && text.starts_with("install ok installed"))
        .then(|| text.rsplit(' ').next().unwrap_or_default().to_owned())
}

fn deb_version(deb: &str) -> String {
    run_ok("dpkg-deb", &["--field", deb, "Version"])
        .0
        .trim()
        .to_owned()
}

/// Purges the package however the test ends, so the machine is left as it was.
struct PurgeOnDrop;

impl Drop for PurgeOnDrop {
    fn drop(&mut self) {
        let _ = run("dpkg", &["--purge", "mxguard"]);
    }
}

fn counter(status: &serde_json::Value, family: &str, field: &str) -> u64 {
    let row = status["counters"]
        .as_array()
        .expect("counters")
        .iter()
        .find(|r| r["family"] == family)
        .expect("family row");
    row[field].as_f64().expect("counter value") as u64
}

/// What `status` must show of the test filter, whichever binary reads it.
fn assert_filter_status(lab: &MailLab, pins: &TestPins, what: &str) -> serde_json::Value {
    let status = status_json(&lab.server, pins.arg(), &[]);
    assert_eq!(
        status["interfaces"][0]["iface"], "eth0",
        "{what}: {status:#}"
    );
    assert_eq!(
        status["allowlist"],
        serde_json::json!(["192.0.2.10/32", "2001:db8::10/128"]),
        "{what}"
    );
    assert_eq!(status["action"], "drop", "{what}");
    status
}

#[test]
fn package_installs_upgrades_under_a_running_filter_and_purges() {
    let deb = std::env::var("MXGUARD_DEB").expect("MXGUARD_DEB: the package to install");
    let upgrade = std::env::var("MXGUARD_DEB_UPGRADE").expect("MXGUARD_DEB_UPGRADE: a newer build");
    let (version, newer) = (deb_version(&deb), deb_version(&upgrade));
    assert!(
        run("dpkg", &["--compare-versions", &newer, "gt", &version])
            .status
            .success(),
        "{newer} must be newer than {version}"
    );
    assert_eq!(
        installed_version(),
        None,
        "mxguard is already installed here: this test would replace an operator's package"
    );
    assert!(
        !Path::new("/etc/mxguard").exists(),
        "/etc/mxguard exists: left by an earlier install? purge it first"
    );
    let _purge = PurgeOnDrop;

    // Install.
    let (stdout, _) = run_ok("dpkg", &["--install", &deb]);
    assert!(stdout.contains("installed but not enabled"), "{stdout}");
    assert_eq!(installed_version().as_deref(), Some(version.as_str()));
    let (files, _) = run_ok("dpkg-query", &["--listfiles", "mxguard"]);
    let mut expected = vec![
        INSTALLED_BIN.to_owned(),
        UNIT.to_owned(),
        "/etc/mxguard/mxguard.toml".to_owned(),
        "/usr/share/bash-completion/completions/mxguard".to_owned(),
        "/usr/share/zsh/vendor-completions/_mxguard".to_owned(),
        "/usr/share/fish/vendor_completions.d/mxguard.fish".to_owned(),
        "/usr/share/doc/mxguard/README.md".to_owned(),
        "/usr/share/doc/mxguard/operations.md".to_owned(),
        "/usr/share/doc/mxguard/copyright".to_owned(),
        "/usr/share/doc/mxguard/examples/mxguard.toml.example".to_owned(),
    ];
    expected.extend(
        MAN_PAGES
            .iter()
            .map(|page| format!("/usr/share/man/man1/{page}.1.gz")),
    );
    for file in &expected {
        assert!(
            files.lines().any(|line| line == file),
            "{file} is not in the package:\n{files}"
        );
    }
    let (conffiles, _) = run_ok("dpkg-query", &["-W", "-f=${Conffiles}", "mxguard"]);
    assert!(
        conffiles.contains("/etc/mxguard/mxguard.toml"),
        "the configuration is a conffile: {conffiles}"
    );
    assert!(
        Path::new("/var/lib/mxguard").is_dir(),
        "postinst makes the state directory"
    );

    // The installed binary, configuration, unit and man pages.
    let (printed, _) = run_ok(INSTALLED_BIN, &["--version"]);
    assert!(printed.starts_with("mxguard "), "{printed}");
    // The example names a placeholder interface: the flag overrides it.
    let (_, said) = run_ok(
        INSTALLED_BIN,
        &[
            "check-config",
            "--config",
            "/etc/mxguard/mxguard.toml",
            "--iface",
            "lo",
        ],
    );
    assert!(said.contains("configuration is valid"), "{said}");
    let (_, verify) = run_ok("systemd-analyze", &["verify", UNIT]);
    assert!(
        !verify.contains("mxguard.service"),
        "systemd-analyze verify warns about the unit:\n{verify}"
    );
    for page in MAN_PAGES {
        let path = format!("/usr/share/man/man1/{page}.1.gz");
        let output = Command::new("man")
            .args(["--warnings", "-l", &path])
            .env("MANPAGER", "cat")
            .env("MANWIDTH", "80")
            .output()
            .expect("running man");
        let (text, warnings) = (
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
        );
        assert!(output.status.success(), "man -l {path}: {warnings}");
        assert!(
            warnings.trim().is_empty(),
            "man -l {path} warns: {warnings}"
        );
        assert!(
            text.contains("NAME") && text.contains(page) && text.contains("SYNOPSIS"),
            "man -l {path}:\n{text}"
        );
    }

    // A filter from the installed binary, with systemd's readiness protocol.
    let lab = MailLab::new();
    let pins = TestPins::new();
    let _smtp = lab.server.listen(25);
    let notify = NotifySocket::bind();
    let mut old = start_notified(&lab, &pins, Path::new(INSTALLED_BIN), &notify, RELAY_ONLY);
    check_readiness(
        &mut old,
        &notify,
        "protecting eth0 (port 25): 2 allowlist entries, action drop",
    );
    assert_connects(&lab.relay, smtp(MailLab::SERVER.v4), &old.log_tail());
    assert_times_out(&lab.direct, smtp(MailLab::SERVER.v4), &old.log_tail());
    let dropped_before = counter(
        &assert_filter_status(&lab, &pins, "before the upgrade"),
        "ipv4",
        "syn_dropped",
    );
    assert!(dropped_before > 0);

    // Upgrade under the running daemon: nothing is detached.
    let (stdout, stderr) = run_ok("dpkg", &["--install", &upgrade]);
    assert_eq!(installed_version().as_deref(), Some(newer.as_str()));
    assert!(
        !stdout.contains("installed but not enabled"),
        "an upgrade is not an install: {stdout}"
    );
    assert_times_out(
        &lab.direct,
        smtp(MailLab::SERVER.v4),
        &format!("after the upgrade\n{stderr}"),
    );
    assert_connects(&lab.relay, smtp(MailLab::SERVER.v4), "after the upgrade");
    assert_filter_status(&lab, &pins, "after the upgrade");

    // The restart systemd's try-restart would do: the new binary takes the filter over, with
    // the maps (allowlist, counters) as they were.
    assert!(old.stop().success());
    assert_times_out(&lab.direct, smtp(MailLab::SERVER.v4), "between the daemons");
    let notify_new = NotifySocket::bind();
    let mut new = start_notified(
        &lab,
        &pins,
        Path::new(INSTALLED_BIN),
        &notify_new,
        RELAY_ONLY,
    );
    new.wait_for("takeover", Duration::from_secs(30), |l| {
        l.contains("took over the pinned one without a gap")
    });
    notify_new.wait_for(0, &["READY=1"], Duration::from_secs(10), &new);
    assert_times_out(&lab.direct, smtp(MailLab::SERVER.v4), &new.log_tail());
    let status = assert_filter_status(&lab, &pins, "after the takeover");
    assert!(
        counter(&status, "ipv4", "syn_dropped") > dropped_before,
        "the counters carried over and go on: {status:#}"
    );

    // Remove: the filter stays enforcing (an explicit act lifts it), and removing its pins
    // lifts it as prerm tells the operator.
    assert!(new.stop().success());
    let (_, said) = run_ok("dpkg", &["--remove", "mxguard"]);
    assert!(!Path::new(INSTALLED_BIN).exists());
    assert!(
        Path::new("/etc/mxguard/mxguard.toml").exists(),
        "remove keeps the configuration"
    );
    assert_times_out(
        &lab.direct,
        smtp(MailLab::SERVER.v4),
        &format!("after remove\n{said}"),
    );
    std::fs::remove_dir_all(pins.path()).expect("rm -r the pin directory");
    assert_connects(&lab.direct, smtp(MailLab::SERVER.v4), "the pins removed");

    // Purge: configuration and state go too.
    run_ok("dpkg", &["--purge", "mxguard"]);
    assert_eq!(installed_version(), None);
    assert!(
        !Path::new("/etc/mxguard").exists(),
        "purge removes /etc/mxguard"
    );
    assert!(
        !Path::new("/var/lib/mxguard").exists(),
        "purge removes /var/lib/mxguard"
    );
}
