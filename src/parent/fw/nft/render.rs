//! A `.nft` bundle file to statements for a link's chain: each line
//! checked (nothing that could leave the chain: `jump`, `goto`, `;`, a
//! command word, a raw `@set`) and the link's macros substituted. Pure
//! text work: the parent's backend and `qkdctl policy verify` both use it.

use crate::ruleset::LinkTarget;

/// Words that start an nft command; a statement line must not begin with one.
const COMMAND_WORDS: &[&str] = &[
    "table", "chain", "flush", "delete", "add", "insert", "include", "define", "replace", "create",
    "reset", "list", "rename", "destroy", "export", "import", "monitor", "describe", "set", "map",
    "element", "rule",
];

/// Words refused anywhere in a statement: they leave the link's chain.
const ESCAPE_WORDS: &[&str] = &["jump", "goto"];

/// Checks a `.nft` bundle file and substitutes the link's macros; one
/// statement per returned line. Errors name the line.
pub fn render_statements(link: &LinkTarget, ruleset: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for (i, raw) in ruleset.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let stmt = check_statement(link, line).map_err(|e| format!("line {}: {e}", i + 1))?;
        out.push(stmt);
    }
    Ok(out)
}

fn check_statement(link: &LinkTarget, line: &str) -> Result<String, String> {
    if let Some(c) = line
        .chars()
        .find(|c| !(c.is_ascii_graphic() || *c == ' ' || *c == '\t'))
    {
        return Err(format!("character {c:?} not allowed"));
    }
    for (c, why) in [
        (';', "';' would start another command"),
        ('\\', "backslash not allowed"),
        ('@', "refer to sets with $peer4 / $peer6, not '@'"),
    ] {
        if line.contains(c) {
            return Err(why.to_string());
        }
    }
    let first = line.split_whitespace().next().unwrap_or("");
    if COMMAND_WORDS.contains(&first.to_ascii_lowercase().as_str()) {
        return Err(format!("a statement may not start with {first:?}"));
    }
    let words = line.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'));
    if let Some(w) = words
        .into_iter()
        .find(|w| ESCAPE_WORDS.contains(&w.to_ascii_lowercase().as_str()))
    {
        return Err(format!("{w:?} would leave the link's chain"));
    }
    substitute(link, line)
}

/// Expands `$name` macros; an unknown one is an error, not left to nft.
fn substitute(link: &LinkTarget, line: &str) -> Result<String, String> {
    let mut out = String::with_capacity(line.len() + 16);
    let mut rest = line;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        let len = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(after.len());
        let name = &after[..len];
        let value = match name {
            "link" => link.name.clone(),
            "wg_if" => format!("\"{}\"", link.wg_if),
            "wg_port" => link.wg_port.to_string(),
            "peer4" => format!("@peer4_{}", link.name),
            "peer6" => format!("@peer6_{}", link.name),
            "" => return Err("'$' without a macro name".to_string()),
            _ => {
                return Err(format!(
                    "unknown macro ${name} (known: $link $wg_if $wg_port $peer4 $peer6)"
                ));
            }
        };
        out.push_str(&value);
        rest = &after[len..];
    }
    out.push_str(rest);
    Ok(out)
}
