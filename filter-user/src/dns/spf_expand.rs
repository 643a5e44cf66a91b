//! Expanding an `--allow-spf` name into the prefixes its SPF record passes: `ip4:`/`ip6:`,
//! `a` and `mx` (resolved, with their lengths), `include:` and `redirect=`, within RFC 7208's
//! limits (10 DNS-querying terms, 2 void lookups, no loops). Only pass-qualified terms
//! contribute; `all` never does, except that `+all` is handed on as 0.0.0.0/0 and ::/0 so the
//! minimum-prefix guard refuses it visibly. `ptr`, `exists` and macros are ignored (reported
//! once per record by the engine). See docs/dns.md, "SPF sources".
//!
//! Failures: a temporary failure (timeout, SERVFAIL, ...) of the top record fails the whole
//! source (fail-static in the engine); of an include, `a` or `mx` below it only that part, whose
//! last good prefixes the engine keeps ([`Expansion::failed`]). Anything that makes the record
//! unusable (syntax, limits, loops, an include without a record) is a permanent error for the
//! whole source, which then keeps its last good set too.

use std::{
    collections::{BTreeMap, BTreeSet},
    future::Future,
    pin::Pin,
    time::Duration,
};

use super::{
    Answer, FailureKind, FamilyAnswer, HostName, Resolve,
    spf::{Mechanism, Qualifier, Record, masked},
};
use crate::cidr::Cidr;

/// RFC 7208 4.6.4: at most this many DNS-querying terms (include, a, mx, ptr, exists,
/// redirect) over the whole evaluation.
pub const MAX_LOOKUPS: u32 = 10;
/// RFC 7208 4.6.4: at most this many lookups that return no records.
pub const MAX_VOID_LOOKUPS: u32 = 2;
/// RFC 7208 4.6.4: an `mx` term may name at most this many hosts.
pub const MAX_MX_HOSTS: usize = 10;

/// How a prefix was reached: `spf NAME`, then `include:X`, `redirect=Y`, `a:Z`, `mx:W`.
pub type Chain = Vec<String>;

/// Renders a chain for logs and `status`: `spf a.test → include:b.test`.
pub fn render_chain(chain: &[String]) -> String {
    chain.join(" → ")
}

/// What one expansion found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Expansion {
    /// Every prefix passed, with each chain that reached it.
    pub prefixes: BTreeMap<Cidr, BTreeSet<Chain>>,
    /// Parts that failed temporarily: the chain down to the failing term, and why. The engine
    /// keeps the last good prefixes whose chain starts with it.
    pub failed: Vec<(Chain, FailureKind)>,
    /// The smallest TTL of every answer used.
    pub ttl: Option<Duration>,
    /// Per record, the terms ignored (ptr, exists, macros).
    pub ignored: Vec<(HostName, Vec<String>)>,
    /// DNS-querying terms counted.
    pub lookups: u32,
}

enum Stop {
    /// The record cannot be used at all.
    Perm(String),
    /// A query failed for now.
    Temp(FailureKind),
}

struct Walk<'r, R> {
    resolver: &'r R,
    voids: u32,
    out: Expansion,
}

type Step<'a> = Pin<Box<dyn Future<Output = Result<(), Stop>> + Send + 'a>>;

/// Expands `root`'s SPF record. An error means nothing from this round is usable.
pub async fn expand<R: Resolve>(resolver: &R, root: &HostName) -> Result<Expansion, FailureKind> {
    let mut walk = Walk {
        resolver,
        voids: 0,
        out: Expansion::default(),
    };
    let chain = vec![format!("spf {}", short(root))];
    match walk.record(root.clone(), chain, vec![root.clone()]).await {
        Ok(()) => Ok(walk.out),
        Err(Stop::Temp(kind)) => Err(kind),
        Err(Stop::Perm(why)) => Err(FailureKind::SpfPermError(why)),
    }
}

/// A name without its root dot, as SPF records write it.
fn short(name: &HostName) -> &str {
    name.as_str().trim_end_matches('.')
}

