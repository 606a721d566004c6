//! The module structure holds its shape: no import cycle between top-level
//! modules (`crate::engine` never reaches back into something that reaches
//! the engine) and none between files. A cycle is where two pieces of code
//! can no longer be understood or moved apart; this test fails the day one
//! comes back, naming the circle.
//!
//! Read from the source text: every `crate::`, `super::` and `self::` path in
//! a `use` (groups expanded) or inline, outside comments and outside a
//! trailing `#[cfg(test)] mod tests`. A path resolves to the deepest module
//! file it names. A file using its own ancestor module (`super::Parent`) is
//! part of it, not a dependency, so that edge is left out; so are edges into
//! `lib.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module path ("engine::kme::answer") of every file under src/ but bin/.
fn modules(src: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                if p.file_name().unwrap() != "bin" {
                    stack.push(p);
                }
                continue;
            }
            if p.extension().is_none_or(|x| x != "rs") {
                continue;
            }
            let rel = p.strip_prefix(src).unwrap().with_extension("");
            let mut parts: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if parts.last().is_some_and(|l| l == "mod") {
                parts.pop();
            }
            if parts == ["lib"] {
                continue;
            }
            let text = std::fs::read_to_string(&p).unwrap();
            out.insert(parts.join("::"), text);
        }
    }
    out
}

/// The code of a file without comments and without its trailing test module.
fn code(text: &str) -> String {
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(l) = lines.next() {
        let t = l.trim_start();
        if t == "#[cfg(test)]"
            && lines
                .peek()
                .is_some_and(|n| n.trim_start().starts_with("mod "))
        {
            let next = lines.peek().unwrap().trim_end();
            if next.ends_with('{') {
                break; // inline tests run to the end of the file
            }
            continue; // `mod tests;`: a file of its own
        }
        if t.starts_with("//") {
            continue;
        }
        let l = match l.find(" // ") {
            Some(i) => &l[..i],
            None => l,
        };
        out.push_str(l);
        out.push('\n');
    }
    out
}

/// Expands `a::{b, c::{d, e}}` into `a::b`, `a::c::d`, `a::c::e`.
fn expand(tree: &str, prefix: &str, out: &mut Vec<String>) {
    let tree = tree.trim();
    let join = |p: &str, s: &str| {
        if p.is_empty() {
            s.to_string()
        } else {
            format!("{p}::{s}")
        }
    };
    match tree.find('{') {
        None => out.push(join(prefix, tree.split(" as ").next().unwrap().trim())),
        Some(open) => {
            let head = tree[..open].trim_end_matches("::").trim();
            let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
            let base = join(prefix, head);
            let mut depth = 0;
            let mut start = 0;
            for (i, c) in inner.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        expand(&inner[start..i], &base, out);
                        start = i + 1;
                    }
                    _ => {}
                }
            }
            if !inner[start..].trim().is_empty() {
                expand(&inner[start..], &base, out);
            }
        }
    }
}

/// Every crate-relative path the code names, as written.
fn paths(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    // `use` statements, groups expanded.
    let mut rest = code;
    while let Some(i) = rest.find("use ") {
        let before = rest[..i].chars().last();
        rest = &rest[i + 4..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let Some(end) = rest.find(';') else { break };
        let stmt = &rest[..end];
        if stmt.starts_with("crate::") || stmt.starts_with("super::") || stmt.starts_with("self::")
        {
            expand(stmt, "", &mut out);
        }
        rest = &rest[end..];
    }
    // Inline paths.
    let b = code.as_bytes();
    for root in ["crate::", "super::", "self::"] {
        let mut from = 0;
        while let Some(i) = code[from..].find(root) {
            let at = from + i;
            from = at + root.len();
            if at > 0
                && (b[at - 1].is_ascii_alphanumeric() || b[at - 1] == b'_' || b[at - 1] == b':')
            {
                continue;
            }
            let end = code[at..]
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .map_or(code.len(), |e| at + e);
            out.push(code[at..end].trim_end_matches(':').to_string());
        }
    }
    out
}

/// The module file a path from `module` lands in, if any.
fn resolve(path: &str, module: &str, known: &BTreeMap<String, String>) -> Option<String> {
    let mut segs: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
    let mut base: Vec<&str> = module.split("::").collect();
    match segs.first() {
        Some(&"crate") => {
            base.clear();
            segs.remove(0);
        }
        Some(&"self") => {
            segs.remove(0);
        }
        Some(&"super") => {
            while segs.first() == Some(&"super") {
                segs.remove(0);
                base.pop();
            }
        }
        _ => return None,
    }
    let mut full: Vec<&str> = base;
    full.extend(segs);
    while !full.is_empty() {
        let name = full.join("::");
        if known.contains_key(&name) {
            return Some(name);
        }
        full.pop();
    }
    None
}

/// Edges between files, without a file's uses of its own ancestors.
fn file_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let known = modules(src);
    let mut graph = BTreeMap::new();
    for (module, text) in &known {
        let code = code(text);
        let mut deps = BTreeSet::new();
        for p in paths(&code) {
            let Some(to) = resolve(&p, module, &known) else {
                continue;
            };
            let ancestor = module.starts_with(&format!("{to}::"));
            if to != *module && !ancestor {
                deps.insert(to);
            }
        }
        graph.insert(module.clone(), deps);
    }
    graph
}

