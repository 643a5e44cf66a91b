//! The milter listener: one task accepts, each connection gets its own task and
//! [`MilterSession`]; at most `--milter-max-connections` at once. A connection that fails
//! (garbage, an oversized packet, a peer gone mid-message) ends alone, counted and logged;
//! nothing in here touches the XDP side.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::{Context as _, bail};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    sync::{Semaphore, watch},
};

use super::{
    AllowSnapshot, MilterEndpoint, MilterSettings, Policy,
    session::{MilterSession, Shared},
    stats::{self, ConnectionEvent, MilterCounts, MilterStats, MilterStatus},
};
use crate::cidr::Cidr;

/// The largest milter packet accepted: above Postfix's default header_size_limit (100 KiB),
/// small enough that the connection bound also bounds memory.
const MAX_PACKET: usize = 256 * 1024;

enum Listener {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener),
}

/// The running milter, as the daemon holds it: it feeds in allowlist and policy changes.
pub struct MilterHandle {
    endpoint: MilterEndpoint,
    policy: watch::Sender<Arc<Policy>>,
    allowlist: watch::Sender<Arc<AllowSnapshot>>,
    stats: Arc<MilterStats>,
    /// The allowlist the snapshot was built from.
    current: BTreeSet<Cidr>,
    task: tokio::task::JoinHandle<()>,
    state_dir: PathBuf,
    /// The last write of the `status` file, off the daemon's loop (a stalled disk must not
    /// hold up allowlist updates); a new one is skipped while it runs.
    status_write: Option<tokio::task::JoinHandle<()>>,
    /// The last write failed (warned once until one succeeds).
    status_write_failed: Arc<AtomicBool>,
}

/// A bound milter endpoint, not serving yet: the daemon binds before it touches the kernel
/// (a taken port is a configuration error) and serves once the allowlist is known.
pub struct BoundMilter {
    settings: MilterSettings,
    listener: Listener,
    state_dir: PathBuf,
}

impl BoundMilter {
    /// Starts serving, judging against `allowlist` until the daemon says otherwise. Must run
    /// inside the tokio runtime.
    pub fn serve(self, allowlist: &BTreeSet<Cidr>) -> MilterHandle {
        let settings = self.settings;
        let (policy, policy_rx) = watch::channel(Arc::new(settings.policy.clone()));
        let (allow, allow_rx) = watch::channel(Arc::new(AllowSnapshot::new(allowlist)));
        let stats = Arc::new(MilterStats::default());
        let shared = Shared {
            policy: policy_rx,
            allowlist: allow_rx,
            stats: stats.clone(),
        };
        let limit = Arc::new(Semaphore::new(settings.max_connections));
        let task = tokio::spawn(serve(self.listener, shared, limit, settings.idle_timeout));
        tracing::info!(
            endpoint = %settings.endpoint,
            required = ?settings.policy.rules.required.iter().map(|h| h.as_str()).collect::<Vec<_>>(),
            exempt = ?settings.policy.rules.exempt.iter().map(ToString::to_string).collect::<Vec<_>>(),
            missing = settings.policy.on_missing.name(),
            forged = settings.policy.on_forged.name(),
            allowlist = allowlist.len(),
            "milter listening"
        );
        let mut handle = MilterHandle {
            endpoint: settings.endpoint,
            policy,
            allowlist: allow,
            stats,
            current: allowlist.clone(),
            task,
            state_dir: self.state_dir,
            status_write: None,
            status_write_failed: Arc::new(AtomicBool::new(false)),
        };
        handle.write_status();
        handle
    }
}

impl MilterHandle {
    /// Binds the endpoint: a taken port, or a socket a live milter answers on, is an error.
    /// Must run inside the tokio runtime.
    pub fn bind(settings: &MilterSettings, state_dir: &Path) -> anyhow::Result<BoundMilter> {
        Ok(BoundMilter {
            listener: bind(&settings.endpoint)?,
            settings: settings.clone(),
            state_dir: state_dir.to_owned(),
        })
    }

