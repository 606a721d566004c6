//! TOML text to a checked [`Config`]. Run by the parent (and by `qkdctl`
//! for `policy verify`); reads only the one file it is given and touches
//! nothing else: paths are kept as written, the caller opens them.
//!
//! Every error carries the file, the 1-based line and column (in characters)
//! of the offending key or value, and what was expected, and one run reports
//! all of them (ntpd's `yyerror` habit). Layout: this file holds the error
//! types, the position bookkeeping and [`Sect`], a reader over one section
//! that records errors as it goes; `value` holds the checks of single
//! values; `section` turns each section into its checked type.

mod section;
mod value;

use super::Config;
use std::fmt;
use std::path::Path;
use toml_edit::{ImDocument, Item, Key, TableLike, Value};

/// Larger than any sane qkdpfd.conf (a 10,000-link hub's is about 4 MiB);
/// refused rather than read into memory.
const MAX_CONF_BYTES: u64 = 16 << 20;

#[derive(Clone, Debug, PartialEq)]
pub struct ConfError {
    pub file: String,
    /// 1-based; 0 when the error concerns the file as a whole.
    pub line: usize,
    /// 1-based, in characters.
    pub col: usize,
    pub msg: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ConfErrors(pub Vec<ConfError>);

impl fmt::Display for ConfErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for e in &self.0 {
            if e.line == 0 {
                writeln!(f, "{}: {}", e.file, e.msg)?;
            } else {
                writeln!(f, "{}:{}:{}: {}", e.file, e.line, e.col, e.msg)?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfErrors {}

/// Reads and parses the file at `path`; `Config::path` is `path`.
pub fn load(path: &Path) -> Result<Config, ConfErrors> {
    let file = path.display().to_string();
    let whole = |msg: String| {
        ConfErrors(vec![ConfError {
            file: file.clone(),
            line: 0,
            col: 0,
            msg,
        }])
    };
    let bytes = read_limited(path).map_err(|e| whole(format!("cannot read: {e}")))?;
    let text = match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(e) => {
            let good = &e.as_bytes()[..e.utf8_error().valid_up_to()];
            let good = std::str::from_utf8(good).unwrap_or_default();
            let (line, col) = line_col(good, good.len());
            let msg = "expected UTF-8 text".to_string();
            return Err(ConfErrors(vec![ConfError {
                file,
                line,
                col,
                msg,
            }]));
        }
    };
    let mut conf = parse(&file, &text)?;
    conf.path = path.to_path_buf();
    Ok(conf)
}

fn read_limited(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(MAX_CONF_BYTES + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_CONF_BYTES {
        let msg = format!("larger than {MAX_CONF_BYTES} bytes");
        return Err(std::io::Error::other(msg));
    }
    Ok(bytes)
}

/// Parses `text`; `file` names it in errors and becomes `Config::path`.
pub fn parse(file: &str, text: &str) -> Result<Config, ConfErrors> {
    let mut errs = Errs::default();
    let conf = match ImDocument::parse(text) {
        Ok(doc) => Some(section::config(file, doc.as_table(), &mut errs)),
        Err(e) => {
            let at = e.span().map_or(0, |s| s.start);
            let msg = e.message().trim().lines().collect::<Vec<_>>().join("; ");
            errs.at(at, format!("syntax error: {msg}"));
            None
        }
    };
    match conf {
        Some(conf) if errs.0.is_empty() => Ok(conf),
        _ => Err(errs.into_errors(file, text)),
    }
}

/// Errors as (byte offset, message) until the end, where they are sorted
/// and turned into lines and columns.
#[derive(Default)]
pub(super) struct Errs(Vec<(usize, String)>);

impl Errs {
    pub(super) fn at(&mut self, offset: usize, msg: String) {
        self.0.push((offset, msg));
    }

    fn into_errors(mut self, file: &str, text: &str) -> ConfErrors {
        if self.0.is_empty() {
            // A section failed without saying why: never report success.
            self.0.push((0, "invalid configuration".to_string()));
        }
        self.0.sort_by_key(|(at, _)| *at);
        let errors = self.0.into_iter().map(|(at, msg)| {
            let (line, col) = line_col(text, at);
            let file = file.to_string();
            ConfError {
                file,
                line,
                col,
                msg,
            }
        });
        ConfErrors(errors.collect())
    }
}

/// 1-based line and character column of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut end = offset.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let before = &text[..end];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = before.matches('\n').count() + 1;
    (line, before[line_start..].chars().count() + 1)
}

/// A value as the checks see it: only the TOML types the config uses.
#[derive(Clone, Copy)]
pub(super) enum Got<'a> {
    Str(&'a str),
    Int(i64),
    Float(f64),
    Bool(bool),
    Other,
}

impl<'a> Got<'a> {
    fn of_value(v: &'a Value) -> Got<'a> {
        match v {
            Value::String(s) => Got::Str(s.value()),
            Value::Integer(i) => Got::Int(*i.value()),
            Value::Float(f) => Got::Float(*f.value()),
            Value::Boolean(b) => Got::Bool(*b.value()),
            _ => Got::Other,
        }
    }

    fn of_item(item: &'a Item) -> Got<'a> {
        item.as_value().map_or(Got::Other, Got::of_value)
    }
}

/// Where a key's value (or a section's `[header]`) starts, falling back to
/// the key, then to `dflt`.
pub(super) fn item_at(key: &Key, item: &Item, dflt: usize) -> usize {
    let span = item.span().or_else(|| key.span());
    span.map_or(dflt, |s| s.start)
}

/// `[kme.site]`, with the name quoted as TOML would need it.
pub(super) fn title(kind: &str, name: Option<&str>) -> String {
    match name {
        Some(n) => format!("[{kind}.{}]", Key::new(n).display_repr()),
        None => format!("[{kind}]"),
    }
}

/// One section being read: every getter records its own errors.
pub(super) struct Sect<'d, 'e> {
    t: &'d dyn TableLike,
    title: String,
    at: usize,
    errs: &'e mut Errs,
}

impl<'d, 'e> Sect<'d, 'e> {
    /// Starts reading `t`, reporting any key not in `known`.
    pub(super) fn new(
        t: &'d dyn TableLike,
        title: String,
        at: usize,
        errs: &'e mut Errs,
        known: &[&str],
    ) -> Self {
        let s = Sect { t, title, at, errs };
        for (k, _) in t.iter() {
            if !known.contains(&k) {
                let msg = format!(
                    "unknown key {k:?} in {}; expected one of: {}",
                    s.title,
                    known.join(", ")
                );
                s.errs.at(s.key_at(k), msg);
            }
        }
        s
    }

    pub(super) fn errs(&mut self) -> &mut Errs {
        self.errs
    }

    pub(super) fn has(&self, key: &str) -> bool {
        self.t.get(key).is_some()
    }

    /// Where `key` is written (the header if it is absent).
    pub(super) fn key_at(&self, key: &str) -> usize {
        let span = self.t.key(key).and_then(Key::span);
        span.map_or(self.at, |s| s.start)
    }

    /// Where `key`'s value is written.
    pub(super) fn value_at(&self, key: &str) -> usize {
        match self.t.get_key_value(key) {
            Some((k, item)) => item_at(k, item, self.at),
            None => self.at,
        }
    }

    /// An error about `key`, at its value.
    pub(super) fn bad(&mut self, key: &str, msg: &str) {
        let at = self.value_at(key);
        self.errs.at(at, format!("{key}: {msg}"));
    }

    /// An error about the whole section, at its header.
    pub(super) fn bad_section(&mut self, msg: String) {
        self.errs.at(self.at, msg);
    }

    /// `key` checked by `check`; `None` if absent or wrong.
    pub(super) fn get<T>(
        &mut self,
        key: &str,
        check: impl Fn(Got) -> Result<T, String>,
    ) -> Option<T> {
        let item = self.t.get(key)?;
        match check(Got::of_item(item)) {
            Ok(v) => Some(v),
            Err(msg) => {
                self.bad(key, &msg);
                None
            }
        }
    }

    /// Like [`get`](Self::get), and a missing key is an error at the header.
    pub(super) fn req<T>(
        &mut self,
        key: &str,
        check: impl Fn(Got) -> Result<T, String>,
    ) -> Option<T> {
        self.req_with(key, "", check)
    }

    /// Like [`req`](Self::req); `note` says why the key is required.
    pub(super) fn req_with<T>(
        &mut self,
        key: &str,
        note: &str,
        check: impl Fn(Got) -> Result<T, String>,
    ) -> Option<T> {
        if !self.has(key) {
            let msg = format!("missing key {key:?} in {}{note}", self.title);
            self.bad_section(msg);
            return None;
        }
        self.get(key, check)
    }

    /// Like [`get`](Self::get) with a default for an absent (or wrong) key.
    pub(super) fn or<T>(
        &mut self,
        key: &str,
        dflt: T,
        check: impl Fn(Got) -> Result<T, String>,
    ) -> T {
        self.get(key, check).unwrap_or(dflt)
    }

    /// `key` must not be here (`why` says when it would be valid).
    pub(super) fn forbid(&mut self, key: &str, why: &str) {
        if self.has(key) {
            let at = self.key_at(key);
            self.errs.at(at, format!("{key}: {why}"));
        }
    }

    /// A required, non-empty list, each element checked and reported on
    /// its own; elements come with their offsets.
    pub(super) fn list<T>(
        &mut self,
        key: &str,
        what: &str,
        check: impl Fn(Got) -> Result<T, String>,
    ) -> Option<Vec<(T, usize)>> {
        if !self.has(key) {
            return self.req(key, |_| Ok(None)).flatten();
        }
        let Some(arr) = self.t.get(key).and_then(Item::as_array) else {
            self.bad(key, &format!("expected a list of {what}"));
            return None;
        };
        if arr.is_empty() {
            self.bad(key, &format!("expected a non-empty list of {what}"));
            return None;
        }
        let mut out = Vec::new();
        let mut ok = true;
        for v in arr.iter() {
            let at = v.span().map_or(self.value_at(key), |s| s.start);
            match check(Got::of_value(v)) {
                Ok(x) => out.push((x, at)),
                Err(msg) => {
                    self.errs.at(at, format!("{key}: {msg}"));
                    ok = false;
                }
            }
        }
        ok.then_some(out)
    }
}
