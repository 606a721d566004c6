//! The nftables backend's scripts and statement checks, without a kernel
//! (tests/fw_nft.rs runs them against real nftables).

use super::*;

fn dr() -> LinkTarget {
    LinkTarget {
        name: "dr".into(),
        wg_if: "wg0".into(),
        wg_port: 51820,
        rdomain: 0,
        addrs4: vec!["198.51.100.2".parse().unwrap()],
        addrs6: vec![],
    }
}

#[test]
fn macros_expand() {
    let got = render_statements(
        &dr(),
        "# comment\n\n ip saddr $peer4 udp sport $wg_port iifname $wg_if counter accept\r\n\
         ip6 daddr $peer6 log prefix \"qkd $link \" drop\n",
    )
    .unwrap();
    assert_eq!(
        got,
        [
            "ip saddr @peer4_dr udp sport 51820 iifname \"wg0\" counter accept",
            "ip6 daddr @peer6_dr log prefix \"qkd dr \" drop",
        ]
    );
}

#[test]
fn forbidden_constructs() {
    for (bad, why) in [
        ("accept; add rule inet qkdpfd link_x accept", "';'"),
        ("jump link_other", "leave"),
        ("udp dport 1 goto x", "leave"),
        ("meta l4proto vmap { udp : jump x }", "leave"),
        ("ip saddr $unknown accept", "unknown macro $unknown"),
        ("ip saddr $ accept", "without a macro"),
        ("ip saddr @peer4_other accept", "'@'"),
        ("table inet x { }", "may not start"),
        ("flush ruleset", "may not start"),
        ("include \"/etc/x\"", "may not start"),
        ("accept \\", "backslash"),
        ("accept\u{7}", "character"),
    ] {
        let e = render_statements(&dr(), &format!("accept\n{bad}\n")).unwrap_err();
        assert!(e.starts_with("line 2: "), "{bad}: {e}");
        assert!(e.contains(why), "{bad}: {e}");
    }
}

#[test]
fn skeleton_jumps_then_drops() {
    let s = skeleton("qkdpfd", &[dr()]);
    assert!(s.contains(
        "add rule inet qkdpfd input ip saddr @peer4_dr udp sport 51820 meta nfproto @alive jump link_dr\n\
         add rule inet qkdpfd input ip saddr @peer4_dr udp sport 51820 drop\n"
    ));
    assert!(s.contains("add element inet qkdpfd peer4_dr { 198.51.100.2 }\n"));
    assert!(!s.contains("add element inet qkdpfd peer6_dr"));
    assert!(!s.contains("flush chain inet qkdpfd link_dr"));
    assert_eq!(s.matches(" drop\n").count(), 8);
}
