//! The `prometheus` QBER driver's parser: one `qkd_qber` sample (HIP-71's
//! gauge, a fraction) out of Prometheus text exposition format 0.0.4.
//! Runs in the engine; pure.
//!
//! Minimal and strict: only lines whose metric name is exactly `qkd_qber`
//! are parsed (other metrics, comments and blank lines are skipped), and
//! each of those must be `qkd_qber{label="value",...} VALUE [TIMESTAMP]`
//! with well-formed labels, else the whole answer is refused. Exactly one
//! of them must carry `link_id="<qber_id>"`. The optional TIMESTAMP (unix
//! ms) becomes the sample's sequence; without it the driver counts a
//! sample as new only if its value changed (an exporter that sets no time
//! stamp and measures the same value twice looks stalled: fail closed).

/// The value and optional time stamp of `qkd_qber{link_id="<qber_id>"}`.
pub fn parse(body: &[u8], qber_id: &str) -> Result<(f64, Option<u64>), String> {
    parse_all(body)?.get(qber_id)
}

/// Every `qkd_qber` sample of one answer, by `link_id`: an exporter's
/// `/metrics` lists all its links, and the links that read it share one
/// GET and one parse per poll (parsing it once per link made a poll
/// quadratic in the links).
#[derive(Debug, Default)]
pub struct Exposition {
    /// `link_id` -> its sample; None when the answer has more than one.
    by_id: std::collections::HashMap<String, Option<(f64, Option<u64>)>>,
}

impl Exposition {
    /// The sample of `qber_id`: exactly one must be there.
    pub fn get(&self, qber_id: &str) -> Result<(f64, Option<u64>), String> {
        // Quoted, cut short, not escaped: the log escapes it, once.
        let id = || crate::text::excerpt(qber_id, 64);
        match self.by_id.get(qber_id) {
            Some(Some(s)) => Ok(*s),
            Some(None) => Err(format!(
                "more than one qkd_qber sample for link_id \"{}\"",
                id()
            )),
            None => Err(format!("no qkd_qber sample for link_id \"{}\"", id())),
        }
    }
}

/// Parses every `qkd_qber` line; one malformed line refuses the answer.
pub fn parse_all(body: &[u8]) -> Result<Exposition, String> {
    let text = std::str::from_utf8(body).map_err(|_| "answer is not UTF-8 text".to_string())?;
    let mut out = Exposition::default();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let name_len = line
            .bytes()
            .take_while(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b':'))
            .count();
        if &line[..name_len] != "qkd_qber" {
            continue;
        }
        let (labels, value, stamp) =
            sample(&line[name_len..]).map_err(|e| format!("line {}: {e}", n + 1))?;
        for (_, id) in labels.into_iter().filter(|(k, _)| k == "link_id") {
            // A second sample for one link: neither is believed.
            out.by_id
                .entry(id)
                .and_modify(|s| *s = None)
                .or_insert(Some((value, stamp)));
        }
    }
    Ok(out)
}

type Labels = Vec<(String, String)>;

/// After the metric name: `{labels}` (optional), the value, the time stamp.
fn sample(rest: &str) -> Result<(Labels, f64, Option<u64>), String> {
    let (labels, rest) = match rest.strip_prefix('{') {
        Some(r) => labels(r)?,
        None => (Vec::new(), rest),
    };
    if !rest.starts_with([' ', '\t']) {
        return Err("expected a space before the value".into());
    }
    let mut fields = rest.split_ascii_whitespace();
    let value = fields.next().ok_or("no value")?;
    let value = match value {
        "+Inf" | "-Inf" | "NaN" => return Err(format!("value {value} is not a QBER")),
        v => v
            .parse::<f64>()
            .ok()
            .filter(|x| x.is_finite())
            .ok_or_else(|| format!("bad value \"{}\"", crate::text::excerpt(v, 40)))?,
    };
    let stamp = match fields.next() {
        None => None,
        Some(t) => Some(
            t.parse::<u64>()
                .map_err(|_| format!("bad timestamp \"{}\"", crate::text::excerpt(t, 40)))?,
        ),
    };
    if fields.next().is_some() {
        return Err("text after the timestamp".into());
    }
    Ok((labels, value, stamp))
}

/// `name="value",...}` then the rest of the line.
fn labels(mut s: &str) -> Result<(Labels, &str), String> {
    let mut out = Vec::new();
    loop {
        s = s.trim_start();
        if let Some(rest) = s.strip_prefix('}') {
            return Ok((out, rest));
        }
        let n = s
            .bytes()
            .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
            .count();
        if n == 0 || s.as_bytes()[0].is_ascii_digit() {
            return Err("bad label name".into());
        }
        let name = s[..n].to_string();
        s = s[n..].trim_start();
        s = s.strip_prefix('=').ok_or("expected = after a label name")?;
        s = s.trim_start();
        s = s.strip_prefix('"').ok_or("expected a quoted label value")?;
        let (value, rest) = label_value(s)?;
        // The exposition format allows a label once per sample: a second
        // link_id would have one value answer for two links.
        if out.iter().any(|(n, _)| *n == name) {
            return Err(format!("label {name} given twice"));
        }
        out.push((name, value));
        s = rest.trim_start();
        if let Some(rest) = s.strip_prefix(',') {
            s = rest;
        } else if !s.starts_with('}') {
            return Err("expected , or } after a label".into());
        }
    }
}

