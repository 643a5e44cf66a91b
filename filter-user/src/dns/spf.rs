//! A small, strict parser for SPF records (RFC 7208 section 4.6 and 5), just for what
//! `--allow-spf` needs: which terms can contribute relay addresses. decon-spf 0.3.3 (MIT) was
//! considered and not used: it refuses records longer than 512 characters (real records,
//! joined from several TXT strings, are longer), classifies terms by substring (`contains("ip4:")`)
//! and leaves `a`/`mx` CIDR lengths unparsed (docs/dns.md, "SPF sources", decision S1).

use std::{
    fmt,
    net::{Ipv4Addr, Ipv6Addr},
};

use anyhow::{Context as _, bail};

use super::HostName;
use crate::cidr::Cidr;

/// A term's qualifier.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Qualifier {
    Pass,
    Fail,
    SoftFail,
    Neutral,
}

impl Qualifier {
    fn sign(self) -> &'static str {
        match self {
            Qualifier::Pass => "+",
            Qualifier::Fail => "-",
            Qualifier::SoftFail => "~",
            Qualifier::Neutral => "?",
        }
    }
}

/// A mechanism, with its target resolved to what the expander needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mechanism {
    All,
    Include(HostName),
    /// `a[:domain][/len4][//len6]`; `None` = the record's own domain.
    A {
        domain: Option<HostName>,
        v4_len: u8,
        v6_len: u8,
    },
    /// `mx[:domain][/len4][//len6]`.
    Mx {
        domain: Option<HostName>,
        v4_len: u8,
        v6_len: u8,
    },
    /// `ip4:` / `ip6:`, host bits cleared.
    Ip(Cidr),
    /// `ptr`, `exists` and any term with a macro: a real evaluator would query DNS for them,
    /// so they count toward the lookup limit, but they cannot name relay ranges.
    Ignored,
}

/// One mechanism with its qualifier and its text (for logs and origin chains).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Term {
    pub qualifier: Qualifier,
    pub mechanism: Mechanism,
    pub text: String,
}

/// A parsed `v=spf1` record.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Record {
    pub terms: Vec<Term>,
    /// `redirect=`; used only when the record has no `all` (RFC 7208 6.1).
    pub redirect: Option<HostName>,
    /// The text of every term the expander ignores (ptr, exists, macros), for one warning.
    pub ignored: Vec<String>,
}

impl Record {
    /// Whether `text` (one TXT record, its strings joined) is an SPF record at all: it starts
    /// with `v=spf1` followed by a space or its end (RFC 7208 4.5).
    pub fn is_spf(text: &str) -> bool {
        let lower = text.trim_start().to_ascii_lowercase();
        lower == "v=spf1" || lower.starts_with("v=spf1 ")
    }

    /// Parses one record. Any syntax error is an error (a "permerror"): the record is not used.
    pub fn parse(text: &str) -> anyhow::Result<Record> {
        let mut words = text.split_ascii_whitespace();
        if !words
            .next()
            .is_some_and(|version| version.eq_ignore_ascii_case("v=spf1"))
        {
            bail!("does not start with v=spf1");
        }
        let mut record = Record::default();
        for word in words {
            record
                .add(word)
                .with_context(|| format!("bad SPF term {word:?}"))?;
        }
        Ok(record)
    }

    /// Whether the record has an `all` term (which makes `redirect=` unused).
    pub fn has_all(&self) -> bool {
        self.terms.iter().any(|t| t.mechanism == Mechanism::All)
    }

