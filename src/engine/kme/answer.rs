//! ETSI 014 answers, checked (engine): Status, key containers and error
//! bodies. The KME is outside our trust boundary: every field is checked
//! before anything is returned, and the key container is walked by hand (not
//! through serde's messages, which quote offending values — possibly keys).

use super::error::KmeErrorKind;
use crate::proto::peer::{KeyId, MAX_KEY_ID};
use crate::secret::QkdKey;
use crate::text::{excerpt, printable};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use zeroize::Zeroizing;

/// A key_ID from the KME, checked once here (the one [`KeyId`] rule).
fn key_id(s: &str) -> Result<KeyId, KmeErrorKind> {
    KeyId::new(s).map_err(|_| KmeErrorKind::MalformedKeyId(what_is_wrong(s)))
}

/// What is wrong with a key_ID, without quoting it: a KME that mixed up
/// its fields would otherwise have a key written to the log (base64 is
/// exactly what fails the key_ID rule). Its length and the first byte
/// that breaks the rule are enough to tell a KME's vendor what it sent.
fn what_is_wrong(s: &str) -> String {
    let bad = s
        .bytes()
        .position(|b| !(b.is_ascii_alphanumeric() || b == b'-'));
    match bad {
        _ if s.is_empty() => "(empty)".into(),
        Some(i) => format!(
            "of {} bytes: byte {} is {}, not one of [A-Za-z0-9-]",
            s.len(),
            i + 1,
            printable(&String::from_utf8_lossy(&[s.as_bytes()[i]]), 1)
        ),
        None => format!("of {} bytes (at most {MAX_KEY_ID})", s.len()),
    }
}

/// ETSI 014 Status (§6.1), every field typed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Status {
    #[serde(rename = "source_KME_ID")]
    pub source_kme_id: String,
    #[serde(rename = "target_KME_ID")]
    pub target_kme_id: String,
    #[serde(rename = "master_SAE_ID")]
    pub master_sae_id: String,
    #[serde(rename = "slave_SAE_ID")]
    pub slave_sae_id: String,
    pub key_size: u64,
    pub stored_key_count: u64,
    pub max_key_count: u64,
    pub max_key_per_request: u64,
    pub max_key_size: u64,
    pub min_key_size: u64,
    #[serde(rename = "max_SAE_ID_count")]
    pub max_sae_id_count: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_extension: Option<serde_json::Value>,
}

pub fn parse_json(body: &[u8]) -> Result<serde_json::Value, KmeErrorKind> {
    serde_json::from_slice(body).map_err(|_| KmeErrorKind::NotJson)
}

/// A parsed key container whose `key` strings are wiped when it goes away,
/// on success and on every error path alike.
struct Scrubbed(serde_json::Value);

impl Drop for Scrubbed {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        let keys = self.0.get_mut("keys").and_then(|k| k.as_array_mut());
        for entry in keys.into_iter().flatten() {
            if let Some(serde_json::Value::String(s)) = entry.get_mut("key") {
                s.zeroize();
            }
        }
    }
}

/// Status: serde's messages are fine here (no key material in a status),
/// but still cut short and made printable.
pub fn parse_status(body: &[u8]) -> Result<Status, KmeErrorKind> {
    let v = parse_json(body)?;
    serde_json::from_value(v).map_err(|e| KmeErrorKind::BadShape(excerpt(&e.to_string(), 120)))
}

/// What the caller asked for, to check a key container against.
pub enum Expect<'a> {
    /// enc_keys: exactly `number` new keys.
    Count(usize),
    /// dec_keys: exactly these IDs, each once.
    Ids(&'a [KeyId]),
}

/// Checks a key container: count, key_ID syntax, duplicates, requested IDs,
/// base64 and length (at least `size_bits / 8` bytes: DESIGN §6 refuses
/// shorter keys only; a longer one, from a KME that reads `size` as bytes,
/// is the same bytes at both ends and all of it goes into the HKDF). Keys
/// come back in the KME's order for enc_keys and in the requested order
/// for dec_keys.
pub fn parse_keys(
    body: &[u8],
    expect: Expect<'_>,
    size_bits: u32,
) -> Result<Vec<(KeyId, QkdKey)>, KmeErrorKind> {
    let body = unescape_solidus(body);
    let v = Scrubbed(parse_json(&body)?);
    let keys =
        v.0.get("keys")
            .and_then(|k| k.as_array())
            .ok_or_else(|| KmeErrorKind::BadShape("no \"keys\" array".into()))?;
    let expected = match &expect {
        Expect::Count(n) => *n,
        Expect::Ids(ids) => ids.len(),
    };
    if keys.len() != expected {
        return Err(KmeErrorKind::KeyCount {
            expected,
            got: keys.len(),
        });
    }
    let want = size_bits as usize / 8;
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(keys.len());
    for (i, entry) in keys.iter().enumerate() {
        let field = |name: &str| {
            entry.get(name).and_then(|s| s.as_str()).ok_or_else(|| {
                KmeErrorKind::BadShape(format!("keys[{i}] has no string \"{name}\""))
            })
        };
        let id = key_id(field("key_ID")?)?;
        if !seen.insert(id.clone()) {
            return Err(KmeErrorKind::DuplicateKeyId(id.into()));
        }
        if let Expect::Ids(ids) = &expect {
            if !ids.contains(&id) {
                return Err(KmeErrorKind::UnknownKeyId(id.into()));
            }
        }
        let key = decode_key(field("key")?).ok_or_else(|| KmeErrorKind::BadBase64 {
            key_id: id.to_string(),
        })?;
        if key.len() < want {
            return Err(KmeErrorKind::KeySize {
                key_id: id.into(),
                expected: want,
                got: key.len(),
            });
        }
        out.push((id, key));
    }
    if let Expect::Ids(ids) = expect {
        out.sort_by_key(|(id, _)| ids.iter().position(|x| x == id));
    }
    Ok(out)
}