impl<R: Resolve> Walk<'_, R> {
    fn ttl(&mut self, ttl: Duration) {
        self.out.ttl = Some(self.out.ttl.map_or(ttl, |t| t.min(ttl)));
    }

    fn count_lookup(&mut self) -> Result<(), Stop> {
        self.out.lookups += 1;
        if self.out.lookups > MAX_LOOKUPS {
            return Err(Stop::Perm(format!(
                "more than {MAX_LOOKUPS} DNS-querying terms"
            )));
        }
        Ok(())
    }

    fn void(&mut self, what: &str) -> Result<(), Stop> {
        self.voids += 1;
        if self.voids > MAX_VOID_LOOKUPS {
            return Err(Stop::Perm(format!(
                "more than {MAX_VOID_LOOKUPS} void lookups (the last: {what})"
            )));
        }
        Ok(())
    }

    fn add(&mut self, cidr: Cidr, chain: &Chain) {
        self.out
            .prefixes
            .entry(cidr)
            .or_default()
            .insert(chain.clone());
    }

    /// Evaluates `domain`'s record; `stack` holds the domains on the way (loop detection).
    fn record<'a>(&'a mut self, domain: HostName, chain: Chain, stack: Vec<HostName>) -> Step<'a> {
        Box::pin(async move {
            let is_root = stack.len() == 1;
            let texts = match self.resolver.txt(&domain).await {
                Answer::Records { data, ttl } => {
                    self.ttl(ttl);
                    data
                }
                Answer::NoData if is_root => return Err(Stop::Temp(FailureKind::Empty)),
                Answer::Failed(FailureKind::NxDomain) if is_root => {
                    return Err(Stop::Temp(FailureKind::NxDomain));
                }
                Answer::NoData | Answer::Failed(FailureKind::NxDomain) => {
                    self.void(&format!("TXT {}", short(&domain)))?;
                    return Err(Stop::Perm(format!("{} has no SPF record", short(&domain))));
                }
                Answer::Failed(kind) => return Err(Stop::Temp(kind)),
            };
            let mut spf = texts.iter().filter(|text| Record::is_spf(text));
            let (Some(text), None) = (spf.next(), spf.next()) else {
                return Err(Stop::Perm(format!(
                    "{} has no single v=spf1 record",
                    short(&domain)
                )));
            };
            let record = Record::parse(text)
                .map_err(|error| Stop::Perm(format!("{}: {error:#}", short(&domain))))?;
            if !record.ignored.is_empty() {
                self.out
                    .ignored
                    .push((domain.clone(), record.ignored.clone()));
            }
            for term in &record.terms {
                let pass = term.qualifier == Qualifier::Pass;
                match &term.mechanism {
                    Mechanism::All => {
                        if pass {
                            let mut leaf = chain.clone();
                            leaf.push("+all".into());
                            for any in ["0.0.0.0/0", "::/0"] {
                                self.add(any.parse().expect("a valid prefix"), &leaf);
                            }
                        }
                    }
                    Mechanism::Ip(cidr) => {
                        if pass {
                            self.add(*cidr, &chain);
                        }
                    }
                    Mechanism::Include(target) => {
                        self.count_lookup()?;
                        if !pass {
                            continue;
                        }
                        let mut sub = chain.clone();
                        sub.push(format!("include:{}", short(target)));
                        self.descend(target, sub, &stack).await?;
                    }
                    mechanism @ (Mechanism::A {
                        domain: target,
                        v4_len,
                        v6_len,
                    }
                    | Mechanism::Mx {
                        domain: target,
                        v4_len,
                        v6_len,
                    }) => {
                        self.count_lookup()?;
                        if !pass {
                            continue;
                        }
                        let target = target.clone().unwrap_or_else(|| domain.clone());
                        let is_mx = matches!(mechanism, Mechanism::Mx { .. });
                        let mut leaf = chain.clone();
                        let name = if is_mx { "mx" } else { "a" };
                        leaf.push(format!("{name}:{}", short(&target)));
                        if is_mx {
                            self.mx(&target, *v4_len, *v6_len, &leaf).await?;
                        } else {
                            self.addresses(&target, *v4_len, *v6_len, &leaf, true)
                                .await?;
                        }
                    }
                    Mechanism::Ignored => self.count_lookup()?,
                }
            }
            if let Some(target) = &record.redirect
                && !record.has_all()
            {
                self.count_lookup()?;
                let mut sub = chain.clone();
                sub.push(format!("redirect={}", short(target)));
                self.descend(target, sub, &stack).await?;
            }
            Ok(())
        })
    }

    /// An include or redirect: loops are permanent errors; a temporary failure below only
    /// fails that part.
    async fn descend(
        &mut self,
        target: &HostName,
        chain: Chain,
        stack: &[HostName],
    ) -> Result<(), Stop> {
        if stack.contains(target) {
            let path: Vec<&str> = stack.iter().map(short).chain([short(target)]).collect();
            return Err(Stop::Perm(format!("include loop: {}", path.join(" → "))));
        }
        let mut deeper = stack.to_vec();
        deeper.push(target.clone());
        match self.record(target.clone(), chain.clone(), deeper).await {
            Err(Stop::Temp(kind)) => {
                self.out.failed.push((chain, kind));
                Ok(())
            }
            other => other,
        }
    }

    /// The A and AAAA addresses of `host` as prefixes of the given lengths. `counts_void`: an
    /// `a` term's own query (an `mx` host's address lookups are not limited, RFC 7208 4.6.4).
    async fn addresses(
        &mut self,
        host: &HostName,
        v4_len: u8,
        v6_len: u8,
        chain: &Chain,
        counts_void: bool,
    ) -> Result<(), Stop> {
        let answer = self.resolver.lookup(host).await;
        let mut found = false;
        let mut failure = None;
        for (family, len) in [(answer.v4, v4_len), (answer.v6, v6_len)] {
            match family {
                FamilyAnswer::Records { addrs, ttl } => {
                    self.ttl(ttl);
                    found = true;
                    for addr in addrs {
                        self.add(masked(addr, len), chain);
                    }
                }
                FamilyAnswer::NoData | FamilyAnswer::Failed(FailureKind::NxDomain) => {}
                FamilyAnswer::Failed(kind) => failure = Some(kind),
            }
        }
        // One family failing is a failure of the part even when the other answered: the part
        // keeps its last good prefixes of both until they go stale (fail-static, S3).
        match (found, failure) {
            (_, Some(kind)) => self.out.failed.push((chain.clone(), kind)),
            (false, None) if counts_void => self.void(&format!("A/AAAA {}", short(host)))?,
            _ => {}
        }
        Ok(())
    }

    async fn mx(
        &mut self,
        domain: &HostName,
        v4_len: u8,
        v6_len: u8,
        chain: &Chain,
    ) -> Result<(), Stop> {
        let hosts = match self.resolver.mx(domain).await {
            Answer::Records { data, ttl } => {
                self.ttl(ttl);
                data
            }
            Answer::NoData | Answer::Failed(FailureKind::NxDomain) => {
                return self.void(&format!("MX {}", short(domain)));
            }
            Answer::Failed(kind) => {
                self.out.failed.push((chain.clone(), kind));
                return Ok(());
            }
        };
        if hosts.len() > MAX_MX_HOSTS {
            return Err(Stop::Perm(format!(
                "MX {} names more than {MAX_MX_HOSTS} hosts",
                short(domain)
            )));
        }
        for host in &hosts {
            self.addresses(host, v4_len, v6_len, chain, false).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! The expander's rules on a scripted resolver; tests/tests/dns_spf.rs runs the same
    //! shapes against a real DNS server.
    use std::{collections::BTreeMap, sync::Arc};

    use super::*;
    use crate::dns::NameAnswer;

    #[derive(Clone, Default)]
    struct Records {
        txt: Arc<BTreeMap<String, String>>,
    }

    impl Resolve for Records {
        async fn lookup(&self, _name: &HostName) -> NameAnswer {
            NameAnswer {
                v4: FamilyAnswer::Failed(FailureKind::NxDomain),
                v6: FamilyAnswer::Failed(FailureKind::NxDomain),
            }
        }

        async fn txt(&self, name: &HostName) -> Answer<Vec<String>> {
            match self.txt.get(name.as_str().trim_end_matches('.')) {
                Some(text) => Answer::Records {
                    data: vec![text.clone()],
                    ttl: Duration::from_secs(60),
                },
                None => Answer::Failed(FailureKind::NxDomain),
            }
        }
    }

    async fn expand_with(records: &[(&str, &str)]) -> Result<Expansion, FailureKind> {
        let resolver = Records {
            txt: Arc::new(
                records
                    .iter()
                    .map(|(n, t)| (n.to_string(), t.to_string()))
                    .collect(),
            ),
        };
        expand(&resolver, &records[0].0.parse().unwrap()).await
    }

    fn permerror(result: Result<Expansion, FailureKind>) -> String {
        match result {
            Err(FailureKind::SpfPermError(why)) => why,
            other => panic!("expected a permerror, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn loops_are_found_before_the_lookup_limit() {
        let why = permerror(
            expand_with(&[
                ("a.test", "v=spf1 include:b.test -all"),
                ("b.test", "v=spf1 include:a.test -all"),
            ])
            .await,
        );
        assert_eq!(why, "include loop: a.test → b.test → a.test");
        // A diamond is no loop.
        let done = expand_with(&[
            ("a.test", "v=spf1 include:b.test include:c.test -all"),
            ("b.test", "v=spf1 include:d.test -all"),
            ("c.test", "v=spf1 include:d.test -all"),
            ("d.test", "v=spf1 ip4:192.0.2.1 -all"),
        ])
        .await
        .unwrap();
        assert_eq!(
            done.prefixes.values().next().unwrap().len(),
            2,
            "two chains"
        );
        assert_eq!(done.lookups, 4);
    }

    #[tokio::test]
    async fn limits_and_redirects() {
        let many = format!(
            "v=spf1 {} -all",
            (0..11)
                .map(|_| "include:b.test")
                .collect::<Vec<_>>()
                .join(" ")
        );
        assert!(
            permerror(expand_with(&[("a.test", &many), ("b.test", "v=spf1 -all")]).await)
                .contains("more than 10"),
            "eleven includes"
        );
        let why =
            permerror(expand_with(&[("a.test", "v=spf1 a:x.test a:y.test a:z.test -all")]).await);
        assert!(why.contains("void lookups"), "{why}");
        // Two voids are allowed.
        assert!(
            expand_with(&[("a.test", "v=spf1 a:x.test a:y.test -all")])
                .await
                .is_ok()
        );
        // redirect= is followed without an all, and its prefixes carry the chain.
        let done = expand_with(&[
            ("a.test", "v=spf1 ip4:192.0.2.1 redirect=b.test"),
            ("b.test", "v=spf1 ip6:2001:db8::/48 -all"),
        ])
        .await
        .unwrap();
        let chains: Vec<String> = done
            .prefixes
            .values()
            .flatten()
            .map(|chain| render_chain(chain))
            .collect();
        assert_eq!(chains, ["spf a.test", "spf a.test → redirect=b.test"]);
        // An include of a name without a record is a permerror, the top record missing a
        // failure to retry.
        assert!(
            permerror(expand_with(&[("a.test", "v=spf1 include:gone.test -all")]).await)
                .contains("no SPF record")
        );
        assert_eq!(
            expand_with(&[("a.test", "not spf")]).await.err(),
            Some(FailureKind::SpfPermError(
                "a.test has no single v=spf1 record".into()
            ))
        );
    }
}
