//! A protected interface deleted and created again under the same name (a driver reload, a
//! network manager re-creating a bond): the XDP link dies with the old device. The daemon
//! notices over netlink, says so, and attaches again once the name is back; `status` tells
//! the truth at every step, with the daemon running or not.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use test_kit::{
    lab::MailLab,
    netns::{Netns, assert_times_out, veth},
    pins::TestPins,
    process::{Daemon, mxguard_bin, mxguard_output, scrape_metrics, status_json},
};

const METRICS: &str = "127.0.0.1:9726";

fn smtp(ip: impl Into<std::net::IpAddr>) -> SocketAddr {
    SocketAddr::new(ip.into(), 25)
}

fn start(lab: &MailLab, pins: &TestPins) -> Daemon {
    let mut command = lab.server.command(mxguard_bin());
    command
        .args(["run", "--iface", "eth0", "--mode", "auto"])
        .args(["--allow", "192.0.2.10", "--allow", "2001:db8::10"])
        .args(["--pin-dir", pins.arg(), "--stats-interval", "0"])
        .args(["--metrics-addr", METRICS])
        .env("RUST_LOG", "info");
    let mut daemon = Daemon::spawn(command);
    daemon.wait_for("attach", Duration::from_secs(30), |l| {
        l.contains("attached XDP filter")
    });
    daemon
}

/// The server's eth0 as `status --json` sees it: (state, ifindex).
fn eth0_status(lab: &MailLab, pins: &TestPins) -> (String, u64) {
    let status = status_json(&lab.server, pins.arg(), &[]);
    let interfaces = status["interfaces"].as_array().expect("interfaces");
    assert_eq!(interfaces.len(), 1, "{status:#}");
    assert_eq!(interfaces[0]["iface"], "eth0");
    (
        interfaces[0]["state"].as_str().expect("state").to_owned(),
        interfaces[0]["ifindex"].as_u64().expect("ifindex"),
    )
}

