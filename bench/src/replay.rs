//! The replayer: sends frames as fast as one core can through an AF_PACKET socket with
//! PACKET_QDISC_BYPASS (straight to the driver's xmit, no qdisc), in batches of `sendmmsg`.
//! It runs on its own thread, inside the sending namespace, pinned to one CPU, until told to
//! stop; the count of frames the kernel accepted is readable while it runs. It sends as fast as
//! it can, or paced to a fixed rate ([`Replayer::start_paced`]) so every contender meets the
//! same flood.

use std::{
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
};

use anyhow::{Context as _, bail};

/// Frames handed to the kernel per `sendmmsg` call.
const BATCH: usize = 64;
/// SCHED_FIFO priority of the sending thread (see `crate::set_fifo`).
const SENDER_PRIORITY: i32 = 40;

/// A running replayer; stops (and joins its thread) on drop.
pub struct Replayer {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    thread: Option<thread::JoinHandle<anyhow::Result<()>>>,
}

impl Replayer {
    /// Starts sending `frames` round and round out of `iface` in the namespace `netns_path`
    /// (`/run/netns/NAME`), on CPU `cpu`.
    pub fn start(
        netns_path: String,
        iface: String,
        frames: Vec<Vec<u8>>,
        cpu: usize,
    ) -> anyhow::Result<Replayer> {
        Self::start_paced(netns_path, iface, frames, cpu, None)
    }

    /// As [`Replayer::start`], at most `rate` frames per second if given.
    pub fn start_paced(
        netns_path: String,
        iface: String,
        frames: Vec<Vec<u8>>,
        cpu: usize,
        rate: Option<f64>,
    ) -> anyhow::Result<Replayer> {
        if frames.is_empty() {
            bail!("nothing to replay");
        }
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = {
            let (stop, sent) = (stop.clone(), sent.clone());
            thread::Builder::new()
                .name("mxbench-replay".into())
                .spawn(move || -> anyhow::Result<()> {
                    let socket = (|| {
                        let file = std::fs::File::open(&netns_path)
                            .with_context(|| format!("opening {netns_path}"))?;
                        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                            .context("entering the sending namespace")?;
                        crate::pin_current_thread(cpu)?;
                        crate::set_fifo(0, SENDER_PRIORITY);
                        open_socket(&iface)
                    })();
                    let socket = match socket {
                        Ok(socket) => {
                            let _ = ready_tx.send(Ok(()));
                            socket
                        }
                        Err(error) => {
                            let _ = ready_tx.send(Err(format!("{error:#}")));
                            return Err(error);
                        }
                    };
                    send_loop(&socket, &frames, &stop, &sent, rate)
                })
                .context("spawning the replayer thread")?
        };
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(message)) => bail!("replayer: {message}"),
            Err(_) => bail!("replayer thread died during set-up"),
        }
        Ok(Replayer {
            stop,
            sent,
            thread: Some(thread),
        })
    }

    /// Frames the kernel accepted so far (some may still be dropped further on, e.g. by a full
    /// veth ring: the receiver's counters say what arrived).
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Stops and reports an error the sending loop hit.
    pub fn finish(mut self) -> anyhow::Result<u64> {
        self.stop.store(true, Ordering::Relaxed);
        let result = self
            .thread
            .take()
            .map(|thread| thread.join())
            .unwrap_or(Ok(Ok(())));
        match result {
            Ok(result) => result.map(|()| self.sent()),
            Err(_) => bail!("the replayer thread panicked"),
        }
    }
}

impl Drop for Replayer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// An AF_PACKET raw socket bound to `iface` (protocol 0: it receives nothing), with
/// PACKET_QDISC_BYPASS and a large send buffer.
fn open_socket(iface: &str) -> anyhow::Result<OwnedFd> {
    let ifindex = nix::net::if_::if_nametoindex(iface)
        .with_context(|| format!("no interface {iface} in the sending namespace"))?;
    // SAFETY: plain socket(2) call; the result is checked before use.
    let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(std::io::Error::last_os_error()).context("socket(AF_PACKET)");
    }
    // SAFETY: raw is a fresh, valid descriptor that nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: sockaddr_ll is plain data; zeroed is a valid starting value.
    let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    address.sll_family = libc::AF_PACKET as u16;
    address.sll_ifindex = ifindex as i32;
    // SAFETY: address is a valid sockaddr_ll and the length passed is its size.
    let bound = unsafe {
        libc::bind(
            socket.as_raw_fd(),
            (&address as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if bound < 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("binding to {iface}"));
    }
    set_int(&socket, libc::SOL_PACKET, libc::PACKET_QDISC_BYPASS, 1)
        .context("PACKET_QDISC_BYPASS")?;
    // Without room for many frames in flight, sendmmsg blocks on every batch.
    set_int(&socket, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, 64 << 20).context("SO_SNDBUFFORCE")?;
    Ok(socket)
}

fn set_int(socket: &OwnedFd, level: i32, name: i32, value: i32) -> anyhow::Result<()> {
    // SAFETY: value is a live i32 and the length passed is its size.
    let result = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&value as *const i32).cast(),
            std::mem::size_of::<i32>() as u32,
        )
    };
    if result < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(())
}

fn send_loop(
    socket: &OwnedFd,
    frames: &[Vec<u8>],
    stop: &AtomicBool,
    sent: &AtomicU64,
    rate: Option<f64>,
) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    // One iovec per frame, built once; each batch points at the next BATCH of them.
    let mut iovecs: Vec<libc::iovec> = frames
        .iter()
        .map(|frame| libc::iovec {
            iov_base: frame.as_ptr() as *mut libc::c_void,
            iov_len: frame.len(),
        })
        .collect();
    // SAFETY: mmsghdr is plain data; zeroed means no name, no control data, no flags.
    let mut messages: Vec<libc::mmsghdr> =
        (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect();
    let mut next = 0usize;
    let mut errors = 0u64;
    while !stop.load(Ordering::Relaxed) {
        for message in messages.iter_mut() {
            message.msg_hdr.msg_iov = &mut iovecs[next];
            message.msg_hdr.msg_iovlen = 1;
            next = (next + 1) % iovecs.len();
        }
        // SAFETY: every message points at one iovec of a frame that outlives the call.
        let count =
            unsafe { libc::sendmmsg(socket.as_raw_fd(), messages.as_mut_ptr(), BATCH as u32, 0) };
        if count < 0 {
            let error = std::io::Error::last_os_error();
            match error.raw_os_error() {
                // A full device queue: try again, as a flood would.
                Some(libc::ENOBUFS | libc::EAGAIN | libc::EINTR) => {
                    errors += 1;
                    if errors > 10_000_000 {
                        bail!("the sending interface refuses every frame: {error}");
                    }
                }
                _ => return Err(error).context("sendmmsg"),
            }
        } else {
            let total = sent.fetch_add(count as u64, Ordering::Relaxed) + count as u64;
            if let Some(rate) = rate {
                // Ahead of the schedule: sleep (which also lets this CPU's softirq thread run).
                let due = std::time::Duration::from_secs_f64(total as f64 / rate);
                if let Some(ahead) = due.checked_sub(started.elapsed()) {
                    thread::sleep(ahead);
                }
            }
        }
    }
    Ok(())
}