    fn add(&mut self, word: &str) -> anyhow::Result<()> {
        // A modifier is `name=value` with a name of letters, digits, '-', '_', '.'.
        if let Some((name, value)) = word.split_once('=')
            && !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            if name.eq_ignore_ascii_case("redirect") {
                if self.redirect.is_some() {
                    bail!("redirect= given twice");
                }
                if value.contains('%') {
                    self.ignored.push(word.to_owned());
                } else {
                    self.redirect = Some(domain(value)?);
                }
            }
            // exp= (an explanation text) and unknown modifiers change no address.
            return Ok(());
        }
        let (qualifier, rest) = match word.as_bytes().first() {
            Some(b'+') => (Qualifier::Pass, &word[1..]),
            Some(b'-') => (Qualifier::Fail, &word[1..]),
            Some(b'~') => (Qualifier::SoftFail, &word[1..]),
            Some(b'?') => (Qualifier::Neutral, &word[1..]),
            _ => (Qualifier::Pass, word),
        };
        let (name, argument) = match rest.find([':', '/']) {
            Some(at) => (&rest[..at], Some(&rest[at..])),
            None => (rest, None),
        };
        let name = name.to_ascii_lowercase();
        let target = argument.and_then(|a| a.strip_prefix(':'));
        let has_macro = rest.contains('%');
        let mechanism = match name.as_str() {
            "all" if argument.is_none() => Mechanism::All,
            "include" | "exists" | "ptr" | "a" | "mx" if has_macro => Mechanism::Ignored,
            "include" => Mechanism::Include(domain(target.context("include needs a domain")?)?),
            "exists" => {
                target.context("exists needs a domain")?;
                Mechanism::Ignored
            }
            "ptr" => Mechanism::Ignored,
            "a" | "mx" => {
                let (domain_text, lengths) = split_lengths(argument.unwrap_or(""))?;
                let domain_name = match domain_text {
                    Some(text) => Some(domain(text)?),
                    None => None,
                };
                let (v4_len, v6_len) = lengths;
                if name == "a" {
                    Mechanism::A {
                        domain: domain_name,
                        v4_len,
                        v6_len,
                    }
                } else {
                    Mechanism::Mx {
                        domain: domain_name,
                        v4_len,
                        v6_len,
                    }
                }
            }
            "ip4" => Mechanism::Ip(ip4(target.context("ip4 needs an address")?)?),
            "ip6" => Mechanism::Ip(ip6(target.context("ip6 needs an address")?)?),
            _ => bail!("unknown mechanism"),
        };
        if mechanism == Mechanism::Ignored {
            self.ignored.push(word.to_owned());
        }
        self.terms.push(Term {
            qualifier,
            mechanism,
            text: format!("{}{}", qualifier.sign(), rest)
                .trim_start_matches('+')
                .to_owned(),
        });
        Ok(())
    }
}

