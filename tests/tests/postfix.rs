//! The shared Postfix fixture itself (test-kit's `postfix`): a private instance on a distinct
//! loopback address delivers a real mail to its maildir; one inside a namespace holds mail and
//! follows a reload; dropping an instance leaves no process and no directory behind.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::Duration,
};

use test_kit::{
    lab::MailLab,
    postfix::{PostfixConfig, Swaks, Transport, free_addr, instance_pids},
    root::require_root,
};

#[test]
fn delivers_a_mail_on_loopback_from_a_distinct_source() {
    require_root();
    let listen = free_addr(IpAddr::V4(Ipv4Addr::new(127, 0, 25, 1)));
    let postfix = PostfixConfig::new(listen)
        .transport(Transport::Maildir)
        .start()
        .expect("starting Postfix");
    let dir = postfix.config_dir();

    let sent = Swaks::new(postfix.addr())
        .local_interface(IpAddr::V4(Ipv4Addr::new(127, 0, 25, 7)))
        .header("X-Fixture", "delivered")
        .run();
    assert_eq!(sent.code, 0, "{}", sent.transcript);
    let queue_id = sent.queue_id().expect("a queue id").to_owned();
    assert!(
        sent.data_reply().is_some_and(|r| r.starts_with("250")),
        "{}",
        sent.transcript
    );

    let delivered = postfix
        .wait_delivered(1, Duration::from_secs(10))
        .expect("delivery");
    assert!(
        delivered[0].contains("X-Fixture: delivered"),
        "{}",
        delivered[0]
    );
    postfix
        .wait_log("the delivery", Duration::from_secs(5), |log| {
            log.contains(&format!("{queue_id}: to=<")) && log.contains("delivered to maildir")
        })
        .expect("Postfix logged the delivery");
    assert!(
        postfix.log().contains("client=unknown[127.0.25.7]"),
        "{}",
        postfix.log_tail()
    );

    postfix.stop().expect("postfix stop");
    assert!(!dir.exists(), "{} left behind", dir.display());
}

#[test]
fn holds_mail_in_a_namespace_and_follows_a_reload() {
    require_root();
    let lab = MailLab::new();
    let listen = SocketAddr::new(MailLab::SERVER.v4.into(), 25);
    let postfix = PostfixConfig::new(listen)
        .netns(&lab.server)
        .transport(Transport::Hold)
        .start()
        .expect("starting Postfix in the server's namespace");
    let dir = postfix.config_dir();

    let held = Swaks::new(listen).netns(&lab.relay).run();
    assert_eq!(held.code, 0, "{}", held.transcript);
    let queue_id = held.queue_id().expect("a queue id").to_owned();
    let hold = postfix.hold_queue().expect("postqueue -j");
    assert_eq!(hold.len(), 1, "{hold:?}");
    assert_eq!(hold[0].queue_id, queue_id);
    assert_eq!(hold[0].recipients, [test_kit::postfix::Postfix::RECIPIENT]);
    assert!(postfix.delivered().is_empty());
    assert!(
        postfix
            .log()
            .contains(&format!("client=unknown[{}]", MailLab::RELAY.v4)),
        "{}",
        postfix.log_tail()
    );

    postfix
        .set_params(&[("smtpd_end_of_data_restrictions", "")])
        .expect("reload");
    let sent = Swaks::new(listen).netns(&lab.relay).run();
    assert_eq!(sent.code, 0, "{}", sent.transcript);
    postfix
        .wait_delivered(1, Duration::from_secs(10))
        .expect("delivery after the reload");
    assert_eq!(postfix.hold_queue().expect("postqueue -j").len(), 1);

    // Drop (as on a failing test): no Postfix process and no directory stay.
    drop(postfix);
    assert!(!dir.exists(), "{} left behind", dir.display());
    let left = instance_pids(&dir);
    assert!(left.is_empty(), "Postfix processes left: {left:?}");
}
