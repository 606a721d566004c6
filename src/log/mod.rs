//! The one logging helper (DESIGN §8): `event=<name>` first, then `key=value`
//! pairs, values printable ASCII with `"` and `\` escaped, control and
//! non-ASCII bytes as `\xNN`, at most 256 bytes each. Text from remote parties
//! goes only into a final `msg=`.
//!
//! Where the line goes (stderr with `-d`, syslog otherwise, the parent for the
//! engine on Linux) is set once per process with [`init`].
//!
//! `proc=parent` or `proc=engine` follows `event=`: the parent sets its own
//! with [`set_proc`], and stamps every line the engine sends it with
//! [`from_engine`], which also neutralises any `proc=` the engine wrote, so
//! an engine cannot pass its lines off as the parent's.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, Ordering};

pub mod catalogue;
pub use catalogue::Event;

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
/// This process's `proc=` value; empty: none (the engine, qkdctl, qkdsim).
static PROC: Mutex<&'static str> = Mutex::new("");

/// Most bytes of one escaped value.
pub const VALUE_MAX: usize = 256;

/// Names this process in every event line it builds (`proc=parent`).
pub fn set_proc(name: &'static str) {
    *PROC.lock().unwrap_or_else(|e| e.into_inner()) = name;
}

/// An engine's line as the parent logs it: `event=<name> proc=engine …`;
/// a line that is not an event is prefixed `engine: `. In both, any other
/// `proc=` or `event=` the engine wrote is renamed `engine_proc=` /
/// `engine_event=`, so a key=value reader (a SIEM's) finds exactly one
/// `event` and one `proc` in an event line and neither in another line,
/// and only a catalogue name ([`Event::by_name`]) makes an event line: the
/// engine can neither speak as the parent nor bend the line format. Bytes outside printable ASCII
/// become `?` (the engine escapes its own values; this is the backstop).
pub fn from_engine(line: &str) -> String {
    let clean: String = line
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect();
    let rename = |tail: &str| {
        format!(" {tail}")
            .replace(" proc=", " engine_proc=")
            .replace(" event=", " engine_event=")
    };
    // Only a catalogue name starts an event line: anything else (a quoted
    // name carrying pairs, a name no reader knows) would let the engine
    // shape a line the one helper never writes.
    let event = clean.strip_prefix("event=").and_then(|rest| {
        let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
        Event::by_name(name).map(|e| (e, tail))
    });
    match event {
        Some((e, tail)) => format!("event={} proc=engine{}", e.name(), rename(tail).trim_end()),
        None => format!("engine:{}", rename(&clean)),
    }
}

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
        None => to_stderr("", line),
    }
}

/// Writes `prefix`, `line` and its newline to stderr in one write(2).
/// `eprintln!` writes the newline on its own: the children sharing our
/// stderr (the engine, wireguard-go, nft) then land in the middle of our
/// lines, and a reader of the log takes two lines for one.
pub fn to_stderr(prefix: &str, line: &str) {
    use std::io::Write;
    let mut whole = String::with_capacity(prefix.len() + line.len() + 1);
    whole.push_str(prefix);
    whole.push_str(line);
    whole.push('\n');
    let _ = std::io::stderr().lock().write_all(whole.as_bytes());
}

/// One `event=name k=v ...` line being built.
pub struct Record {
    event: Event,
    prio: Prio,
    line: String,
}

/// Starts an event line at the catalogue's priority:
/// `log::event(Event::Lockdown).kv("link", "dr").send()`.
pub fn event(event: Event) -> Record {
    let mut line = String::from("event=");
    line.push_str(event.name());
    let proc = *PROC.lock().unwrap_or_else(|e| e.into_inner());
    if !proc.is_empty() {
        line.push_str(" proc=");
        line.push_str(proc);
    }
    Record {
        event,
        prio: event.spec().prio,
        line,
    }
}

