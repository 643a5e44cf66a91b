//! Protection that follows the interfaces: an XDP link dies with its device, so when a
//! protected interface is deleted and created again under the same name (a driver reload, a
//! network manager re-creating a bond or VLAN) the filter must be attached again.
//!
//! Link events (RTM_NEWLINK/RTM_DELLINK) come over an rtnetlink multicast socket. They only
//! trigger a check: the kernel's word is what each held link reports (a link whose device is
//! gone reports ifindex 0) and which device the name belongs to now, so a missed event (the
//! socket overran) costs nothing but the next event or retry.

use std::time::Duration;

use anyhow::Context as _;
use netlink_packet_core::{NetlinkBuffer, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::{RouteNetlinkMessage, link::LinkAttribute};
use netlink_sys::{AsyncSocket as _, AsyncSocketExt as _, SocketAddr, TokioSocket, protocols};
use tokio::time::Instant;

use crate::{
    filter::Filter,
    links::{AttachMode, AttachedMode},
    metrics,
};

/// `RTMGRP_LINK`: the multicast group of link notifications.
const RTMGRP_LINK: u32 = 1;

/// First retry of a failed re-attach; doubles up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);
/// Without the netlink socket, how often the interfaces are checked.
const FALLBACK_CHECK: Duration = Duration::from_secs(5);

/// A link notification: the device's name and index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkEvent {
    pub name: String,
    pub index: u32,
    pub deleted: bool,
}

/// An rtnetlink socket subscribed to link notifications of this network namespace.
pub struct LinkWatch {
    socket: TokioSocket,
}

impl LinkWatch {
    pub fn open() -> anyhow::Result<Self> {
        let mut socket =
            TokioSocket::new(protocols::NETLINK_ROUTE).context("opening an rtnetlink socket")?;
        socket
            .socket_mut()
            .bind(&SocketAddr::new(0, RTMGRP_LINK))
            .context("subscribing to link notifications")?;
        Ok(LinkWatch { socket })
    }

    /// The next datagram's link events. An error is the socket's (ENOBUFS: events were lost).
    pub async fn next(&mut self) -> std::io::Result<Vec<LinkEvent>> {
        let (datagram, _) = self.socket.recv_from_full().await?;
        Ok(parse_link_events(&datagram))
    }
}

/// The link messages in one netlink datagram (several messages may share one).
pub fn parse_link_events(datagram: &[u8]) -> Vec<LinkEvent> {
    let mut events = Vec::new();
    let mut rest = datagram;
    while let Ok(buffer) = NetlinkBuffer::new_checked(rest) {
        let length = buffer.length() as usize;
        if length == 0 || length > rest.len() {
            break;
        }
        if let Ok(message) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&rest[..length])
            && let NetlinkPayload::InnerMessage(inner) = message.payload
        {
            let (link, deleted) = match inner {
                RouteNetlinkMessage::NewLink(link) => (link, false),
                RouteNetlinkMessage::DelLink(link) => (link, true),
                _ => {
                    rest = &rest[aligned(length).min(rest.len())..];
                    continue;
                }
            };
            if let Some(name) = link
                .attributes
                .iter()
                .find_map(|attribute| match attribute {
                    LinkAttribute::IfName(name) => Some(name.clone()),
                    _ => None,
                })
            {
                events.push(LinkEvent {
                    name,
                    index: link.header.index,
                    deleted,
                });
            }
        }
        rest = &rest[aligned(length).min(rest.len())..];
    }
    events
}

const fn aligned(length: usize) -> usize {
    (length + 3) & !3
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Our link is attached to the device that has the name now.
    Attached { mode: AttachedMode, ifindex: u32 },
    /// No device has the name (the last mode it had, for the gauge).
    Missing { mode: AttachedMode },
    /// The device is there but attaching to it failed; retried.
    Failing {
        mode: AttachedMode,
        attempts: u32,
        next: Instant,
    },
}

impl State {
    fn mode(self) -> AttachedMode {
        match self {
            State::Attached { mode, .. }
            | State::Missing { mode }
            | State::Failing { mode, .. } => mode,
        }
    }
}

struct Watched {
    iface: String,
    state: State,
}

/// The protected interfaces and whether each is still filtered; re-attaches with the
/// configured mode policy when one comes back.
pub struct InterfaceWatch {
    watch: Option<LinkWatch>,
    mode: AttachMode,
    ifaces: Vec<Watched>,
}

impl InterfaceWatch {
    /// Starts watching `ifaces`, just attached in the modes `attached`.
    pub fn start(
        filter: &Filter,
        ifaces: &[String],
        attached: &[AttachedMode],
        mode: AttachMode,
    ) -> Self {
        let watch = match LinkWatch::open() {
            Ok(watch) => Some(watch),
            Err(error) => {
                tracing::warn!(
                    "link notifications unavailable, checking the interfaces every {}s instead: {error:#}",
                    FALLBACK_CHECK.as_secs()
                );
                None
            }
        };
        let ifaces = ifaces
            .iter()
            .zip(attached)
            .map(|(iface, &mode)| Watched {
                iface: iface.clone(),
                state: State::Attached {
                    mode,
                    ifindex: filter.links.link_ifindex(iface).unwrap_or(0),
                },
            })
            .collect();
        InterfaceWatch {
            watch,
            mode,
            ifaces,
        }
    }

