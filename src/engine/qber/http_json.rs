//! The `http-json` QBER driver's parser: any JSON answer, the value found
//! with the configured RFC 6901 JSON pointer (covers HIP-71-style agents
//! and vendor REST APIs). Runs in the engine; pure.
//!
//! The value must be a JSON number or a string holding a plain decimal
//! number; the driver multiplies it by `scale` afterwards. Its sequence is
//! read from a sibling of the value, the first present of `measured_at`
//! (unix ms, or an RFC 3339 string), `time_stamp` (RFC 3339 string, or unix
//! ms) and `seq` (an unsigned integer); a sibling that is present but
//! malformed is an error. Without any (the value is not in an object, or
//! the object has none of them) the driver counts a sample as new only if
//! its value changed. A configurable second pointer for the sequence would
//! be better; it needs a config key (not added yet).

use serde_json::Value;

/// Sibling keys read as the measurement's sequence, in order.
const SEQ_KEYS: [&str; 3] = ["measured_at", "time_stamp", "seq"];

/// The value at `pointer` and the sequence of its sibling, if any.
pub fn parse(body: &[u8], pointer: &str) -> Result<(f64, Option<u64>), String> {
    let v: Value = serde_json::from_slice(body).map_err(|_| "answer is not JSON".to_string())?;
    let value = resolve(&v, pointer)?;
    let q = number(value)
        .ok_or_else(|| format!("{}: not a number but {}", shown(pointer), kind(value)))?;
    let parent = match pointer.rfind('/') {
        Some(i) => resolve(&v, &pointer[..i])?,
        None => return Ok((q, None)),
    };
    let Some(obj) = parent.as_object() else {
        return Ok((q, None));
    };
    for key in SEQ_KEYS {
        if let Some(s) = obj.get(key) {
            return Ok((q, Some(sequence(key, s)?)));
        }
    }
    Ok((q, None))
}

fn sequence(key: &str, v: &Value) -> Result<u64, String> {
    match (key, v) {
        (_, Value::Number(n)) => n
            .as_u64()
            .ok_or_else(|| format!("{key} must be an unsigned integer")),
        ("measured_at" | "time_stamp", Value::String(s)) => crate::utc::parse_rfc3339_ms(s),
        _ => Err(format!("{key} must be an unsigned integer or a time stamp")),
    }
}

/// A finite JSON number, or a string of a plain decimal number (`"2.93"`,
/// as RFC 7951 encodes decimal64).
pub fn number(v: &Value) -> Option<f64> {
    let x = match v {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => {
            let plain = !s.is_empty()
                && s.len() <= 64
                && s.bytes()
                    .all(|b| b.is_ascii_digit() || b"+-.eE".contains(&b));
            if !plain {
                return None;
            }
            s.parse::<f64>().ok()?
        }
        _ => return None,
    };
    x.is_finite().then_some(x)
}

/// RFC 6901: `""` is the whole document; else `/`-separated tokens, `~1`
/// for `/` and `~0` for `~`; array elements by decimal index without
/// leading zeros (`-`, past the end, is refused: nothing is there).
pub fn resolve<'a>(doc: &'a Value, pointer: &str) -> Result<&'a Value, String> {
    if pointer.is_empty() {
        return Ok(doc);
    }
    let Some(rest) = pointer.strip_prefix('/') else {
        return Err(format!("JSON pointer {} must start with /", shown(pointer)));
    };
    let mut at = doc;
    let mut walked = String::new();
    for raw in rest.split('/') {
        let token = unescape(raw).ok_or_else(|| {
            format!(
                "JSON pointer {}: bad ~ escape in {}",
                shown(pointer),
                shown(raw)
            )
        })?;
        walked.push('/');
        walked.push_str(raw);
        at = match at {
            Value::Object(m) => m.get(&token),
            Value::Array(a) => index(&token).and_then(|i| a.get(i)),
            other => {
                return Err(format!(
                    "{}: {} is {}, not an object or array",
                    shown(pointer),
                    shown(&walked[..walked.len() - raw.len() - 1]),
                    kind(other)
                ));
            }
        }
        .ok_or_else(|| format!("{}: nothing at {}", shown(pointer), shown(&walked)))?;
    }
    Ok(at)
}

fn unescape(raw: &str) -> Option<String> {
    let mut out = String::new();
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        match c {
            '~' => match chars.next() {
                Some('0') => out.push('~'),
                Some('1') => out.push('/'),
                _ => return None,
            },
            c => out.push(c),
        }
    }
    Some(out)
}

