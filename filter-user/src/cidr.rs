//! Allowlist prefixes: parsing CIDR text and turning prefixes into LPM trie keys.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    str::FromStr,
};

use anyhow::{Context as _, bail};

/// One allowlist prefix, always in canonical form: host bits clear, and an IPv4-mapped IPv6
/// prefix (`::ffff:a.b.c.d/n`, n >= 96) stored as the IPv4 prefix it denotes, because the XDP
/// program judges IPv4-mapped sources by the IPv4 list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Cidr {
    V4 { addr: Ipv4Addr, prefix_len: u8 },
    V6 { addr: Ipv6Addr, prefix_len: u8 },
}

impl Cidr {
    /// A prefix from an address and a length; errors on a too-long prefix or set host bits.
    pub fn new(addr: IpAddr, prefix_len: u8) -> anyhow::Result<Self> {
        match addr {
            IpAddr::V4(addr) => {
                if prefix_len > 32 {
                    bail!("prefix length /{prefix_len} is longer than 32 for IPv4 address {addr}");
                }
                let masked = Ipv4Addr::from_bits(addr.to_bits() & v4_mask(prefix_len));
                if masked != addr {
                    bail!(
                        "{addr}/{prefix_len} has host bits set (did you mean {masked}/{prefix_len}?)"
                    );
                }
                Ok(Cidr::V4 { addr, prefix_len })
            }
            IpAddr::V6(addr) => {
                if prefix_len > 128 {
                    bail!("prefix length /{prefix_len} is longer than 128 for IPv6 address {addr}");
                }
                let masked = Ipv6Addr::from_bits(addr.to_bits() & v6_mask(prefix_len));
                if masked != addr {
                    bail!(
                        "{addr}/{prefix_len} has host bits set (did you mean {masked}/{prefix_len}?)"
                    );
                }
                // A mapped address with a prefix under /96 always has host bits set (the
                // ffff sits in bits 32..48), so the check above covers that case.
                if let Some(v4) = addr.to_ipv4_mapped() {
                    return Ok(Cidr::V4 {
                        addr: v4,
                        prefix_len: prefix_len - 96,
                    });
                }
                Ok(Cidr::V6 { addr, prefix_len })
            }
        }
    }

    /// The single-address prefix (/32 or /128) for `addr`.
    pub fn host(addr: IpAddr) -> Self {
        match addr {
            IpAddr::V4(addr) => Cidr::V4 {
                addr,
                prefix_len: 32,
            },
            IpAddr::V6(addr) => match addr.to_ipv4_mapped() {
                Some(addr) => Cidr::V4 {
                    addr,
                    prefix_len: 32,
                },
                None => Cidr::V6 {
                    addr,
                    prefix_len: 128,
                },
            },
        }
    }

    pub fn addr(&self) -> IpAddr {
        match *self {
            Cidr::V4 { addr, .. } => IpAddr::V4(addr),
            Cidr::V6 { addr, .. } => IpAddr::V6(addr),
        }
    }

    pub fn prefix_len(&self) -> u8 {
        match *self {
            Cidr::V4 { prefix_len, .. } | Cidr::V6 { prefix_len, .. } => prefix_len,
        }
    }

    /// Whether `ip` falls inside this prefix (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            ip => ip,
        };
        match (*self, ip) {
            (Cidr::V4 { addr, prefix_len }, IpAddr::V4(ip)) => {
                ip.to_bits() & v4_mask(prefix_len) == addr.to_bits()
            }
            (Cidr::V6 { addr, prefix_len }, IpAddr::V6(ip)) => {
                ip.to_bits() & v6_mask(prefix_len) == addr.to_bits()
            }
            _ => false,
        }
    }
}

pub(crate) fn v4_mask(prefix_len: u8) -> u32 {
    u32::MAX
        .checked_shl(32 - u32::from(prefix_len))
        .unwrap_or(0)
}

pub(crate) fn v6_mask(prefix_len: u8) -> u128 {
    u128::MAX
        .checked_shl(128 - u32::from(prefix_len))
        .unwrap_or(0)
}

impl FromStr for Cidr {
    type Err = anyhow::Error;

