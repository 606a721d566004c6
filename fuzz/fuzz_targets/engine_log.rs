//! The engine's log lines as the parent writes them to syslog
//! (`log::from_engine`, behind the imsg Log frame): a compromised engine
//! chooses every byte. The line the parent logs is printable ASCII on one
//! line, and a key=value reader finds in it exactly one `event=` (first)
//! and one `proc=engine` (second) when it is an event (a catalogue name
//! only), and neither when it is not: the engine can never speak as the
//! parent.
#![no_main]
use libfuzzer_sys::fuzz_target;
use qkdpfd::log::from_engine;

fuzz_target!(
    init: qkdpfd_fuzz::set_cap(16 * qkdpfd_fuzz::MIB),
    |data: &[u8]| {
        let Ok(line) = std::str::from_utf8(data) else { return };
        let out = from_engine(line);
        qkdpfd_fuzz::assert_printable("logged line", &out);
        let tokens: Vec<&str> = out.split(' ').collect();
        let keyed = |key: &str| -> Vec<usize> {
            let prefix = format!("{key}=");
            tokens
                .iter()
                .enumerate()
                .filter(|(_, t)| t.starts_with(&prefix))
                .map(|(i, _)| i)
                .collect()
        };
        if out.starts_with("event=") {
            // Only under a catalogue name, the same the engine gave.
            let name = &tokens[0]["event=".len()..];
            assert!(qkdpfd::log::Event::by_name(name).is_some(), "{out}");
            assert!(line.starts_with(&format!("event={name}")), "{out}");
            assert_eq!(keyed("event"), [0], "{out}");
            assert_eq!(keyed("proc"), [1], "{out}");
            assert_eq!(tokens[1], "proc=engine", "{out}");
        } else {
            assert_eq!(tokens[0], "engine:", "{out}");
            assert!(keyed("event").is_empty() && keyed("proc").is_empty(), "{out}");
        }
    }
);
