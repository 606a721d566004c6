//! A link's enforcement as nftables holds it, read back as text: the
//! tests' own judgement, independent of the daemon's read-back code.

/// Whether `link`'s traffic is dropped by its own chains: every key the
/// dispatch maps send to `link_<link>` is in the `locked_` sets and
/// `lock_<link>` ends with qkdpfd's drop (or starts with it); or no key is
/// there and `link_<link>` starts with qkdpfd's drop. The site lock counts
/// as every key in the `locked_` sets; a QBER section's source lock as
/// every key in its `src<i>_` sets.
/// `nft` runs `nft <args>` where the daemon's table is and returns stdout.
pub fn link_locked(nft: impl Fn(&[&str]) -> String, link: &str) -> bool {
    let list = |what: &str, name: &str| nft(&["list", what, "inet", "qkdpfd", name]);
    let drop = "drop comment \"qkdpfd drop\"";
    let target = format!(": jump link_{link}");
    let mut keys = Vec::new();
    let mut locked = Vec::new();
    for kind in ["4", "6", "if"] {
        keys.extend(
            elements(&list("map", &format!("open_{kind}")))
                .into_iter()
                .filter_map(|e| e.strip_suffix(&target).map(|k| k.trim().to_string())),
        );
        locked.extend(elements(&list("set", &format!("locked_{kind}"))));
    }
    // The site lock (set `site` holding both families) sends every key to
    // its lockdown chain, as if each were in the locked_ sets.
    let site = elements(&list("set", "site"));
    let site = site.iter().any(|e| e == "ipv4") && site.iter().any(|e| e == "ipv6");
    // A source lock (set `src<i>` holding both families) likewise for the
    // keys in its `src<i>_` sets.
    // The sections are those the base chains name (listing a missing set
    // is an error some callers do not allow).
    let input = list("chain", "input");
    for i in (0..).take_while(|i| input.contains(&format!("@src{i} "))) {
        let src = elements(&list("set", &format!("src{i}")));
        if src.iter().any(|e| e == "ipv4") && src.iter().any(|e| e == "ipv6") {
            for kind in ["4", "6", "if"] {
                locked.extend(elements(&list("set", &format!("src{i}_{kind}"))));
            }
        }
    }
    let held = match site {
        true => keys.len(),
        false => keys.iter().filter(|k| locked.contains(k)).count(),
    };
    let link_rules = rules(&list("chain", &format!("link_{link}")));
    let lock_rules = rules(&list("chain", &format!("lock_{link}")));
    let link_drops = link_rules.first().is_some_and(|r| r == drop);
    let lock_drops = lock_rules.first().is_some_and(|r| r == drop)
        || lock_rules.last().is_some_and(|r| r == drop);
    // A link new to the table: its lockdown chain empty, its traffic
    // dropped by the base chains' drop of locked keys right after the jump.
    let base_drops = || {
        ["input", "output", "forward"].iter().all(|hook| {
            let l = list("chain", hook);
            l.contains("@locked_if drop") && (*hook == "forward" || l.contains("@locked_4 drop"))
        })
    };
    let lock_empty = lock_rules.is_empty() && base_drops();
    match held {
        0 => link_drops,
        n if n == keys.len() => lock_drops || lock_empty,
        _ => link_drops && (lock_drops || lock_empty),
    }
}

/// The elements of one listed set or map, as nft prints them.
pub fn elements(listing: &str) -> Vec<String> {
    let flat = listing.replace('\n', " ");
    let Some(start) = flat.find("elements = {") else {
        return Vec::new();
    };
    let body = &flat[start + "elements = {".len()..];
    let body = &body[..body.find('}').unwrap_or(body.len())];
    body.split(',')
        .map(|e| e.trim().to_string())
        .filter(|e| !e.is_empty())
        .collect()
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