/// One circle per strongly connected part with more than one member.
fn circles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    // Tarjan, small enough to write here rather than take a crate for.
    struct T<'a> {
        g: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(t: &mut T<'a>, v: &'a str) {
        let i = t.index.len();
        t.index.insert(v, i);
        t.low.insert(v, i);
        t.stack.push(v);
        t.on.insert(v);
        for w in t.g.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !t.g.contains_key(w) {
                continue;
            }
            if !t.index.contains_key(w) {
                visit(t, w);
                let lw = t.low[w];
                let lv = t.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if t.on.contains(w) {
                let iw = t.index[w];
                let lv = t.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if t.low[v] == t.index[v] {
            let mut part = Vec::new();
            while let Some(w) = t.stack.pop() {
                t.on.remove(w);
                part.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if part.len() > 1 {
                part.sort();
                t.out.push(part);
            }
        }
    }
    let mut t = T {
        g: graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in graph.keys() {
        if !t.index.contains_key(v.as_str()) {
            visit(&mut t, v);
        }
    }
    t.out
}

fn explain(graph: &BTreeMap<String, BTreeSet<String>>, parts: &[Vec<String>]) -> String {
    let mut s = String::new();
    for part in parts {
        s.push_str(&format!("circle: {}\n", part.join(", ")));
        for a in part {
            for b in &graph[a] {
                if part.contains(b) {
                    s.push_str(&format!("  {a} -> {b}\n"));
                }
            }
        }
    }
    s
}

fn src() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn no_cycle_between_files() {
    let g = file_graph(&src());
    assert!(g.len() > 50, "read {} modules: is src/ there?", g.len());
    let parts = circles(&g);
    assert!(
        parts.is_empty(),
        "file import cycles:\n{}",
        explain(&g, &parts)
    );
}

#[test]
fn no_cycle_between_top_level_modules() {
    let files = file_graph(&src());
    let top = |m: &str| m.split("::").next().unwrap().to_string();
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (from, deps) in &files {
        let e = g.entry(top(from)).or_default();
        for d in deps {
            if top(d) != top(from) {
                e.insert(top(d));
            }
        }
    }
    let parts = circles(&g);
    assert!(
        parts.is_empty(),
        "module import cycles:\n{}",
        explain(&g, &parts)
    );
}

#[test]
fn qkdctl_links_nothing_of_the_parent() {
    let files = file_graph(&src());
    // Everything reachable from the control tool.
    let mut seen = BTreeSet::new();
    let mut todo = vec!["ctl".to_string()];
    while let Some(m) = todo.pop() {
        if seen.insert(m.clone()) {
            todo.extend(files.get(&m).into_iter().flatten().cloned());
            // A module's files are reached through it.
            let child = format!("{m}::");
            todo.extend(files.keys().filter(|k| k.starts_with(&child)).cloned());
        }
    }
    let bad: Vec<_> = seen
        .iter()
        .filter(|m| *m == "parent" || m.starts_with("parent::") || m.starts_with("engine"))
        .collect();
    assert!(bad.is_empty(), "qkdctl reaches {bad:?}");
}

/// The checker finds what it is meant to: a circle planted in a copy.
#[test]
fn a_planted_cycle_is_found() {
    let dir = std::env::temp_dir().join(format!("qkdpfd-structure-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("a")).unwrap();
    std::fs::write(dir.join("lib.rs"), "pub mod a;\npub mod b;\n").unwrap();
    std::fs::write(
        dir.join("a/mod.rs"),
        "mod x;\nmod y;\nuse crate::b::{self, B};\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("a/x.rs"),
        "use super::{y::Y, Top};\npub struct X;\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("a/y.rs"),
        "pub struct Y;\nfn f() { let _ = super::x::X; }\n#[cfg(test)]\nmod tests {\n use crate::b::B;\n}\n",
    )
    .unwrap();
    std::fs::write(dir.join("b.rs"), "// use crate::a::Q;\npub struct B;\n").unwrap();
    let g = file_graph(&dir);
    let parts = circles(&g);
    assert_eq!(parts, vec![vec!["a::x".to_string(), "a::y".to_string()]]);
    assert!(
        !g["a::x"].contains("a"),
        "ancestor edge kept: {:?}",
        g["a::x"]
    );
    assert!(
        g["a::y"].len() == 1,
        "the test module's import was read: {:?}",
        g["a::y"]
    );
    assert!(g["b"].is_empty(), "a comment was read as code");
    std::fs::write(dir.join("b.rs"), "use crate::a::Q;\npub struct B;\n").unwrap();
    let g = file_graph(&dir);
    let parts = circles(&g);
    assert!(
        parts.contains(&vec!["a".to_string(), "b".to_string()]),
        "a <-> b: {parts:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