    /// The next messages are judged against `wanted` (the allowlist the maps get); logged
    /// when it differs from the last one.
    pub fn set_allowlist(&mut self, wanted: &BTreeSet<Cidr>) {
        if *wanted == self.current {
            return;
        }
        self.allowlist
            .send_replace(Arc::new(AllowSnapshot::new(wanted)));
        let added: Vec<String> = wanted
            .difference(&self.current)
            .map(ToString::to_string)
            .collect();
        let removed: Vec<String> = self
            .current
            .difference(wanted)
            .map(ToString::to_string)
            .collect();
        tracing::info!(
            entries = wanted.len(),
            ?added,
            ?removed,
            "milter allowlist updated"
        );
        self.current = wanted.clone();
    }

    /// The next messages follow `policy` (a reload).
    pub fn set_policy(&self, policy: &Policy) {
        self.policy.send_replace(Arc::new(policy.clone()));
    }

    /// The allowlist the milter judges by now.
    pub fn allowlist(&self) -> &BTreeSet<Cidr> {
        &self.current
    }

    pub fn allowlist_len(&self) -> usize {
        self.current.len()
    }

    pub fn counts(&self) -> MilterCounts {
        self.stats.counts()
    }

    /// Writes the counters for `mxguard status` in the background (warns once if the state
    /// dir is unwritable).
    pub fn write_status(&mut self) {
        if self
            .status_write
            .as_ref()
            .is_some_and(|write| !write.is_finished())
        {
            return;
        }
        let status = self.status();
        let state_dir = self.state_dir.clone();
        let failed = self.status_write_failed.clone();
        self.status_write = Some(tokio::task::spawn_blocking(move || {
            match stats::write(&state_dir, &status) {
                Ok(()) => failed.store(false, Ordering::Relaxed),
                Err(error) if !failed.swap(true, Ordering::Relaxed) => {
                    tracing::warn!("milter counters for `status` not written: {error:#}");
                }
                Err(_) => {}
            }
        }));
    }

    fn status(&self) -> MilterStatus {
        MilterStatus {
            endpoint: self.endpoint.to_string(),
            pid: std::process::id(),
            updated_unix_secs: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            counts: self.counts(),
        }
    }