impl fmt::Display for Term {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

fn domain(text: &str) -> anyhow::Result<HostName> {
    text.parse()
}

/// `[:domain][/len4][//len6]` of `a` and `mx`.
fn split_lengths(argument: &str) -> anyhow::Result<(Option<&str>, (u8, u8))> {
    let (domain_part, lengths) = match argument.find('/') {
        Some(at) => (&argument[..at], &argument[at..]),
        None => (argument, ""),
    };
    let domain_text = match domain_part {
        "" => None,
        text => Some(text.strip_prefix(':').context("expected :domain")?),
    };
    let length = |text: &str, max: u8| -> anyhow::Result<u8> {
        match text.parse::<u8>() {
            // No sign, no leading zero (RFC 7208 5.6: 1*DIGIT without "0" first, or "0").
            Ok(len) if len <= max && (text == "0" || !text.starts_with('0')) => Ok(len),
            _ => bail!("bad prefix length {text:?}"),
        }
    };
    let (v4, v6) = match lengths.strip_prefix("//") {
        Some(v6) => (32, length(v6, 128)?),
        None => match lengths.strip_prefix('/') {
            None => (32, 128),
            Some(rest) => match rest.split_once("//") {
                Some((v4, v6)) => (length(v4, 32)?, length(v6, 128)?),
                None => (length(rest, 32)?, 128),
            },
        },
    };
    Ok((domain_text, (v4, v6)))
}

fn ip4(text: &str) -> anyhow::Result<Cidr> {
    let (addr, len) = text.split_once('/').unwrap_or((text, "32"));
    let addr: Ipv4Addr = addr.parse().context("not an IPv4 address")?;
    let len: u8 = len
        .parse()
        .ok()
        .filter(|len| *len <= 32)
        .context("bad IPv4 prefix length")?;
    Ok(masked(addr.into(), len))
}

fn ip6(text: &str) -> anyhow::Result<Cidr> {
    let (addr, len) = text.split_once('/').unwrap_or((text, "128"));
    let addr: Ipv6Addr = addr.parse().context("not an IPv6 address")?;
    let len: u8 = len
        .parse()
        .ok()
        .filter(|len| *len <= 128)
        .context("bad IPv6 prefix length")?;
    Ok(masked(addr.into(), len))
}

/// The prefix of `len` bits containing `addr` (SPF allows host bits: `ip4:192.0.2.1/24`).
pub fn masked(addr: std::net::IpAddr, len: u8) -> Cidr {
    let addr = match addr {
        std::net::IpAddr::V4(v4) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            std::net::IpAddr::V4(Ipv4Addr::from_bits(v4.to_bits() & mask))
        }
        std::net::IpAddr::V6(v6) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            std::net::IpAddr::V6(Ipv6Addr::from_bits(v6.to_bits() & mask))
        }
    };
    // Cannot fail: the length is in range and the host bits are clear.
    Cidr::new(addr, len).unwrap_or_else(|_| Cidr::host(addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Record {
        Record::parse(text).unwrap_or_else(|e| panic!("{text}: {e:#}"))
    }

    fn cidr(text: &str) -> Cidr {
        text.parse().unwrap()
    }

    #[test]
    fn recognises_spf_records() {
        assert!(Record::is_spf("v=spf1 -all"));
        assert!(Record::is_spf("V=SPF1"));
        assert!(!Record::is_spf("v=spf10 -all"));
        assert!(!Record::is_spf("google-site-verification=abc"));
    }

    #[test]
    fn parses_the_terms_that_name_addresses() {
        let record = parse(
            "v=spf1 ip4:192.0.2.1/24 +ip6:2001:db8::/32 a a:relay.example.test/28 \
             mx:Example.test//64 mx/24//48 include:_spf.example.test ~all",
        );
        let mechanisms: Vec<_> = record.terms.iter().map(|t| t.mechanism.clone()).collect();
        let name = |n: &str| n.parse::<HostName>().unwrap();
        assert_eq!(
            mechanisms,
            [
                Mechanism::Ip(cidr("192.0.2.0/24")),
                Mechanism::Ip(cidr("2001:db8::/32")),
                Mechanism::A {
                    domain: None,
                    v4_len: 32,
                    v6_len: 128
                },
                Mechanism::A {
                    domain: Some(name("relay.example.test")),
                    v4_len: 28,
                    v6_len: 128
                },
                Mechanism::Mx {
                    domain: Some(name("example.test")),
                    v4_len: 32,
                    v6_len: 64
                },
                Mechanism::Mx {
                    domain: None,
                    v4_len: 24,
                    v6_len: 48
                },
                Mechanism::Include(name("_spf.example.test")),
                Mechanism::All,
            ]
        );
        assert_eq!(record.terms[7].qualifier, Qualifier::SoftFail);
        assert!(
            record.terms[..7]
                .iter()
                .all(|t| t.qualifier == Qualifier::Pass)
        );
        assert!(record.has_all() && record.redirect.is_none() && record.ignored.is_empty());
        assert_eq!(record.terms[1].text, "ip6:2001:db8::/32");
    }

    #[test]
    fn modifiers_and_ignored_terms() {
        let record = parse(
            "v=spf1 ptr exists:%{i}.rbl.example.test -include:%{d}.example.test \
             redirect=_spf.example.test exp=explain.example.test future=1",
        );
        assert_eq!(record.redirect, Some("_spf.example.test".parse().unwrap()));
        assert_eq!(
            record.ignored,
            [
                "ptr",
                "exists:%{i}.rbl.example.test",
                "-include:%{d}.example.test"
            ]
        );
        assert!(
            record
                .terms
                .iter()
                .all(|t| t.mechanism == Mechanism::Ignored)
        );
    }

    #[test]
    fn syntax_errors_are_errors() {
        for bad in [
            "spf1 -all",
            "v=spf1 ip4:192.0.2.300",
            "v=spf1 ip4:192.0.2.0/33",
            "v=spf1 ip6:2001:db8::/129",
            "v=spf1 a/33",
            "v=spf1 include",
            "v=spf1 include:192.0.2.1",
            "v=spf1 frobnicate:example.test",
            "v=spf1 redirect=a.example.test redirect=b.example.test",
            "v=spf1 all:example.test",
        ] {
            assert!(Record::parse(bad).is_err(), "{bad}");
        }
    }
}