/// A label value after its opening quote: `\\`, `\"` and `\n` escapes.
fn label_value(s: &str) -> Result<(String, &str), String> {
    let mut out = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((out, &s[i + 1..])),
            '\\' => match chars.next() {
                Some((_, '\\')) => out.push('\\'),
                Some((_, '"')) => out.push('"'),
                Some((_, 'n')) => out.push('\n'),
                _ => return Err("bad escape in a label value".into()),
            },
            c => out.push(c),
        }
    }
    Err("unterminated label value".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &str = "# HELP qkd_qber QBER\n# TYPE qkd_qber gauge\n\
        qkd_qber{link_id=\"ab\"} 0.031 1700000000123\n\
        qkd_qber{node=\"x\",link_id=\"a\\\"b\",} 0.02\n\
        qkd_qber_total{link_id=\"ab\"} 9\n\
        qkd_skr{link_id=\"ab\"} 1200 1700000000123\n";

    #[test]
    fn a_label_given_twice_is_refused() {
        let two = "qkd_qber{link_id=\"a\",link_id=\"b\"} 0.01\n";
        assert!(parse(two.as_bytes(), "a").is_err());
        assert!(parse(two.as_bytes(), "b").is_err());
        assert!(parse_all(two.as_bytes()).is_err());
    }

    #[test]
    fn finds_the_link_sample() {
        assert_eq!(
            parse(BODY.as_bytes(), "ab"),
            Ok((0.031, Some(1_700_000_000_123)))
        );
        assert_eq!(parse(BODY.as_bytes(), "a\"b"), Ok((0.02, None)));
        let e = parse(BODY.as_bytes(), "cd").unwrap_err();
        assert_eq!(e, "no qkd_qber sample for link_id \"cd\"");
    }

    #[test]
    fn is_strict_about_qkd_qber_lines() {
        let cases = [
            (
                "qkd_qber{link_id=\"ab\"} 0.1\nqkd_qber{link_id=\"ab\"} 0.2\n",
                "more than one",
            ),
            ("qkd_qber{link_id=\"ab} 0.1\n", "line 1: unterminated"),
            ("qkd_qber{link_id=ab} 0.1\n", "quoted label value"),
            ("qkd_qber{link_id=\"ab\"}0.1\n", "space before the value"),
            ("qkd_qber{link_id=\"ab\"} 0.1 12 x\n", "text after"),
            ("qkd_qber{link_id=\"ab\"} 0.1 -12\n", "bad timestamp"),
            ("qkd_qber{link_id=\"ab\"} NaN\n", "not a QBER"),
            ("qkd_qber{link_id=\"ab\"} 1e999\n", "bad value"),
            ("qkd_qber{link_id=\"ab\"} zero\n", "bad value"),
            ("qkd_qber{link_id=\"a\\xb\"} 0.1\n", "bad escape"),
            ("qkd_qber{1x=\"ab\"} 0.1\n", "bad label name"),
            ("qkd_qber{link_id=\"ab\" x=\"y\"} 0.1\n", "expected , or }"),
            ("qkd_qber{link_id=\"ab\"}", "space before the value"),
        ];
        for (body, want) in cases {
            let e = parse(body.as_bytes(), "ab").unwrap_err();
            assert!(e.contains(want), "{body:?}: {e}");
        }
        assert!(parse(b"\xff\xfe", "ab").unwrap_err().contains("UTF-8"));
    }

    #[test]
    fn one_parse_serves_every_link() {
        let all = parse_all(BODY.as_bytes()).unwrap();
        assert_eq!(all.get("ab"), Ok((0.031, Some(1_700_000_000_123))));
        assert_eq!(all.get("a\"b"), Ok((0.02, None)));
        assert!(all.get("cd").unwrap_err().starts_with("no qkd_qber sample"));
        // A link given twice is refused; the others are still read.
        let body = "qkd_qber{link_id=\"ab\"} 0.1\nqkd_qber{link_id=\"x\"} 0.3\n\
                    qkd_qber{link_id=\"ab\"} 0.2\n";
        let all = parse_all(body.as_bytes()).unwrap();
        assert!(all.get("ab").unwrap_err().contains("more than one"));
        assert_eq!(all.get("x"), Ok((0.3, None)));
    }
}