    /// Resolves when the interfaces should be checked: a link event, a due retry, or (without
    /// notifications) the fallback interval. Cancel-safe.
    pub async fn changed(&mut self) {
        let retry = self
            .ifaces
            .iter()
            .filter_map(|watched| match watched.state {
                State::Failing { next, .. } => Some(next),
                _ => None,
            })
            .min();
        let deadline = match (&self.watch, retry) {
            (_, Some(next)) => Some(next),
            (None, None) => Some(Instant::now() + FALLBACK_CHECK),
            (Some(_), None) => None,
        };
        let sleep = async {
            match deadline {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        let event = async {
            match &mut self.watch {
                Some(watch) => watch.next().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = sleep => {}
            result = event => match result {
                Ok(events) => {
                    for event in events.iter().filter(|e| self.ifaces.iter().any(|w| w.iface == e.name)) {
                        tracing::debug!(iface = %event.name, ifindex = event.index, deleted = event.deleted, "link event");
                    }
                }
                // Events were lost: the check that follows looks at everything anyway.
                Err(error) if error.raw_os_error() == Some(libc::ENOBUFS) => {
                    tracing::debug!("link notifications overran; checking all interfaces");
                }
                Err(error) => {
                    tracing::warn!(
                        "link notifications failed, checking the interfaces every {}s instead: {error}",
                        FALLBACK_CHECK.as_secs()
                    );
                    self.watch = None;
                }
            },
        }
    }

    /// Compares every protected interface with the kernel: logs (once) an interface that went
    /// away, re-attaches to one that is back, retries failed attaches when due.
    pub fn check(&mut self, filter: &mut Filter) {
        let now = Instant::now();
        for watched in &mut self.ifaces {
            let iface = watched.iface.as_str();
            let current = nix::net::if_::if_nametoindex(iface).ok();
            let held = filter.links.link_ifindex(iface).filter(|&index| index != 0);
            let previous = watched.state;
            if let (Some(held), Some(current)) = (held, current)
                && held == current
            {
                if !matches!(previous, State::Attached { .. }) {
                    metrics::publish_attachment(iface, previous.mode().name());
                }
                watched.state = State::Attached {
                    mode: previous.mode(),
                    ifindex: current,
                };
                continue;
            }
            let Some(current) = current else {
                if !matches!(previous, State::Missing { .. }) {
                    tracing::warn!(
                        iface,
                        "protected interface is gone, and its XDP filter with it; re-attaching when it is back"
                    );
                    metrics::publish_detachment(iface, previous.mode().name());
                    watched.state = State::Missing {
                        mode: previous.mode(),
                    };
                }
                continue;
            };
            if let State::Failing { next, .. } = previous
                && next > now
            {
                continue;
            }
            if let State::Attached { .. } = previous {
                // Deleted and re-created between two checks: the warning was not given yet.
                tracing::warn!(
                    iface,
                    "protected interface was re-created, and its XDP filter went with the old one"
                );
                metrics::publish_detachment(iface, previous.mode().name());
            }
            match filter.reattach_pinned(iface, self.mode) {
                Ok(mode) => {
                    tracing::info!(iface, %mode, ifindex = current, "re-attached XDP filter to the re-created interface");
                    if mode != previous.mode() {
                        metrics::publish_detachment(iface, previous.mode().name());
                    }
                    metrics::publish_attachment(iface, mode.name());
                    watched.state = State::Attached {
                        mode,
                        ifindex: current,
                    };
                }
                Err(error) => {
                    let attempts = match previous {
                        State::Failing { attempts, .. } => attempts + 1,
                        _ => 1,
                    };
                    let delay = RETRY_FIRST
                        .saturating_mul(1 << attempts.saturating_sub(1).min(5))
                        .min(RETRY_MAX);
                    tracing::error!(
                        iface,
                        attempts,
                        "re-attaching XDP failed, retrying in {}s: {error:#}",
                        delay.as_secs()
                    );
                    watched.state = State::Failing {
                        mode: previous.mode(),
                        attempts,
                        next: now + delay,
                    };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RTM_NEWLINK then RTM_DELLINK for `eth0` (index 7) in one datagram, as the kernel sends.
    fn datagram() -> Vec<u8> {
        let mut out = Vec::new();
        for (kind, index) in [(16u16, 7u32), (17, 7)] {
            let mut message = Vec::new();
            // ifinfomsg: family, pad, type, index, flags, change.
            message.extend_from_slice(&[0, 0]);
            message.extend_from_slice(&1u16.to_ne_bytes());
            message.extend_from_slice(&index.to_ne_bytes());
            message.extend_from_slice(&0u32.to_ne_bytes());
            message.extend_from_slice(&0u32.to_ne_bytes());
            // IFLA_IFNAME "eth0\0", padded to 4.
            message.extend_from_slice(&9u16.to_ne_bytes());
            message.extend_from_slice(&3u16.to_ne_bytes());
            message.extend_from_slice(b"eth0\0\0\0\0");
            let length = 16 + message.len() as u32;
            out.extend_from_slice(&length.to_ne_bytes());
            out.extend_from_slice(&kind.to_ne_bytes());
            out.extend_from_slice(&0u16.to_ne_bytes());
            out.extend_from_slice(&0u32.to_ne_bytes());
            out.extend_from_slice(&0u32.to_ne_bytes());
            out.extend_from_slice(&message);
        }
        out
    }

    #[test]
    fn parses_new_and_deleted_links_from_one_datagram() {
        let events = parse_link_events(&datagram());
        assert_eq!(
            events,
            vec![
                LinkEvent {
                    name: "eth0".into(),
                    index: 7,
                    deleted: false
                },
                LinkEvent {
                    name: "eth0".into(),
                    index: 7,
                    deleted: true
                },
            ]
        );
    }

    #[test]
    fn garbage_gives_no_events() {
        assert!(parse_link_events(&[1, 2, 3]).is_empty());
        let mut truncated = datagram();
        truncated.truncate(20);
        assert!(parse_link_events(&truncated).is_empty());
    }
}
