//! The one logging helper (DESIGN §8): `event=<name>` first, then `key=value`
//! pairs, values printable ASCII with `"` and `\` escaped, control and
//! non-ASCII bytes as `\xNN`, at most 256 bytes each. Text from remote parties
//! goes only into a final `msg=`.
//!
//! Where the line goes (stderr with `-d`, syslog otherwise, the parent for the
//! engine on Linux) is set once per process with [`init`].

use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, Ordering};

/// syslog priorities we use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Prio {
    Alert = 1,
    Crit = 2,
    Err = 3,
    Warning = 4,
    Notice = 5,
    Info = 6,
    Debug = 7,
}

impl Prio {
    pub fn from_u8(v: u8) -> Option<Prio> {
        Some(match v {
            1 => Prio::Alert,
            2 => Prio::Crit,
            3 => Prio::Err,
            4 => Prio::Warning,
            5 => Prio::Notice,
            6 => Prio::Info,
            7 => Prio::Debug,
            _ => return None,
        })
    }
}

/// Where records go.
pub type Sink = Box<dyn Fn(Prio, &str) + Send + Sync>;

static SINK: Mutex<Option<Sink>> = Mutex::new(None);
static VERBOSITY: AtomicU8 = AtomicU8::new(Prio::Info as u8);

/// Sets the process's sink (stderr, syslog, or forward to the parent).
pub fn init(sink: Sink) {
    *SINK.lock().unwrap_or_else(|e| e.into_inner()) = Some(sink);
}

/// `-v` / `log verbose` raise this to Debug.
pub fn set_verbose(verbose: bool) {
    let p = if verbose { Prio::Debug } else { Prio::Info };
    VERBOSITY.store(p as u8, Ordering::Relaxed);
}

pub fn verbose() -> bool {
    VERBOSITY.load(Ordering::Relaxed) >= Prio::Debug as u8
}

/// Emits one already formatted line.
pub fn emit(prio: Prio, line: &str) {
    if prio as u8 > VERBOSITY.load(Ordering::Relaxed) {
        return;
    }
    let sink = SINK.lock().unwrap_or_else(|e| e.into_inner());
    match sink.as_ref() {
        Some(f) => f(prio, line),
        None => eprintln!("{line}"),
    }
}

/// Builds one `event=name k=v ...` line.
pub struct Event {
    prio: Prio,
    line: String,
}

/// Starts an event line: `log::event(Prio::Alert, "lockdown").kv("link", "dr").send()`.
pub fn event(prio: Prio, name: &str) -> Event {
    let mut line = String::from("event=");
    push_value(&mut line, name);
    Event { prio, line }
}

impl Event {
    pub fn kv(mut self, key: &str, value: impl std::fmt::Display) -> Event {
        let v = value.to_string();
        self.line.push(' ');
        self.line.push_str(key);
        self.line.push('=');
        push_value(&mut self.line, &v);
        self
    }

    /// Text from a remote party or free-form; must be the last pair.
    pub fn msg(self, text: impl std::fmt::Display) -> Event {
        self.kv("msg", text)
    }

    pub fn line(&self) -> &str {
        &self.line
    }

    pub fn send(self) {
        emit(self.prio, &self.line);
    }
}

/// Escapes one value; quotes it when it holds a space, `=` or `"`, or is empty.
fn push_value(out: &mut String, v: &str) {
    let mut esc = String::new();
    for b in v.bytes() {
        if esc.len() >= 256 {
            break;
        }
        match b {
            b'"' => esc.push_str("\\\""),
            b'\\' => esc.push_str("\\\\"),
            0x20..=0x7e => esc.push(b as char),
            _ => {
                let _ = write!(esc, "\\x{b:02x}");
            }
        }
    }
    esc.truncate(256);
    if esc.is_empty() || esc.contains([' ', '=', '"']) {
        out.push('"');
        out.push_str(&esc);
        out.push('"');
    } else {
        out.push_str(&esc);
    }
}

/// Plain diagnostics that are not events (start-up errors, debug traces).
pub fn info(msg: impl std::fmt::Display) {
    emit(Prio::Info, &msg.to_string());
}
pub fn warn(msg: impl std::fmt::Display) {
    emit(Prio::Warning, &msg.to_string());
}
pub fn debug(msg: impl std::fmt::Display) {
    if verbose() {
        emit(Prio::Debug, &msg.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_values() {
        let e = event(Prio::Info, "kme_error")
            .kv("link", "dr")
            .kv("status", 503)
            .msg("bad \"gateway\"\n\u{7f}é=");
        assert_eq!(
            e.line(),
            r#"event=kme_error link=dr status=503 msg="bad \"gateway\"\x0a\x7f\xc3\xa9=""#
        );
    }

    #[test]
    fn caps_value_length() {
        let long = "a".repeat(1000);
        let e = event(Prio::Info, "x").kv("k", &long);
        assert_eq!(e.line().len(), "event=x k=".len() + 256);
    }
}
