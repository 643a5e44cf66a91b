//! The allowlist fast path (/16 and /24 block bitmaps checked first) and the exact IPv4 block
//! structures behind it (blocks covered whole, per-block address masks of /25 to /32) at their
//! edges: verdicts through BPF_PROG_TEST_RUN must be exactly those of the prefix list, with the
//! fast path on and off, and the kernel maps must always be what the allowlist implies.

use std::collections::BTreeSet;

use filter_user::cidr::Cidr;
use test_kit::{
    frames::Frame,
    program::{Harness, XDP_DROP, XDP_PASS},
};

fn cidr(text: &str) -> Cidr {
    text.parse().expect("test CIDR")
}

/// Runs a SYN to port 25 from each source, with the fast path on and then off, and checks the
/// action; also checks the kernel bitmaps against the allowlist.
fn expect(harness: &mut Harness, cases: &[(&str, u32)]) {
    let mut failures = Vec::new();
    for fast_path in [true, false] {
        harness.filter.allowlist.set_fast_path(fast_path);
        harness
            .filter
            .allowlist
            .verify_fast_path()
            .expect("kernel bitmap matches the allowlist");
        for &(source, action) in cases {
            let got = harness.run(&Frame::syn(source, 25).bytes()).action;
            if got != action {
                failures.push(format!(
                    "{source} (fast path {fast_path}): action {got}, expected {action}"
                ));
            }
        }
    }
    harness.filter.allowlist.set_fast_path(true);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn prefixes_inside_one_block_leave_the_rest_of_the_block_to_the_trie() {
    // 198.51.100.128/25: the block 198.51.100.0/24 is touched, its lower half is not allowed.
    let mut harness = Harness::new(&[25], &["198.51.100.128/25", "2001:db8:1::7/128"]);
    expect(
        &mut harness,
        &[
            ("198.51.100.128", XDP_PASS),
            ("198.51.100.255", XDP_PASS),
            ("198.51.100.127", XDP_DROP),
            ("198.51.100.0", XDP_DROP),
            ("198.51.101.200", XDP_DROP),
            ("198.51.99.200", XDP_DROP),
            ("2001:db8:1::7", XDP_PASS),
            ("2001:db8:1::8", XDP_DROP),
            // Same IPv6 /24 block (2001:0d), other /32: the trie decides.
            ("2001:db9::7", XDP_DROP),
            ("2001:db7:ffff::1", XDP_DROP),
            ("::ffff:198.51.100.200", XDP_PASS),
            ("::ffff:198.51.100.1", XDP_DROP),
        ],
    );
}

#[test]
fn short_prefixes_set_every_block_they_cover() {
    // A /15 covers 512 blocks; its first and last addresses and its neighbours.
    let mut harness = Harness::new(&[25], &["198.18.0.0/15", "2001:db8::/31"]);
    expect(
        &mut harness,
        &[
            ("198.18.0.0", XDP_PASS),
            ("198.19.255.255", XDP_PASS),
            ("198.17.255.255", XDP_DROP),
            ("198.20.0.0", XDP_DROP),
            ("2001:db8::1", XDP_PASS),
            ("2001:db9:ffff::1", XDP_PASS),
            ("2001:dba::1", XDP_DROP),
            ("2001:db7::1", XDP_DROP),
        ],
    );
}

#[test]
fn the_whole_space_and_removals_keep_verdicts_exact() {
    let mut harness = Harness::new(&[25], &["0.0.0.0/0", "::/0", "203.0.113.0/26"]);
    expect(
        &mut harness,
        &[
            ("0.0.0.1", XDP_PASS),
            ("255.255.255.254", XDP_PASS),
            ("192.0.2.66", XDP_PASS),
            ("2001:db8:bad::66", XDP_PASS),
            ("ffff::1", XDP_PASS),
        ],
    );
    // Removing /0 must clear every bit except the block of the nested /26.
    harness
        .filter
        .allowlist
        .disallow(&cidr("0.0.0.0/0"))
        .unwrap();
    harness.filter.allowlist.disallow(&cidr("::/0")).unwrap();
    expect(
        &mut harness,
        &[
            ("203.0.113.1", XDP_PASS),
            ("203.0.113.64", XDP_DROP),
            ("192.0.2.66", XDP_DROP),
            ("2001:db8:bad::66", XDP_DROP),
        ],
    );
}

#[test]
fn removing_one_of_two_prefixes_in_a_block_keeps_the_other() {
    let mut harness = Harness::new(
        &[25],
        &["203.0.113.0/26", "203.0.113.192/26", "2001:db8:2::/48"],
    );
    harness
        .filter
        .allowlist
        .disallow(&cidr("203.0.113.0/26"))
        .unwrap();
    expect(
        &mut harness,
        &[
            ("203.0.113.1", XDP_DROP),
            ("203.0.113.200", XDP_PASS),
            ("2001:db8:2::1", XDP_PASS),
        ],
    );
    // Syncing to a set without the block's prefixes clears it; nested prefixes, removed in
    // either order, leave nothing behind.
    let wanted = BTreeSet::from([cidr("198.51.100.0/24"), cidr("198.51.100.7/32")]);
    harness.filter.allowlist.sync(&wanted).unwrap();
    harness
        .filter
        .allowlist
        .disallow(&cidr("198.51.100.0/24"))
        .unwrap();
    expect(
        &mut harness,
        &[
            ("198.51.100.7", XDP_PASS),
            ("198.51.100.8", XDP_DROP),
            ("203.0.113.200", XDP_DROP),
            ("2001:db8:2::1", XDP_DROP),
        ],
    );
    harness
        .filter
        .allowlist
        .disallow(&cidr("198.51.100.7/32"))
        .unwrap();
    expect(&mut harness, &[("198.51.100.7", XDP_DROP)]);
}

#[test]
fn hosts_in_a_hosts_only_block_and_their_near_misses() {
    // 198.51.100.0/24 holds hosts only: its mask has exactly their bits; the neighbours of
    // each host, the block's edges and the IPv4-mapped forms are judged by it.
    let mut harness = Harness::new(
        &[25],
        &[
            "198.51.100.0/32",
            "198.51.100.63/32",
            "198.51.100.64/32",
            "198.51.100.255/32",
            "2001:db8:2::5/128",
        ],
    );
    expect(
        &mut harness,
        &[
            ("198.51.100.0", XDP_PASS),
            ("198.51.100.1", XDP_DROP),
            ("198.51.100.62", XDP_DROP),
            ("198.51.100.63", XDP_PASS),
            ("198.51.100.64", XDP_PASS),
            ("198.51.100.65", XDP_DROP),
            ("198.51.100.127", XDP_DROP),
            ("198.51.100.128", XDP_DROP),
            ("198.51.100.254", XDP_DROP),
            ("198.51.100.255", XDP_PASS),
            ("198.51.101.0", XDP_DROP),
            ("198.51.99.255", XDP_DROP),
            ("::ffff:198.51.100.63", XDP_PASS),
            ("::ffff:198.51.100.62", XDP_DROP),
            ("2001:db8:2::5", XDP_PASS),
            ("2001:db8:2::4", XDP_DROP),
            ("2001:db8:2::6", XDP_DROP),
        ],
    );
}

#[test]
fn a_block_with_a_host_a_long_prefix_and_a_covering_prefix() {
    // A host and a /30 inside a /24 that is also allowlisted whole: removing the /24 leaves
    // the host and the /30 alone in the mask; removing them in turn empties the block.
    let mut harness = Harness::new(
        &[25],
        &[
            "203.0.113.0/24",
            "203.0.113.9/32",
            "203.0.113.200/30",
            "198.18.0.0/23",
            "198.18.1.7/32",
        ],
    );
    expect(
        &mut harness,
        &[
            ("203.0.113.1", XDP_PASS),
            ("203.0.113.9", XDP_PASS),
            ("203.0.113.255", XDP_PASS),
            ("198.18.0.0", XDP_PASS),
            ("198.18.1.255", XDP_PASS),
            ("198.18.2.0", XDP_DROP),
        ],
    );
    harness
        .filter
        .allowlist
        .disallow(&cidr("203.0.113.0/24"))
        .unwrap();
    harness
        .filter
        .allowlist
        .disallow(&cidr("198.18.0.0/23"))
        .unwrap();
    expect(
        &mut harness,
        &[
            ("203.0.113.9", XDP_PASS),
            ("203.0.113.8", XDP_DROP),
            ("203.0.113.10", XDP_DROP),
            ("203.0.113.199", XDP_DROP),
            ("203.0.113.200", XDP_PASS),
            ("203.0.113.203", XDP_PASS),
            ("203.0.113.204", XDP_DROP),
            ("203.0.113.1", XDP_DROP),
            ("198.18.1.7", XDP_PASS),
            ("198.18.1.6", XDP_DROP),
            ("198.18.0.7", XDP_DROP),
        ],
    );
    harness
        .filter
        .allowlist
        .disallow(&cidr("203.0.113.200/30"))
        .unwrap();
    expect(
        &mut harness,
        &[("203.0.113.9", XDP_PASS), ("203.0.113.201", XDP_DROP)],
    );
    // The last host of a block: its mask entry goes, and the block with it.
    harness
        .filter
        .allowlist
        .disallow(&cidr("203.0.113.9/32"))
        .unwrap();
    harness
        .filter
        .allowlist
        .disallow(&cidr("198.18.1.7/32"))
        .unwrap();
    expect(
        &mut harness,
        &[
            ("203.0.113.9", XDP_DROP),
            ("198.18.1.7", XDP_DROP),
            ("203.0.113.1", XDP_DROP),
        ],
    );
}

#[test]
fn ipv6_near_misses_by_slash48_and_blocks_with_shorter_prefixes() {
    // 2001:db8::/24's block (2001:0d) holds a /48, a /64 and a host: the /48 filter answers for
    // the rest of the block; 2001:db9::/40 is shorter than /48, so its block goes to the trie.
    let mut harness = Harness::new(
        &[25],
        &[
            "2001:db8:1::/48",
            "2001:db8:3:10::/64",
            "2001:db8:2::25/128",
            "2a00:1450::/40",
            "2a00:1450:ff00::7/128",
        ],
    );
    let cases = [
        ("2001:db8:1::1", XDP_PASS),
        ("2001:db8:1:ffff:ffff:ffff:ffff:ffff", XDP_PASS),
        ("2001:db8:0:ffff:ffff:ffff:ffff:ffff", XDP_DROP),
        ("2001:db8:bad::66", XDP_DROP),
        ("2001:db8:3:10::1", XDP_PASS),
        ("2001:db8:3:11::1", XDP_DROP),
        ("2001:db8:2::25", XDP_PASS),
        ("2001:db8:2::24", XDP_DROP),
        ("2a00:1450:0:1::1", XDP_PASS),
        ("2a00:1450:ff:ffff::1", XDP_PASS),
        ("2a00:1450:100::1", XDP_DROP),
        ("2a00:1450:ff00::7", XDP_PASS),
        ("2a00:1450:ff00::8", XDP_DROP),
    ];
    expect(&mut harness, &cases);
    // The last prefixes behind a /48 bit and behind the short block go: bits cleared, the
    // others keep their verdicts.
    for gone in ["2001:db8:2::25/128", "2a00:1450::/40"] {
        harness.filter.allowlist.disallow(&cidr(gone)).unwrap();
    }
    expect(
        &mut harness,
        &[
            ("2001:db8:1::1", XDP_PASS),
            ("2001:db8:2::25", XDP_DROP),
            ("2001:db8:3:10::1", XDP_PASS),
            ("2a00:1450:0:1::1", XDP_DROP),
            ("2a00:1450:ff00::7", XDP_PASS),
        ],
    );
}

#[test]
fn a_prefix_on_a_word_boundary_of_the_bitmap() {
    // Block 0xc63fff (198.63.255.0/24) is the last bit of a bitmap word and 0xc64000
    // (198.64.0.0/24) the first bit of the next; the /17 ends exactly at that boundary.
    let mut harness = Harness::new(&[25], &["198.63.128.0/17", "198.64.0.0/24"]);
    expect(
        &mut harness,
        &[
            ("198.63.255.255", XDP_PASS),
            ("198.63.127.255", XDP_DROP),
            ("198.64.0.1", XDP_PASS),
            ("198.64.1.1", XDP_DROP),
        ],
    );
    harness
        .filter
        .allowlist
        .disallow(&cidr("198.63.128.0/17"))
        .unwrap();
    expect(
        &mut harness,
        &[("198.63.255.255", XDP_DROP), ("198.64.0.1", XDP_PASS)],
    );
}

#[test]
fn a_reload_over_pinned_maps_rebuilds_the_bitmaps_from_the_tries() {
    use filter_common::map_names;
    use filter_user::{filter::Filter, links::PinDir};
    test_kit::root::require_root();
    let root = std::path::PathBuf::from(format!(
        "/sys/fs/bpf/mxguard-test-fastpath-{}",
        std::process::id()
    ));
    let pins = PinDir::new(&root);
    pins.ensure_bpffs().expect("bpffs");
    struct Cleanup(std::path::PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _cleanup = Cleanup(root.clone());
    {
        let mut first = Filter::load_pinned(&pins).expect("first load");
        first.allowlist.allow(&cidr("198.51.100.0/24")).unwrap();
        first.allowlist.allow(&cidr("203.0.113.9/32")).unwrap();
        first.allowlist.allow(&cidr("2001:db8:1::/48")).unwrap();
    }
    // A pin directory made before the fast path existed has tries but no bitmaps nor block
    // masks: unpin them, so the next load reuses the tries and creates empty ones.
    for name in filter_common::map_names::ALL.iter().filter(|name| {
        name.starts_with("ALLOW_") && ![map_names::ALLOW_V4, map_names::ALLOW_V6].contains(name)
    }) {
        std::fs::remove_file(pins.map_path(name)).expect("unpinning a derived map");
    }
    let second = Filter::load_pinned(&pins).expect("second load");
    second
        .allowlist
        .verify_fast_path()
        .expect("bitmaps rebuilt from the pinned tries");
    let mut harness = Harness { filter: second };
    // The pinned PORTS map carries over too, but protect port 25 explicitly.
    harness
        .filter
        .maps
        .ports
        .set(&BTreeSet::from([25]), &BTreeSet::new())
        .unwrap();
    for (source, action) in [
        ("198.51.100.7", XDP_PASS),
        ("198.51.101.7", XDP_DROP),
        ("203.0.113.9", XDP_PASS),
        ("203.0.113.8", XDP_DROP),
        ("2001:db8:1::7", XDP_PASS),
    ] {
        assert_eq!(
            harness.run(&Frame::syn(source, 25).bytes()).action,
            action,
            "{source}"
        );
    }
    drop(harness);
    // Derived maps that say more than the tries (here: tries unpinned, masks and bitmaps
    // left) are cut back to what the tries hold at the next load.
    for name in [map_names::ALLOW_V4, map_names::ALLOW_V6] {
        std::fs::remove_file(pins.map_path(name)).expect("unpinning a trie");
    }
    let mut third = Filter::load_pinned(&pins).expect("third load");
    third
        .allowlist
        .verify_fast_path()
        .expect("stale masks and bits removed");
    third.allowlist.allow(&cidr("203.0.113.10/32")).unwrap();
    let harness = Harness { filter: third };
    for (source, action) in [
        ("198.51.100.7", XDP_DROP),
        ("203.0.113.9", XDP_DROP),
        ("203.0.113.10", XDP_PASS),
        ("2001:db8:1::7", XDP_DROP),
    ] {
        assert_eq!(
            harness.run(&Frame::syn(source, 25).bytes()).action,
            action,
            "{source}"
        );
    }
}