    /// Accepts `ADDR/LEN` or a bare `ADDR` (a single host), IPv4 or IPv6.
    fn from_str(text: &str) -> anyhow::Result<Self> {
        let trimmed = text.trim();
        let parse = || -> anyhow::Result<Cidr> {
            let (addr, prefix_len) = match trimmed.split_once('/') {
                Some((addr, len)) => (addr, Some(len)),
                None => (trimmed, None),
            };
            let addr: IpAddr = addr
                .parse()
                .with_context(|| format!("{addr:?} is not an IP address"))?;
            let prefix_len = match prefix_len {
                None => match addr {
                    IpAddr::V4(_) => 32,
                    IpAddr::V6(_) => 128,
                },
                Some(len) => len
                    .parse::<u8>()
                    .ok()
                    .filter(|_| len.bytes().all(|b| b.is_ascii_digit()))
                    .with_context(|| format!("{len:?} is not a prefix length"))?,
            };
            Cidr::new(addr, prefix_len)
        };
        parse().with_context(|| format!("invalid CIDR {text:?}"))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr(), self.prefix_len())
    }
}

/// Reads an allow file: one CIDR or address per line; `#` starts a comment; blank lines are
/// ignored. Every bad line is reported with its number, all at once.
pub fn parse_allow_file(text: &str, origin: &str) -> anyhow::Result<Vec<Cidr>> {
    let mut cidrs = Vec::new();
    let mut errors = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let content = line.split('#').next().unwrap_or("").trim();
        if content.is_empty() {
            continue;
        }
        match content.parse::<Cidr>() {
            Ok(cidr) => cidrs.push(cidr),
            Err(error) => errors.push(format!("{origin}:{}: {error:#}", index + 1)),
        }
    }
    if !errors.is_empty() {
        bail!("{}", errors.join("\n"));
    }
    Ok(cidrs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> String {
        text.parse::<Cidr>()
            .unwrap_or_else(|e| panic!("{text}: {e:#}"))
            .to_string()
    }

    fn err(text: &str) -> String {
        format!("{:#}", text.parse::<Cidr>().expect_err(text))
    }

    #[test]
    fn parses_good_prefixes() {
        assert_eq!(ok("192.0.2.0/24"), "192.0.2.0/24");
        assert_eq!(ok("192.0.2.7"), "192.0.2.7/32");
        assert_eq!(ok(" 198.51.100.0/31 "), "198.51.100.0/31");
        assert_eq!(ok("0.0.0.0/0"), "0.0.0.0/0");
        assert_eq!(ok("2001:db8::/32"), "2001:db8::/32");
        assert_eq!(ok("2001:db8::1"), "2001:db8::1/128");
        assert_eq!(ok("::/0"), "::/0");
    }

    #[test]
    fn ipv4_mapped_prefixes_become_ipv4() {
        assert_eq!(ok("::ffff:192.0.2.1"), "192.0.2.1/32");
        assert_eq!(ok("::ffff:192.0.2.0/120"), "192.0.2.0/24");
        assert!(err("::ffff:0:0/95").contains("host bits"));
    }

    #[test]
    fn rejects_bad_prefixes_with_the_offending_text() {
        assert!(err("192.0.2.0/33").contains("longer than 32"));
        assert!(err("2001:db8::/129").contains("longer than 128"));
        assert!(err("192.0.2.1/24").contains("did you mean 192.0.2.0/24"));
        assert!(err("192.0.2.0/").contains("\"192.0.2.0/\""));
        assert!(err("192.0.2.0/+8").contains("not a prefix length"));
        assert!(err("192.0.2.0/abc").contains("not a prefix length"));
        assert!(err("mail.example.test").contains("not an IP address"));
        assert!(err("192.0.2.256").contains("not an IP address"));
        assert!(err("").contains("invalid CIDR"));
    }

    #[test]
    fn contains_respects_prefix_edges() {
        let net: Cidr = "192.0.2.128/25".parse().unwrap();
        assert!(net.contains("192.0.2.128".parse().unwrap()));
        assert!(net.contains("192.0.2.255".parse().unwrap()));
        assert!(!net.contains("192.0.2.127".parse().unwrap()));
        assert!(net.contains("::ffff:192.0.2.200".parse().unwrap()));
        let all: Cidr = "::/0".parse().unwrap();
        assert!(all.contains("2001:db8::1".parse().unwrap()));
        assert!(!all.contains("192.0.2.1".parse().unwrap()));
    }

    #[test]
    fn allow_file_reports_every_bad_line() {
        let text = "# relays\n192.0.2.0/24\n\n2001:db8::/48 # v6 relays\nbogus\n198.51.100.1/24\n";
        let error = format!("{:#}", parse_allow_file(text, "allow.txt").unwrap_err());
        assert!(error.contains("allow.txt:5"), "{error}");
        assert!(error.contains("allow.txt:6"), "{error}");
        let good = parse_allow_file("# relays\n192.0.2.0/24\n2001:db8::/48 # v6\n", "a").unwrap();
        assert_eq!(good.len(), 2);
    }
}