impl Record {
    /// Another priority the catalogue lists for this event.
    pub fn at(mut self, prio: Prio) -> Record {
        let spec = self.event.spec();
        debug_assert!(
            prio == spec.prio || spec.also.contains(&prio),
            "{} is not logged at {prio:?} (log/catalogue.rs)",
            spec.name
        );
        self.prio = prio;
        self
    }

    /// One field; the catalogue must list it for this event.
    pub fn kv(mut self, key: &str, value: impl std::fmt::Display) -> Record {
        debug_assert!(
            self.event.spec().has_field(key),
            "{} has no field {key} (log/catalogue.rs)",
            self.event.name()
        );
        let v = value.to_string();
        self.line.push(' ');
        self.line.push_str(key);
        self.line.push('=');
        push_value(&mut self.line, &v);
        self
    }

    /// `suppressed=N` when a [`PerMinute`] held N events back (nothing
    /// for 0): the second half of the flood rule, written one way.
    pub fn suppressed(self, held: u64) -> Record {
        if held > 0 {
            self.kv("suppressed", held)
        } else {
            self
        }
    }

    /// Text from a remote party or free-form; must be the last pair.
    pub fn msg(self, text: impl std::fmt::Display) -> Record {
        self.kv("msg", text)
    }

    pub fn line(&self) -> &str {
        &self.line
    }

    pub fn send(self) {
        emit(self.prio, &self.line);
    }
}

/// Escapes one value ([`crate::text`]'s rule); quotes it when it holds a
/// space, `=` or `"`, or is empty. At most [`VALUE_MAX`] bytes, cut between
/// escapes, never inside one.
fn push_value(out: &mut String, v: &str) {
    let mut esc = String::new();
    crate::text::push_bounded(&mut esc, v, VALUE_MAX);
    if esc.is_empty() || esc.contains([' ', '=', '"']) {
        out.push('"');
        out.push_str(&esc);
        out.push('"');
    } else {
        out.push_str(&esc);
    }
}

/// The flood rule of DESIGN §8: the first event per key per minute, then,
/// a minute or more later, the next one with the count held back meanwhile
/// (`suppressed=N`, written by [`Record::suppressed`]), or, when no next
/// one comes, a line of its own once the minute is over
/// ([`PerMinute::overdue`]: a flood that stops must still be told). The
/// one rate limiter of log lines: `ctl_denied` (per uid),
/// `peer_auth_failed` (per source) and `peer_send_failed` (per
/// destination). `V`: what the line owed for a held count says besides it
/// (the last held event's).
pub struct PerMinute<K, V = ()> {
    seen: std::collections::HashMap<K, (std::time::Instant, u64, Option<V>)>,
}

impl<K, V> Default for PerMinute<K, V> {
    fn default() -> PerMinute<K, V> {
        PerMinute {
            seen: std::collections::HashMap::new(),
        }
    }
}

const MINUTE: std::time::Duration = std::time::Duration::from_secs(60);

impl<K: std::hash::Hash + Eq + Clone, V> PerMinute<K, V> {
    /// Some(events held back since the last one logged) when this one is
    /// to be logged; None when it is held back.
    pub fn admit(&mut self, key: K, now: std::time::Instant) -> Option<u64> {
        self.admit_noting(key, now, || None)
    }

    /// [`PerMinute::admit`], noting what a held event would say in the
    /// line [`PerMinute::overdue`] owes for it.
    pub fn admit_noting(
        &mut self,
        key: K,
        now: std::time::Instant,
        detail: impl FnOnce() -> Option<V>,
    ) -> Option<u64> {
        match self.seen.get_mut(&key) {
            Some((t, n, d)) if now.duration_since(*t) < MINUTE => {
                *n += 1;
                *d = detail();
                None
            }
            _ => Some((self.seen.insert(key, (now, 0, None))).map_or(0, |(_, n, _)| n)),
        }
    }