/// Polls `status` until eth0 is in `state`; returns when that was first seen.
fn wait_for_state(lab: &MailLab, pins: &TestPins, state: &str, within: Duration) -> Instant {
    let deadline = Instant::now() + within;
    loop {
        let (seen, _) = eth0_status(lab, pins);
        if seen == state {
            return Instant::now();
        }
        assert!(
            Instant::now() < deadline,
            "status still says {seen:?}, not {state:?}, after {within:?}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// `mxguard_attached{interface="eth0",mode="native"}` from the daemon's endpoint.
fn attached_gauge(lab: &MailLab) -> f64 {
    let addr: SocketAddr = METRICS.parse().unwrap();
    let body = scrape_metrics(&lab.server, addr);
    body.lines()
        .find(|l| {
            l.starts_with("mxguard_attached{")
                && l.contains("interface=\"eth0\"")
                && l.contains("mode=\"native\"")
        })
        .and_then(|l| l.rsplit_once(' '))
        .and_then(|(_, value)| value.parse().ok())
        .unwrap_or_else(|| panic!("no mxguard_attached for eth0 in:\n{body}"))
}

fn mac_of_eth0(netns: &Netns) -> String {
    let line = netns
        .ip(&["-br", "link", "show", "eth0"])
        .expect("ip link show");
    line.split_whitespace()
        .nth(2)
        .expect("a MAC address in `ip -br link`")
        .to_owned()
}

fn delete_eth0(lab: &MailLab) {
    // Takes its peer in the switch with it.
    lab.server
        .ip(&["link", "del", "eth0"])
        .expect("deleting eth0");
}

/// eth0 again, as a driver reload brings it back: same name, MAC and addresses, new ifindex.
fn recreate_eth0(lab: &MailLab, mac: &str) {
    veth(&lab.server, "eth0", &lab.switch, "p-srv").expect("re-creating the veth");
    lab.switch
        .ip(&["link", "set", "p-srv", "master", "br0"])
        .expect("bridging");
    lab.server
        .ip(&["link", "set", "eth0", "address", mac])
        .expect("setting the MAC");
    let v4 = format!("{}/24", MailLab::SERVER.v4);
    let v6 = format!("{}/64", MailLab::SERVER.v6);
    lab.server
        .ip(&["addr", "add", &v4, "dev", "eth0"])
        .expect("IPv4 address");
    lab.server
        .ip(&["addr", "add", &v6, "dev", "eth0", "nodad"])
        .expect("IPv6 address");
}

/// Connect attempts: when each started, and whether it connected.
type Attempts = Vec<(Instant, bool)>;

/// Connect attempts from the relay and the direct sender, each with its start time and outcome,
/// until dropped.
struct ConnectLoops {
    stop: Arc<AtomicBool>,
    relay: Arc<Mutex<Attempts>>,
    direct: Arc<Mutex<Attempts>>,
    workers: Vec<thread::JoinHandle<()>>,
}

impl ConnectLoops {
    fn start(lab: &MailLab) -> ConnectLoops {
        let stop = Arc::new(AtomicBool::new(false));
        let relay: Arc<Mutex<Attempts>> = Arc::default();
        let direct: Arc<Mutex<Attempts>> = Arc::default();
        let worker = |tries: Arc<Mutex<Attempts>>, timeout: Duration| {
            let stop = stop.clone();
            move || {
                while !stop.load(Ordering::Relaxed) {
                    for to in [smtp(MailLab::SERVER.v4), smtp(MailLab::SERVER.v6)] {
                        let started = Instant::now();
                        let ok = std::net::TcpStream::connect_timeout(&to, timeout).is_ok();
                        tries.lock().unwrap().push((started, ok));
                    }
                    thread::sleep(Duration::from_millis(20));
                }
            }
        };
        let workers = vec![
            lab.relay
                .spawn(worker(relay.clone(), Duration::from_secs(2))),
            lab.direct
                .spawn(worker(direct.clone(), Duration::from_millis(300))),
        ];
        ConnectLoops {
            stop,
            relay,
            direct,
            workers,
        }
    }

    /// Stops the loops; returns (relay, direct) attempts.
    fn finish(mut self) -> (Attempts, Attempts) {
        self.stop.store(true, Ordering::Relaxed);
        for worker in self.workers.drain(..) {
            worker.join().expect("connect loop");
        }
        let take = |tries: &Mutex<Attempts>| std::mem::take(&mut *tries.lock().unwrap());
        (take(&self.relay), take(&self.direct))
    }
}

impl Drop for ConnectLoops {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// (connected, total) of the attempts started in `from..to`.
fn outcomes(tries: &[(Instant, bool)], from: Instant, to: Instant) -> (usize, usize) {
    let chosen: Vec<bool> = tries
        .iter()
        .filter(|(started, _)| (from..to).contains(started))
        .map(|&(_, ok)| ok)
        .collect();
    (chosen.iter().filter(|&&ok| ok).count(), chosen.len())
}

#[test]
fn a_recreated_interface_gets_its_filter_back() {
    let lab = MailLab::new();
    let pins = TestPins::new();
    let _smtp = lab.server.listen(25);
    let mac = mac_of_eth0(&lab.server);
    let mut daemon = start(&lab, &pins);
    let (state, old_ifindex) = eth0_status(&lab, &pins);
    assert_eq!(state, "attached");
    assert_eq!(attached_gauge(&lab), 1.0);

    let loops = ConnectLoops::start(&lab);
    let t_start = Instant::now();
    thread::sleep(Duration::from_secs(1));

    let t_deleted = Instant::now();
    delete_eth0(&lab);
    daemon.wait_for("the missing warning", Duration::from_secs(5), |l| {
        l.contains("WARN") && l.contains("protected interface is gone")
    });
    wait_for_state(&lab, &pins, "missing", Duration::from_secs(5));
    assert_eq!(eth0_status(&lab, &pins).1, 0);
    let human = mxguard_output(
        &lab.server,
        &["status", "--interval", "0", "--pin-dir", pins.arg()],
    );
    let human = String::from_utf8_lossy(&human.stdout);
    assert!(human.contains("eth0 (native, MISSING"), "{human}");
    assert_eq!(attached_gauge(&lab), 0.0);
    // Gone for a while, with link events of other devices (the peer side) in between.
    thread::sleep(Duration::from_secs(1));

    let t_recreated = Instant::now();
    recreate_eth0(&lab, &mac);
    let t_configured = Instant::now();
    let t_back = wait_for_state(&lab, &pins, "attached", Duration::from_secs(5));
    assert!(
        t_back - t_recreated < Duration::from_secs(5),
        "re-attached only after {:?}",
        t_back - t_recreated
    );
    daemon.wait_for("the re-attach", Duration::from_secs(5), |l| {
        l.contains("re-attached XDP filter")
    });
    let (_, new_ifindex) = eth0_status(&lab, &pins);
    assert_ne!(new_ifindex, old_ifindex, "eth0 should be a new device");
    assert!(
        lab.server
            .ip(&["link", "show", "eth0"])
            .unwrap()
            .contains("xdp"),
        "no XDP program on the new eth0"
    );
    assert!(pins.path().join("v1/links/eth0@native").exists());
    assert_eq!(attached_gauge(&lab), 1.0);
    thread::sleep(Duration::from_secs(3));
    let t_end = Instant::now();
    let (relay, direct) = loops.finish();
    let context = daemon.log_tail();

    let (connected, tries) = outcomes(&direct, t_start, t_deleted);
    assert!(tries > 2, "the direct loop barely ran before the deletion");
    assert_eq!(
        connected, 0,
        "direct connects got through before the deletion\n{context}"
    );
    let (connected, tries) = outcomes(&direct, t_back, t_end);
    assert!(
        tries > 4,
        "the direct loop barely ran after the re-attach ({tries})"
    );
    assert_eq!(
        connected, 0,
        "{connected} of {tries} direct connects got through after the filter was back\n{context}"
    );
    let (ok, tries) = outcomes(&relay, t_start, t_deleted);
    assert!(
        ok > 4 && ok == tries,
        "relay before the deletion: {ok} of {tries}"
    );
    let (ok, tries) = outcomes(&relay, t_back.max(t_configured), t_end);
    assert!(
        ok > 4 && ok == tries,
        "relay after the re-attach: {ok} of {tries} connected\n{context}"
    );

    let log = daemon.log();
    assert_eq!(
        log.matches("protected interface is gone").count(),
        1,
        "the missing warning is given once:\n{log}"
    );
    assert!(daemon.stop().success());
    assert_eq!(eth0_status(&lab, &pins).0, "attached");
}

#[test]
fn status_tells_the_truth_with_the_daemon_down_and_a_restart_attaches_afresh() {
    let lab = MailLab::new();
    let pins = TestPins::new();
    let _smtp = lab.server.listen(25);
    let mac = mac_of_eth0(&lab.server);
    let mut daemon = start(&lab, &pins);
    assert!(daemon.stop().success());
    assert_eq!(eth0_status(&lab, &pins).0, "attached");

    delete_eth0(&lab);
    assert_eq!(eth0_status(&lab, &pins), ("missing".to_owned(), 0));
    recreate_eth0(&lab, &mac);
    // Nobody attached to the new device: still not protected.
    assert_eq!(eth0_status(&lab, &pins).0, "missing");

    let mut daemon = start(&lab, &pins);
    assert!(
        daemon.log().contains("lost its interface"),
        "{}",
        daemon.log_tail()
    );
    assert_eq!(eth0_status(&lab, &pins).0, "attached");
    assert_times_out(&lab.direct, smtp(MailLab::SERVER.v4), &daemon.log_tail());
    assert!(daemon.stop().success());
}
