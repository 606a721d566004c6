//! The http-json QBER driver's parser: an RFC 6901 pointer into any JSON
//! answer, the value and its sequence sibling. Raw input: the pointer up
//! to the first newline, then the body. Built input (first byte `BUILT`):
//! a value placed at a path the fuzzer chose (keys needing `~0`/`~1`
//! escapes included), with its sequence as `seq` or `measured_at`, is
//! found by the pointer to that path, exactly.
#![no_main]
use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use qkdpfd::engine::qber::http_json;
use qkdpfd_fuzz::{BUILT, Reading};
use serde_json::{Map, Value, json};

#[derive(Arbitrary, Debug)]
enum Step {
    Key(String),
    Index(u8),
}

fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

fn build(r: &Reading, path: &[Step], as_time: bool) -> Option<(String, Value)> {
    let mut leaf = Map::new();
    leaf.insert("qber".into(), json!(r.value));
    if let Some(s) = r.seq {
        let key = if as_time { "measured_at" } else { "seq" };
        leaf.insert(key.into(), json!(s));
    }
    let mut v = Value::Object(leaf);
    let mut pointer = "/qber".to_string();
    for step in path.iter().rev() {
        v = match step {
            Step::Key(k) if ["qber", "seq", "measured_at", "other"].contains(&k.as_str()) => {
                return None;
            }
            Step::Key(k) => {
                pointer = format!("/{}{pointer}", escape(k));
                json!({ k.clone(): v, "other": 1 })
            }
            Step::Index(i) => {
                let i = *i as usize % 4;
                pointer = format!("/{i}{pointer}");
                let mut a = vec![json!(null); i + 1];
                a[i] = v;
                Value::Array(a)
            }
        };
    }
    Some((pointer, v))
}

fuzz_target!(
    init: qkdpfd_fuzz::set_cap(64 * qkdpfd_fuzz::MIB),
    |data: &[u8]| {
        if let Some((&BUILT, rest)) = data.split_first() {
            let mut u = Unstructured::new(rest);
            let (Ok(r), Ok(path), Ok(as_time)) = (
                Reading::arbitrary(&mut u),
                Vec::<Step>::arbitrary(&mut u),
                bool::arbitrary(&mut u),
            ) else {
                return;
            };
            if path.len() > 32 {
                return;
            }
            let Some((pointer, doc)) = build(&r, &path, as_time) else { return };
            let body = serde_json::to_vec(&doc).expect("serialises");
            assert_eq!(http_json::parse(&body, &pointer), Ok((r.value, r.seq)), "{pointer} {doc}");
            return;
        }
        let Some(nl) = data.iter().position(|&b| b == b'\n') else { return };
        let Ok(pointer) = std::str::from_utf8(&data[..nl]) else { return };
        match http_json::parse(&data[nl + 1..], pointer) {
            Ok((raw, _seq)) => qkdpfd_fuzz::check_qber(raw),
            Err(e) => qkdpfd_fuzz::check_error("http-json", &e),
        }
    }
);