/// The body with every `\/` (JSON's optional escape of `/`, PHP's
/// default) written as `/`, which means the same. A key's base64 then has
/// no escape left, and serde_json takes its string whole from the body: an
/// escaped one it builds in a scratch buffer of its own that is freed, key
/// and all, without being wiped.
fn unescape_solidus(body: &[u8]) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(Vec::with_capacity(body.len()));
    let mut i = 0;
    while i < body.len() {
        match (body[i], body.get(i + 1)) {
            (b'\\', Some(b'/')) => {
                out.push(b'/');
                i += 2;
            }
            // Any other escape (`\\` among them) is kept whole.
            (b'\\', Some(&next)) => {
                out.extend_from_slice(&[b'\\', next]);
                i += 2;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

/// Standard base64 with padding (ETSI 014 §6.3); a decoder that also takes
/// the unpadded form, as some KMEs send it. Decoded into a buffer that is
/// wiped whatever happens: `decode` drops what it decoded so far unwiped
/// when a later character is bad.
fn decode_key(b64: &str) -> Option<QkdKey> {
    let e = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    let mut buf = Zeroizing::new(vec![0u8; base64::decoded_len_estimate(b64.len())]);
    let n = e.decode_slice(b64, &mut buf[..]).ok()?;
    Some(QkdKey::new(buf[..n].to_vec()))
}

/// The message of an error answer: `message` from ETSI JSON with its
/// `details` (ETSI 014 §6.6; `detail` for FastAPI 422s), else a short
/// excerpt of the body. Cut short but not escaped: the log escapes it,
/// once ([`crate::text::excerpt`]). A body that may hold key material (JSON
/// with neither field, or text naming a `"key`) is never quoted: a KME that
/// sends a key container with an unexpected status must not put the key in
/// a log line.
pub fn error_message(body: &[u8]) -> String {
    const MAX: usize = 200;
    let quote = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let body = unescape_solidus(body);
    let body = &body[..];
    // Scrubbed: a key container sent with an error status is wiped too.
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body).map(Scrubbed) {
        let v = &v.0;
        let present = |f: &str| v.get(f).filter(|x| !x.is_null());
        if let Some(m) = present("message") {
            let mut text = quote(m);
            if let Some(d) = present("details") {
                text = format!("{text} (details: {})", quote(d));
            }
            return excerpt(&text, MAX);
        }
        if let Some(d) = present("detail") {
            return excerpt(&quote(d), MAX);
        }
        return "(JSON answer without a message, not quoted)".to_string();
    }
    let text =
        Zeroizing::new(String::from_utf8_lossy(&body[..body.len().min(MAX * 4)]).into_owned());
    if Zeroizing::new(text.to_ascii_lowercase()).contains("\"key") {
        return "(answer not quoted: it may hold a key)".to_string();
    }
    excerpt(text.trim(), MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `\/` is `/`; every other escape, `\\` before a `/` among them,
    /// means what it meant.
    #[test]
    fn an_escaped_solidus_is_written_plain_and_nothing_else_changes() {
        let body = br#"{"keys":[{"key_ID":"a","key":"ab\/cd+\/=="}],"x":"\\/\u002f\"\\"}"#;
        let clean = unescape_solidus(body);
        assert_eq!(
            &clean[..],
            br#"{"keys":[{"key_ID":"a","key":"ab/cd+/=="}],"x":"\\/\u002f\"\\"}"#
        );
        let was: serde_json::Value = serde_json::from_slice(body).unwrap();
        let now: serde_json::Value = serde_json::from_slice(&clean).unwrap();
        assert_eq!(was, now);
        // A lone backslash at the end is kept.
        assert_eq!(&unescape_solidus(b"a\\")[..], b"a\\");
    }

    fn ids(v: &[&str]) -> Vec<KeyId> {
        v.iter().map(|s| KeyId::new(s).unwrap()).collect()
    }

    #[test]
    fn malformed_key_ids_are_refused_printably() {
        let bad = br#"{"keys":[{"key_ID":"a\nb","key":"AAECAw=="}]}"#;
        assert_eq!(
            parse_keys(bad, Expect::Count(1), 32).unwrap_err(),
            KmeErrorKind::MalformedKeyId(
                "of 3 bytes: byte 2 is \\x0a, not one of [A-Za-z0-9-]".into()
            )
        );
    }

    #[test]
    fn keys_checked() {
        let ok = br#"{"keys":[{"key_ID":"a-1","key":"AAECAw=="},{"key_ID":"b","key":"BAUGBw"}]}"#;
        let k = parse_keys(ok, Expect::Count(2), 32).unwrap();
        assert_eq!(k[1].1.expose(), &[4, 5, 6, 7]);
        let back = parse_keys(ok, Expect::Ids(&ids(&["b", "a-1"])), 32).unwrap();
        assert_eq!(back[0].0.as_str(), "b");
        assert!(matches!(
            parse_keys(ok, Expect::Count(3), 32),
            Err(KmeErrorKind::KeyCount {
                expected: 3,
                got: 2
            })
        ));
        assert!(matches!(
            parse_keys(ok, Expect::Count(2), 64),
            Err(KmeErrorKind::KeySize {
                expected: 8,
                got: 4,
                ..
            })
        ));
        // Longer than asked (a KME that reads `size` as bytes): taken whole.
        let long = parse_keys(ok, Expect::Count(2), 16).unwrap();
        assert_eq!(long[0].1.expose(), &[0, 1, 2, 3]);
        assert!(matches!(
            parse_keys(ok, Expect::Ids(&ids(&["a-1", "c"])), 32),
            Err(KmeErrorKind::UnknownKeyId(id)) if id == "b"
        ));
        let dup = br#"{"keys":[{"key_ID":"a","key":"AAECAw=="},{"key_ID":"a","key":"AAECAw=="}]}"#;
        assert!(matches!(
            parse_keys(dup, Expect::Count(2), 32),
            Err(KmeErrorKind::DuplicateKeyId(_))
        ));
        let bad = br#"{"keys":[{"key_ID":"a","key":"!!!"}]}"#;
        assert!(matches!(
            parse_keys(bad, Expect::Count(1), 32),
            Err(KmeErrorKind::BadBase64 { .. })
        ));
        let shape = br#"{"keys":"QUJDRA=="}"#;
        let e = parse_keys(shape, Expect::Count(1), 32).unwrap_err();
        assert!(!format!("{e:?}").contains("QUJD"));
    }

    #[test]
    fn error_messages() {
        assert_eq!(
            error_message(br#"{"message":"size shall be a multiple of 8"}"#),
            "size shall be a multiple of 8"
        );
        assert_eq!(
            error_message(br#"{"detail":[{"msg":"x"}]}"#),
            r#"[{"msg":"x"}]"#
        );
        assert_eq!(
            error_message(b"<html>\n oops </html>"),
            "<html>\n oops </html>"
        );
        assert_eq!(
            error_message(
                br#"{"message":"bad request","details":[{"size":"shall be a multiple of 8"}]}"#
            ),
            r#"bad request (details: [{"size":"shall be a multiple of 8"}])"#
        );
        let long = error_message("é".repeat(300).as_bytes());
        assert_eq!(long, format!("{}...", "é".repeat(200)));
        assert_eq!(error_message(b""), "");
    }

    /// A key container under a status other than 200, whole or cut
    /// short, never reaches the message (and so never a log line).
    #[test]
    fn a_key_in_an_error_answer_is_not_quoted() {
        let whole =
            br#"{"keys":[{"key_ID":"a","key":"QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVowMTIzNDU="}]}"#;
        for body in [&whole[..], &whole[..60], br#"{"Key": "QUJDREVGR0hJSktM"#] {
            let m = error_message(body);
            assert!(!m.contains("QUJD"), "{m}");
        }
    }

    /// DESIGN §8: a value is escaped once, by the log; the message keeps
    /// the KME's text, so the line's `msg=` unescapes to exactly it.
    #[test]
    fn a_kme_message_is_escaped_once_on_its_way_to_the_log() {
        use super::super::error::{Call, KmeError};
        use crate::log::{self, Event};
        let message = error_message(br#"{"message":"no \"keys\" \\ left\n"}"#);
        let e = KmeError::new(
            "site",
            Call::EncKeys,
            KmeErrorKind::Status {
                status: 503,
                message,
            },
        );
        let ev = log::event(Event::KmeError)
            .kv("link", "dr")
            .kv("kme", "site")
            .msg(e);
        assert!(
            ev.line()
                .ends_with(r#" msg="kme site: enc_keys: HTTP 503: no \"keys\" \\ left\x0a""#),
            "{}",
            ev.line()
        );
    }
}
