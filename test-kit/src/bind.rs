//! A real DNSSEC signer and server for tests: BIND's `dnssec-keygen` and `dnssec-signzone`
//! sign a zone at test time, and `named` (foreground, private config, pid and key files in a
//! temporary directory) serves it on a free port of 127.0.0.1. The zone can be served as
//! signed, tampered (a record edited after signing, its old RRSIG kept) or unsigned, and the
//! key-signing key's file is the resolver's trust anchor.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use crate::process::Daemon;

/// What a server serves for the zone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// As dnssec-signzone wrote it.
    Signed,
    /// The signed zone with `from` replaced by `to` in its records (signatures unchanged).
    Tampered {
        from: &'static str,
        to: &'static str,
    },
    /// The zone before signing: no DNSKEY, no RRSIG.
    Unsigned,
}

/// A zone signed in a temporary directory (removed on drop).
pub struct SignedZone {
    dir: PathBuf,
    origin: String,
    /// The key-signing key as DNSKEY records: the trust anchor for the zone.
    pub trust_anchor: PathBuf,
}

/// A running `named`; stopped on drop.
pub struct Named {
    pub addr: SocketAddr,
    daemon: Daemon,
}

impl Named {
    pub fn log(&self) -> String {
        self.daemon.log()
    }
}

fn run(command: &mut Command) -> String {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("running {command:?}: {e} (is bind9 installed?)"));
    assert!(
        output.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

impl SignedZone {
    /// Signs `origin` (e.g. `mx.test`) holding `records` (zone-file lines, relative names),
    /// with one ECDSA P-256 key made now.
    pub fn sign(origin: &str, records: &str) -> SignedZone {
        let dir = std::env::temp_dir().join(format!(
            "mxguard-bind-{origin}-{}-{}",
            std::process::id(),
            next_zone_serial()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("creating the zone directory");
        let zone = format!(
            "$TTL 60\n@ IN SOA ns.{origin}. admin.{origin}. 1 3600 600 86400 60\n\
             @ IN NS ns.{origin}.\nns IN A 127.0.0.1\n{records}\n"
        );
        std::fs::write(dir.join("zone.db"), zone).expect("writing the zone");
        // One combined signing key (a CSK: KSK flag, signing every record set), so the
        // DNSKEY set is exactly the trust anchor and no DS is needed from a parent zone
        // that this test has none of.
        let key = run(Command::new("dnssec-keygen").current_dir(&dir).args([
            "-q",
            "-a",
            "ECDSAP256SHA256",
            "-n",
            "ZONE",
            "-f",
            "KSK",
            origin,
        ]));
        run(Command::new("dnssec-signzone").current_dir(&dir).args([
            "-z",
            "-S",
            "-K",
            ".",
            "-o",
            origin,
            "-f",
            "zone.signed",
            "zone.db",
        ]));
        SignedZone {
            trust_anchor: dir.join(format!("{key}.key")),
            origin: origin.to_owned(),
            dir,
        }
    }

    /// Starts `named` serving `variant` of the zone on a free port of 127.0.0.1.
    pub fn serve(&self, variant: Variant) -> Named {
        self.serve_in(variant, None)
    }

    /// As [`SignedZone::serve`], on the loopback of `netns` when given.
    pub fn serve_in(&self, variant: Variant, netns: Option<&crate::netns::Netns>) -> Named {
        let tag = match variant {
            Variant::Signed => "signed",
            Variant::Tampered { .. } => "tampered",
            Variant::Unsigned => "unsigned",
        };
        let dir = self.dir.join(tag);
        std::fs::create_dir_all(&dir).expect("creating the server directory");
        let zone_file = dir.join("zone");
        let text = match variant {
            Variant::Signed => read(&self.dir.join("zone.signed")),
            Variant::Tampered { from, to } => {
                let signed = read(&self.dir.join("zone.signed"));
                assert!(signed.contains(from), "{from} is not in the signed zone");
                signed.replace(from, to)
            }
            Variant::Unsigned => read(&self.dir.join("zone.db")),
        };
        std::fs::write(&zone_file, text).expect("writing the served zone");
        // A port free for UDP and TCP now; named binds it a moment later.
        let free_port = || {
            let (udp, _tcp) = crate::dns_server::bind_pair("127.0.0.1".parse().expect("IP"));
            udp.local_addr().expect("UDP address").port()
        };
        let port = match netns {
            Some(netns) => netns.enter(free_port).expect("entering the namespace"),
            None => free_port(),
        };
        let config = format!(
            "options {{\n  directory \"{dir}\";\n  listen-on port {port} {{ 127.0.0.1; }};\n  \
             listen-on-v6 {{ none; }};\n  pid-file \"{dir}/named.pid\";\n  \
             session-keyfile \"{dir}/session.key\";\n  managed-keys-directory \"{dir}\";\n  \
             recursion no;\n  dnssec-validation no;\n}};\n\
             zone \"{origin}\" {{ type primary; file \"{zone}\"; }};\n",
            dir = dir.display(),
            origin = self.origin,
            zone = zone_file.display(),
        );
        let config_path = dir.join("named.conf");
        std::fs::write(&config_path, config).expect("writing named.conf");
        let mut command = match netns {
            Some(netns) => netns.command("named"),
            None => Command::new("named"),
        };
        command
            .arg("-g")
            .arg("-n")
            .arg("1")
            .arg("-c")
            .arg(&config_path);
        let mut daemon = Daemon::spawn(command);
        daemon.wait_for("named running", Duration::from_secs(20), |line| {
            line.ends_with(" running")
        });
        Named {
            addr: SocketAddr::new("127.0.0.1".parse().expect("IP"), port),
            daemon,
        }
    }
}

impl Drop for SignedZone {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Distinguishes zones signed by one test process.
fn next_zone_serial() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}
