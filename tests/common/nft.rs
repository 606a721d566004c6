//! A link's enforcement as nftables holds it, read back as text: the
//! tests' own judgement, independent of the daemon's read-back code.

/// Whether `link`'s traffic is dropped by its own chains: `link_<link>`
/// starts with qkdpfd's drop, or diverts into `lock_<link>` — always (an
/// unconditional goto) or through the switch while `locked_<link>` holds
/// both families — and `lock_<link>` ends with qkdpfd's drop.
/// `nft` runs `nft <args>` where the daemon's table is and returns stdout.
pub fn link_locked(nft: impl Fn(&[&str]) -> String, link: &str) -> bool {
    let list = |what: &str, name: String| nft(&["list", what, "inet", "qkdpfd", &name]);
    let chain = list("chain", format!("link_{link}"));
    let Some(first) = rules(&chain).into_iter().next() else {
        return false;
    };
    if first == "drop comment \"qkdpfd drop\"" {
        return true;
    }
    let lock_ends_in_drop = || {
        rules(&list("chain", format!("lock_{link}")))
            .last()
            .is_some_and(|r| r == "drop comment \"qkdpfd drop\"")
    };
    if first == format!("goto lock_{link}") {
        return lock_ends_in_drop();
    }
    let switch = format!("meta nfproto @locked_{link} goto lock_{link} comment \"qkdpfd switch\"");
    first == switch
        && list("set", format!("locked_{link}")).contains("elements = { ipv4, ipv6 }")
        && lock_ends_in_drop()
}

/// The rules of one listed chain, one per line.
pub fn rules(listing: &str) -> Vec<String> {
    listing
        .lines()
        .map(str::trim)
        .filter(|l| {
            !(l.is_empty()
                || *l == "}"
                || l.starts_with("table ")
                || l.starts_with("chain ")
                || l.starts_with("type "))
        })
        .map(String::from)
        .collect()
}