    /// Stops accepting, writes the final counters and removes a unix socket.
    pub fn stop(self) {
        self.task.abort();
        if let Err(error) = stats::write(&self.state_dir, &self.status()) {
            tracing::warn!("final milter counters for `status` not written: {error:#}");
        }
        if let MilterEndpoint::Unix(path) = &self.endpoint {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn bind(endpoint: &MilterEndpoint) -> anyhow::Result<Listener> {
    match endpoint {
        MilterEndpoint::Inet(addr) => {
            let listener = std::net::TcpListener::bind(addr)
                .with_context(|| format!("cannot listen on milter endpoint {endpoint}"))?;
            listener.set_nonblocking(true)?;
            Ok(Listener::Tcp(tokio::net::TcpListener::from_std(listener)?))
        }
        MilterEndpoint::Unix(path) => {
            remove_stale_socket(path)?;
            let listener = std::os::unix::net::UnixListener::bind(path)
                .with_context(|| format!("cannot listen on milter endpoint {endpoint}"))?;
            listener.set_nonblocking(true)?;
            // Postfix's smtpd runs as the postfix user: group postfix may connect.
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
                .with_context(|| format!("setting the mode of {}", path.display()))?;
            if let Ok(Some(group)) = nix::unistd::Group::from_name("postfix") {
                let _ = nix::unistd::chown(path, None, Some(group.gid));
            }
            Ok(Listener::Unix(tokio::net::UnixListener::from_std(
                listener,
            )?))
        }
    }
}

/// A socket file left by a daemon that died is removed; one a live milter answers on is not.
fn remove_stale_socket(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::FileTypeExt as _;
    let Ok(metadata) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !metadata.file_type().is_socket() {
        bail!(
            "milter socket path {} exists and is not a socket",
            path.display()
        );
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        bail!("another milter is listening on {}", path.display());
    }
    std::fs::remove_file(path).with_context(|| format!("removing stale {}", path.display()))
}

/// TCP keepalive on milter connections: an MTA host that vanished (a crash, a partition)
/// frees its connection after about two minutes instead of holding a slot forever.
const KEEPALIVE: socket2::TcpKeepalive = socket2::TcpKeepalive::new()
    .with_time(Duration::from_secs(60))
    .with_interval(Duration::from_secs(10))
    .with_retries(6);

async fn serve(listener: Listener, shared: Shared, limit: Arc<Semaphore>, idle: Duration) {
    loop {
        let accepted = match &listener {
            Listener::Tcp(tcp) => tcp.accept().await.map(|(stream, peer)| {
                let _ = stream.set_nodelay(true);
                if let Err(error) = socket2::SockRef::from(&stream).set_tcp_keepalive(&KEEPALIVE) {
                    tracing::debug!(%peer, "no TCP keepalive on a milter connection: {error}");
                }
                (Stream::Tcp(QuickAck(stream)), peer.to_string())
            }),
            Listener::Unix(unix) => unix
                .accept()
                .await
                .map(|(stream, _)| (Stream::Unix(stream), "unix socket".to_owned())),
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: wait a moment instead of spinning.
                tracing::warn!("milter accept failed: {error}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            shared.stats.count_connection(ConnectionEvent::Refused);
            let refused = shared.stats.counts().connections_refused;
            // The first and then every hundredth: a storm must not flood the log.
            if refused % 100 == 1 {
                tracing::warn!(
                    peer,
                    refused,
                    "milter connection refused: too many open (--milter-max-connections); \
                     Postfix applies its milter_default_action"
                );
            }
            drop(stream);
            continue;
        };
        shared.stats.count_connection(ConnectionEvent::Opened);
        let shared = shared.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match stream {
                Stream::Tcp(stream) => handle(stream, shared, &peer, idle).await,
                Stream::Unix(stream) => handle(stream, shared, &peer, idle).await,
            }
        });
    }
}

enum Stream {
    Tcp(QuickAck),
    Unix(tokio::net::UnixStream),
}

/// A milter TCP connection that acknowledges at once whatever it reads. Postfix sends a
/// macro packet (which gets no answer) right before most commands, as two writes on a socket
/// with Nagle's algorithm on: the command waits for the ACK of the macros, which a delayed
/// ACK holds back for up to 40 ms. Measured: 50 ms per message on loopback without this.
struct QuickAck(tokio::net::TcpStream);

impl QuickAck {
    fn ack_now(&self) {
        use std::os::fd::AsRawFd as _;
        let on: libc::c_int = 1;
        // SAFETY: setsockopt on a socket this struct owns, with a pointer to a live c_int and
        // its size; the kernel clears TCP_QUICKACK by itself, hence after every read.
        unsafe {
            libc::setsockopt(
                self.0.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_QUICKACK,
                (&raw const on).cast(),
                std::mem::size_of_val(&on) as libc::socklen_t,
            );
        }
    }
}

impl AsyncRead for QuickAck {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let poll = std::pin::Pin::new(&mut self.0).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.ack_now();
        }
        poll
    }
}

impl AsyncWrite for QuickAck {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// Serves one connection to its end; an error ends only this connection.
async fn handle<S>(stream: S, shared: Shared, peer: &str, idle: Duration)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let stats = shared.stats.clone();
    let mut milter = MilterSession::new(shared);
    if let Err(error) = super::wire::serve(stream, &mut milter, MAX_PACKET, idle).await {
        stats.count_connection(ConnectionEvent::Error);
        tracing::info!(peer, "milter connection closed on an error: {error:#}");
    }
}
