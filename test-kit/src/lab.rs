//! The mail-gateway topology the namespace suites and `cargo xtask run` share: a switch (a
//! bridge in its own namespace) joining the mail server, the filtering service's relay and a
//! direct sender, each with an `eth0` on documentation addresses.

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::netns::{Netns, veth};

/// Addresses of a lab host.
#[derive(Clone, Copy, Debug)]
pub struct HostAddrs {
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
}

pub struct MailLab {
    pub server: Netns,
    pub relay: Netns,
    pub direct: Netns,
    // Dropped last: the hosts' veth peers live here.
    pub switch: Netns,
}

impl MailLab {
    pub const SERVER: HostAddrs = HostAddrs {
        v4: Ipv4Addr::new(192, 0, 2, 1),
        v6: Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1),
    };
    pub const RELAY: HostAddrs = HostAddrs {
        v4: Ipv4Addr::new(192, 0, 2, 10),
        v6: Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10),
    };
    pub const DIRECT: HostAddrs = HostAddrs {
        v4: Ipv4Addr::new(192, 0, 2, 66),
        v6: Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x66),
    };

    /// Builds the lab; panics (with the failing `ip` command) if it cannot, since every test
    /// using it needs all of it.
    pub fn new() -> MailLab {
        Self::build().unwrap_or_else(|error| panic!("building the mail lab: {error:#}"))
    }

    fn build() -> anyhow::Result<MailLab> {
        let switch = Netns::new("sw")?;
        switch.ip(&["link", "add", "br0", "type", "bridge"])?;
        switch.ip(&["link", "set", "br0", "up"])?;
        let host = |tag: &str, addrs: HostAddrs| -> anyhow::Result<Netns> {
            let netns = Netns::new(tag)?;
            let port = format!("p-{tag}");
            veth(&netns, "eth0", &switch, &port)?;
            switch.ip(&["link", "set", &port, "master", "br0"])?;
            netns.ip(&["addr", "add", &format!("{}/24", addrs.v4), "dev", "eth0"])?;
            netns.ip(&[
                "addr",
                "add",
                &format!("{}/64", addrs.v6),
                "dev",
                "eth0",
                "nodad",
            ])?;
            Ok(netns)
        };
        let server = host("srv", Self::SERVER)?;
        let relay = host("rly", Self::RELAY)?;
        let direct = host("dir", Self::DIRECT)?;
        Ok(MailLab {
            server,
            relay,
            direct,
            switch,
        })
    }
}

impl Default for MailLab {
    fn default() -> Self {
        Self::new()
    }
}