    /// The counts held back for a minute or more with no event since to
    /// carry them: each key's count and detail, said now by the caller
    /// (the key's minute starts again, so its next event is held).
    pub fn overdue(&mut self, now: std::time::Instant) -> Vec<(K, u64, Option<V>)> {
        let mut out = Vec::new();
        for (k, (t, n, d)) in self.seen.iter_mut() {
            if *n > 0 && now.duration_since(*t) >= MINUTE {
                out.push((k.clone(), std::mem::take(n), d.take()));
                *t = now;
            }
        }
        out
    }

    /// Forgets the keys whose last line is a minute old and that hold
    /// nothing back. A key holding a count keeps it: its next line owes
    /// `suppressed=N`, and forgetting the key would drop N unsaid.
    pub fn prune(&mut self, now: std::time::Instant) {
        self.seen
            .retain(|_, (t, n, _)| *n > 0 || now.duration_since(*t) < MINUTE);
    }

    /// Forgets every key whose last line is a minute old, counts or not,
    /// and returns the sum of the counts they held, for a caller that
    /// needs the room and must still tell those counts some other way.
    pub fn evict(&mut self, now: std::time::Instant) -> u64 {
        let mut held = 0;
        self.seen.retain(|_, (t, n, _)| {
            let keep = now.duration_since(*t) < MINUTE;
            if !keep {
                held += *n;
            }
            keep
        });
        held
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    pub fn contains(&self, key: &K) -> bool {
        self.seen.contains_key(key)
    }

    pub fn clear(&mut self) {
        self.seen.clear();
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

    /// With stderr a datagram socket each write(2) is one datagram: a line
    /// and its newline must be one.
    #[test]
    fn a_stderr_line_is_one_write() {
        let mut fds = [0; 2];
        // SAFETY: socketpair fills the two-element array.
        let r = unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_DGRAM, 0, fds.as_mut_ptr()) };
        assert_eq!(r, 0);
        // SAFETY: fd 2 is open for the whole test process; put it back below.
        let saved = unsafe { libc::dup(2) };
        assert!(saved >= 0);
        unsafe { libc::dup2(fds[0], 2) };
        to_stderr("qkdpfd: ", "event=one-write-probe a=1");
        to_stderr("", "event=one-write-probe b=2");
        unsafe { libc::dup2(saved, 2) };
        unsafe { libc::close(saved) };
        unsafe { libc::close(fds[0]) };
        let mut got = Vec::new();
        let mut buf = [0u8; 512];
        loop {
            // SAFETY: reads into buf; non-blocking, stops when empty.
            let n = unsafe {
                libc::recv(
                    fds[1],
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n <= 0 {
                break;
            }
            let d = String::from_utf8_lossy(&buf[..n as usize]).into_owned();
            // Other tests' threads may write to fd 2 meanwhile.
            if d.contains("one-write-probe") || d == "\n" {
                got.push(d);
            }
        }
        unsafe { libc::close(fds[1]) };
        assert_eq!(
            got,
            [
                "qkdpfd: event=one-write-probe a=1\n",
                "event=one-write-probe b=2\n"
            ]
        );
    }

    #[test]
    fn escapes_values() {
        let e = event(Event::KmeError)
            .kv("link", "dr")
            .kv("kme", "site 2")
            .msg("bad \"gateway\"\n\u{7f}é=");
        assert_eq!(
            e.line(),
            r#"event=kme_error link=dr kme="site 2" msg="bad \"gateway\"\x0a\x7f\xc3\xa9=""#
        );
    }

    #[test]
    fn the_flood_rule_logs_the_first_per_key_a_minute_then_the_count() {
        let mut seen: PerMinute<u32> = PerMinute::default();
        let t0 = std::time::Instant::now();
        assert_eq!(seen.admit(7u32, t0), Some(0));
        assert_eq!(seen.admit(7, t0 + MINUTE / 2), None);
        assert_eq!(seen.admit(8, t0 + MINUTE / 2), Some(0));
        assert_eq!(seen.admit(7, t0 + MINUTE / 2), None);
        assert_eq!(seen.admit(7, t0 + MINUTE), Some(2));
        // Pruning keeps a count owed, not a key that owes nothing.
        assert_eq!(seen.admit(7, t0 + MINUTE), None);
        seen.prune(t0 + 3 * MINUTE);
        assert!(seen.contains(&7) && !seen.contains(&8));
        assert_eq!(seen.evict(t0 + 3 * MINUTE), 1);
        assert!(seen.is_empty());
        let line = |held| event(Event::CtlDenied).suppressed(held);
        assert_eq!(line(0).line(), "event=ctl_denied");
        assert_eq!(line(2).line(), "event=ctl_denied suppressed=2");
    }

    #[test]
    fn caps_value_length() {
        let long = "a".repeat(1000);
        let e = event(Event::Band).kv("link", &long);
        assert_eq!(e.line().len(), "event=band link=".len() + 256);
    }

    proptest::proptest! {
        /// Whatever the value, the capped text ends on a whole escape:
        /// no dangling `\`, no half of `\xNN` (a SIEM would misparse it).
        #[test]
        fn truncation_never_cuts_an_escape(v in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            let v = String::from_utf8_lossy(&v).into_owned();
            let mut out = String::new();
            push_value(&mut out, &v);
            let body = out.strip_prefix('"').and_then(|o| o.strip_suffix('"')).unwrap_or(&out);
            proptest::prop_assert!(body.len() <= VALUE_MAX);
            let b = body.as_bytes();
            let mut i = 0;
            while i < b.len() {
                if b[i] == b'\\' {
                    proptest::prop_assert!(i + 1 < b.len(), "dangling backslash: {body}");
                    match b[i + 1] {
                        b'\\' | b'"' => i += 2,
                        b'x' => {
                            proptest::prop_assert!(i + 3 < b.len(), "cut \\x escape: {body}");
                            proptest::prop_assert!(b[i + 2].is_ascii_hexdigit() && b[i + 3].is_ascii_hexdigit());
                            i += 4;
                        }
                        c => proptest::prop_assert!(false, "bad escape {c}"),
                    }
                } else {
                    proptest::prop_assert!(b[i] != b'"', "unescaped quote");
                    i += 1;
                }
            }
        }
    }

    #[test]
    fn a_cut_lands_between_escapes() {
        // 255 plain bytes, then a byte needing 4: the escape does not fit.
        let v = format!("{}\u{1}", "a".repeat(255));
        let mut out = String::new();
        push_value(&mut out, &v);
        assert_eq!(out, "a".repeat(255));
    }

    #[test]
    fn engine_lines_are_stamped_by_the_parent() {
        assert_eq!(
            from_engine("event=lockdown link=dr reason=qber"),
            "event=lockdown proc=engine link=dr reason=qber"
        );
        // An engine claiming to be the parent is not believed.
        assert_eq!(
            from_engine("event=unlock_forced proc=parent link=dr"),
            "event=unlock_forced proc=engine engine_proc=parent link=dr"
        );
        assert_eq!(from_engine("event=shutdown"), "event=shutdown proc=engine");
        assert_eq!(from_engine("a debug trace\n"), "engine: a debug trace?");
        // Not an event, but key=value readers would take it for one.
        assert_eq!(
            from_engine("proc=parent event=policy_activated serial=9"),
            "engine: engine_proc=parent engine_event=policy_activated serial=9"
        );
        assert_eq!(
            from_engine("event=band event=y proc=parent"),
            "event=band proc=engine engine_event=y engine_proc=parent"
        );
    }

    #[test]
    fn an_engine_line_is_an_event_only_under_a_catalogue_name() {
        // A name the catalogue lacks, or one quoted to smuggle pairs into
        // the name, makes no event line.
        assert_eq!(from_engine("event=x"), "engine: engine_event=x");
        assert_eq!(
            from_engine(r#"event="band link=dr" qber=0.5"#),
            r#"engine: engine_event="band link=dr" qber=0.5"#
        );
        assert_eq!(
            from_engine("event=\"lockdown\" link=dr"),
            "engine: engine_event=\"lockdown\" link=dr"
        );
        assert!(!from_engine("event=lockdown=x").starts_with("event="));
    }
}
