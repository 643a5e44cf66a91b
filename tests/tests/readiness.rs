//! systemd readiness: the daemon's sd_notify messages (READY=1 with STATUS=, WATCHDOG=1,
//! RELOADING=1 then READY=1 on SIGHUP, STOPPING=1) arrive on a NOTIFY_SOCKET the test listens
//! on; without one nothing is sent.

use std::{net::SocketAddr, time::Duration};

use test_kit::{
    lab::MailLab,
    netns::assert_times_out,
    notify::{NotifySocket, check_readiness, start_notified},
    pins::TestPins,
    process::{Daemon, mxguard_bin},
};

fn smtp(ip: impl Into<std::net::IpAddr>) -> SocketAddr {
    SocketAddr::new(ip.into(), 25)
}

const RELAY_ONLY: &[&str] = &["--allow", "192.0.2.10", "--allow", "2001:db8::10"];

#[test]
fn readiness_is_notified_once_attached_and_around_a_reload() {
    let lab = MailLab::new();
    let pins = TestPins::new();
    let notify = NotifySocket::bind();
    let mut daemon = start_notified(&lab, &pins, &mxguard_bin(), &notify, RELAY_ONLY);
    check_readiness(
        &mut daemon,
        &notify,
        "protecting eth0 (port 25): 2 allowlist entries, action drop",
    );
    let before_stop = notify.count();
    assert!(daemon.stop().success());
    notify.wait_for(
        before_stop,
        &["STOPPING=1"],
        Duration::from_secs(1),
        &daemon,
    );
}

#[test]
fn readiness_is_notified_in_the_start_up_monitor_state() {
    let lab = MailLab::new();
    let pins = TestPins::new();
    let notify = NotifySocket::bind();
    // No static prefix, and a name server that never answers (nothing listens there, in the
    // lab's own namespace): the allowlist stays empty.
    let daemon = start_notified(
        &lab,
        &pins,
        &mxguard_bin(),
        &notify,
        &[
            "--allow-host",
            "relay.mxguard.test",
            "--dns-server",
            "192.0.2.53",
        ],
    );
    let ready = notify.wait_for(0, &["READY=1", "STATUS="], Duration::from_secs(30), &daemon);
    assert!(
        ready.contains("monitoring eth0 (port 25): allowlist empty, waiting for DNS"),
        "{ready:?}"
    );
}

#[test]
fn without_notify_socket_nothing_is_sent_and_the_daemon_runs() {
    let lab = MailLab::new();
    let pins = TestPins::new();
    let _smtp = lab.server.listen(25);
    let mut command = lab.server.command(mxguard_bin());
    command
        .args(["run", "--config", "/dev/null", "--iface", "eth0"])
        .args(["--pin-dir", pins.arg(), "--stats-interval", "0"])
        .args(RELAY_ONLY)
        .env_remove("NOTIFY_SOCKET")
        .env("WATCHDOG_USEC", "1000000");
    let mut daemon = Daemon::spawn(command);
    daemon.wait_for("attach", Duration::from_secs(30), |l| {
        l.contains("attached XDP filter")
    });
    assert_times_out(&lab.direct, smtp(MailLab::SERVER.v4), &daemon.log_tail());
    assert!(!daemon.log().contains("notifying systemd failed"));
    assert!(daemon.stop().success());
}
