//! The one escaper for text that came from outside (a KME, a QBER device, a
//! bundle, the far gateway, the daemon as qkdctl sees it) on its way to a log
//! line, an error message or a terminal.
//!
//! One rule, byte by byte: printable ASCII stays, every other byte (control,
//! DEL, each byte of a non-ASCII character) becomes `\xNN`; in quoted
//! contexts `"` and `\` are escaped too. Nothing it returns can end a log
//! value, forge a `key=value`, or drive a terminal.

use std::borrow::Cow;
use std::fmt::Write as _;

/// Appends the escape of one byte; `quotes` escapes `"` and `\` as well.
fn push_byte(out: &mut String, b: u8, quotes: bool) {
    match b {
        b'"' | b'\\' if quotes => {
            out.push('\\');
            out.push(b as char);
        }
        0x20..=0x7e => out.push(b as char),
        _ => {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
}

/// `text` made safe to show, quotes and backslashes escaped, cut with
/// `...` appended after `max` characters of input or before the output
/// would pass `4 * max` bytes (escaped non-ASCII text takes 4 to 16 bytes
/// a character), whichever comes first. Never cut inside a character.
pub fn printable(text: &str, max: usize) -> String {
    let cap = max.saturating_mul(4);
    let mut out = String::with_capacity(text.len().min(max) + 3);
    let mut one = String::with_capacity(16);
    for (i, c) in text.chars().enumerate() {
        one.clear();
        let mut buf = [0u8; 4];
        for &b in c.encode_utf8(&mut buf).as_bytes() {
            push_byte(&mut one, b, true);
        }
        if i == max || out.len() + one.len() > cap {
            out.push_str("...");
            break;
        }
        out.push_str(&one);
    }
    out
}

/// `text` cut short, as an error that quotes a remote party carries it: at
/// most `max` characters, `...` appended when cut, never inside a
/// character, and not escaped. Escaping is left to where the error is
/// shown (the log's value rule, a ctl reply's [`printable`]), so that it
/// happens there once: an error escaped here and again there would show
/// `\\x0a` for a newline (DESIGN §8).
pub fn excerpt(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_string(),
    }
}

/// Appends `text` escaped, quotes included, at most `max_bytes` of output,
/// cut between escapes and never inside one (the log's value rule).
pub fn push_bounded(out: &mut String, text: &str, max_bytes: usize) {
    let mut one = String::with_capacity(4);
    let mut used = 0;
    for b in text.bytes() {
        one.clear();
        push_byte(&mut one, b, true);
        if used + one.len() > max_bytes {
            break;
        }
        used += one.len();
        out.push_str(&one);
    }
}

/// Text as it may reach a terminal: newlines kept, quotes left alone (the
/// text is not inside quotes), every other byte the rule above escapes.
pub fn for_terminal(text: &str) -> Cow<'_, str> {
    if text
        .bytes()
        .all(|b| b == b'\n' || (0x20..=0x7e).contains(&b))
    {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for b in text.bytes() {
        if b == b'\n' {
            out.push('\n');
        } else {
            push_byte(&mut out, b, false);
        }
    }
    Cow::Owned(out)
}

/// Bytes as lowercase hex (digests, fingerprints, identifiers).
pub fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_lowercase_pairs() {
        assert_eq!(hex(&[0x00, 0xab, 0x7f]), "00ab7f");
    }

    #[test]
    fn printable_escapes_and_cuts() {
        assert_eq!(
            printable("a\"b\\c\n\u{e9}", 100),
            "a\\\"b\\\\c\\x0a\\xc3\\xa9"
        );
        assert_eq!(printable("abcdef", 3), "abc...");
        assert_eq!(printable("abc", 3), "abc");
    }

    #[test]
    fn bounded_cuts_between_escapes() {
        let mut s = String::new();
        push_bounded(&mut s, "ab\u{1}", 5);
        assert_eq!(s, "ab", "the 4-byte escape does not fit in 3");
        s.clear();
        push_bounded(&mut s, "a\"", 10);
        assert_eq!(s, "a\\\"");
    }

    #[test]
    fn terminal_keeps_lines_and_quotes() {
        assert!(matches!(for_terminal("ok \"x\"\nline"), Cow::Borrowed(_)));
        assert_eq!(for_terminal("a\x1b[2Jb\r"), "a\\x1b[2Jb\\x0d");
        assert_eq!(for_terminal("\u{e9}"), "\\xc3\\xa9");
    }

    proptest::proptest! {
        /// Whatever comes in, what goes out is printable ASCII.
        #[test]
        fn output_is_printable_ascii(v in ".{0,80}") {
            for s in [printable(&v, 40), for_terminal(&v).into_owned()] {
                proptest::prop_assert!(s.bytes().all(|b| b == b'\n' || (0x20..=0x7e).contains(&b)));
            }
        }
    }
}