fn index(token: &str) -> Option<usize> {
    let digits = !token.is_empty() && token.bytes().all(|b| b.is_ascii_digit());
    if !digits || (token.len() > 1 && token.starts_with('0')) {
        return None;
    }
    token.parse().ok()
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn shown(p: &str) -> String {
    format!("\"{}\"", crate::text::printable(p, 80))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pointers_follow_rfc_6901() {
        // The examples of RFC 6901 §5.
        let doc = json!({
            "foo": ["bar", "baz"], "": 0, "a/b": 1, "c%d": 2, "e^f": 3,
            "g|h": 4, "i\\j": 5, "k\"l": 6, " ": 7, "m~n": 8
        });
        assert_eq!(resolve(&doc, ""), Ok(&doc));
        assert_eq!(resolve(&doc, "/foo"), Ok(&json!(["bar", "baz"])));
        assert_eq!(resolve(&doc, "/foo/0"), Ok(&json!("bar")));
        for (p, want) in [
            ("/", 0),
            ("/a~1b", 1),
            ("/c%d", 2),
            ("/e^f", 3),
            ("/g|h", 4),
            ("/i\\j", 5),
            ("/k\"l", 6),
            ("/ ", 7),
            ("/m~0n", 8),
        ] {
            assert_eq!(resolve(&doc, p), Ok(&json!(want)), "{p}");
        }
        // ~01 is "~1", not "/".
        let d = json!({"~1": 9});
        assert_eq!(resolve(&d, "/~01"), Ok(&json!(9)));
    }

    #[test]
    fn pointer_errors_say_where() {
        let doc = json!({"links": [{"qber": 2.9}], "n": 1});
        let cases = [
            ("links/0", "must start with /"),
            ("/links/1/qber", "nothing at \"/links/1\""),
            ("/links/01/qber", "nothing at \"/links/01\""),
            ("/links/-", "nothing at \"/links/-\""),
            ("/links/0/qber/x", "\"/links/0/qber\" is a number"),
            ("/n/x", "\"/n\" is a number"),
            ("/lin~2ks", "bad ~ escape"),
            ("/missing", "nothing at \"/missing\""),
        ];
        for (p, want) in cases {
            let e = resolve(&doc, p).unwrap_err();
            assert!(e.contains(want), "{p}: {e}");
        }
    }

    #[test]
    fn values_and_sibling_sequences() {
        let hip =
            br#"{"links": [{"id": "ab", "qber": 2.93, "measured_at": 1700000000123, "seq": 4}]}"#;
        assert_eq!(
            parse(hip, "/links/0/qber"),
            Ok((2.93, Some(1_700_000_000_123)))
        );
        let ts = br#"{"q": {"v": "0.02", "time_stamp": "1970-01-01T00:00:02Z"}}"#;
        assert_eq!(parse(ts, "/q/v"), Ok((0.02, Some(2000))));
        let seq = br#"{"v": 0.02, "seq": 7}"#;
        assert_eq!(parse(seq, "/v"), Ok((0.02, Some(7))));
        assert_eq!(parse(br#"{"v": [0.02]}"#, "/v/0"), Ok((0.02, None)));
        assert_eq!(parse(br#"{"v": 0.02}"#, "/v"), Ok((0.02, None)));
        let cases: [(&[u8], &str); 6] = [
            (b"not json", "not JSON"),
            (br#"{"v": "2.9%"}"#, "not a number but a string"),
            (br#"{"v": null}"#, "not a number but null"),
            (br#"{"v": {"x": 1}}"#, "not a number but an object"),
            (
                br#"{"v": 0.1, "seq": -1}"#,
                "seq must be an unsigned integer",
            ),
            (br#"{"v": 0.1, "measured_at": "yesterday"}"#, "RFC 3339"),
        ];
        for (body, want) in cases {
            let e = parse(body, "/v").unwrap_err();
            assert!(e.contains(want), "{e}");
        }
    }

    #[test]
    fn deep_or_hostile_documents_do_not_panic() {
        let deep = "[".repeat(100_000);
        assert!(parse(deep.as_bytes(), "/0").is_err());
        let long = format!("/{}", "0/".repeat(10_000));
        assert!(resolve(&json!([]), &long).is_err());
        assert_eq!(number(&json!("1e400")), None);
        assert_eq!(number(&json!("0x1")), None);
    }
}
