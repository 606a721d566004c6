//! qkdpfd.conf: the span-reporting parser. A config that parses prints
//! (`qkdpfd -nv`) to text that parses back to the same config; one that
//! does not names positions that exist in the text.
#![no_main]
use libfuzzer_sys::fuzz_target;
use qkdpfd::conf::{parse::parse, print::normalised};

fuzz_target!(
    init: qkdpfd_fuzz::set_cap(64 * qkdpfd_fuzz::MIB),
    |data: &[u8]| {
        let Ok(text) = std::str::from_utf8(data) else { return };
        match parse("fuzz.conf", text) {
            Ok(c) => {
                let printed = normalised(&c);
                let again = parse("fuzz.conf", &printed)
                    .unwrap_or_else(|e| panic!("normalised config does not parse:\n{e}\n{printed}"));
                assert_eq!(again, c, "parse(normalised(c)) != c:\n{printed}");
                assert_eq!(normalised(&again), printed);
            }
            Err(errs) => {
                assert!(!errs.0.is_empty(), "an error without errors");
                let lines: Vec<&str> = text.split('\n').collect();
                for e in &errs.0 {
                    if e.line == 0 {
                        continue;
                    }
                    let l = lines.get(e.line - 1).unwrap_or_else(|| {
                        panic!("error at line {} of {}: {}", e.line, lines.len(), e.msg)
                    });
                    assert!(
                        e.col >= 1 && e.col <= l.chars().count() + 1,
                        "error at {}:{} past the line's end: {}",
                        e.line,
                        e.col,
                        e.msg
                    );
                }
            }
        }
    }
);
