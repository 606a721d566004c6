//! What every fuzz target shares: a counting global allocator that aborts
//! above the target's cap (libFuzzer's `-malloc_limit_mb` needs a sanitizer
//! runtime to see Rust's allocations; this needs none), the fixed keys the
//! structure-aware targets sign with, and small encoders for the replies
//! the daemon only ever parses (netlink, UAPI).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

pub mod keys;
pub mod wire;

/// Bytes live on the Rust heap now, and the most a target allows.
static LIVE: AtomicUsize = AtomicUsize::new(0);
static CAP: AtomicUsize = AtomicUsize::new(usize::MAX);
static PEAK: AtomicUsize = AtomicUsize::new(0);

/// The counting allocator: `System`, plus a running total that aborts the
/// process (a crash to libFuzzer, with the input saved) when it passes
/// [`set_cap`]. Live bytes, not a per-call limit: a parser that keeps
/// growing many small buffers is caught as surely as one huge call.
pub struct Capped;

fn over_cap(live: usize) -> ! {
    // No formatting here: formatting allocates, and we are inside the
    // allocator. The number is written by hand into a stack buffer.
    let mut msg = *b"\n==qkdpfd-fuzz== over the target's allocation cap: 00000000000000000000 bytes live; aborting\n";
    let mut at = 70;
    let mut n = live;
    loop {
        msg[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 || at == 51 {
            break;
        }
        at -= 1;
    }
    unsafe { libc_write(2, msg.as_ptr(), msg.len()) };
    std::process::abort()
}

unsafe extern "C" {
    #[link_name = "write"]
    fn libc_write(fd: i32, buf: *const u8, n: usize) -> isize;
}

fn grow(n: usize) {
    let now = LIVE.fetch_add(n, Ordering::Relaxed) + n;
    PEAK.fetch_max(now, Ordering::Relaxed);
    if now > CAP.load(Ordering::Relaxed) {
        over_cap(now);
    }
}

fn shrink(n: usize) {
    LIVE.fetch_sub(n, Ordering::Relaxed);
}

unsafe impl GlobalAlloc for Capped {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        grow(l.size());
        let p = unsafe { System.alloc(l) };
        if p.is_null() {
            shrink(l.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        grow(l.size());
        let p = unsafe { System.alloc_zeroed(l) };
        if p.is_null() {
            shrink(l.size());
        }
        p
    }

    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        shrink(l.size());
        unsafe { System.dealloc(p, l) }
    }

    /// Counted as a new block beside the old one (a moving realloc holds
    /// both), then the old one given back.
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        grow(new);
        let q = unsafe { System.realloc(p, l, new) };
        shrink(if q.is_null() { new } else { l.size() });
        q
    }
}

#[global_allocator]
static ALLOC: Capped = Capped;

/// The most the target may hold on the heap at once, in bytes: the
/// parser's documented limits plus what the target itself keeps. Set once,
/// in the target's `init`.
/// A failed assertion lifts the cap: printing its backtrace takes tens of
/// MiB, and the report must be the assertion, not the allocator.
pub fn set_cap(bytes: usize) {
    CAP.store(LIVE.load(Ordering::Relaxed) + bytes, Ordering::Relaxed);
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        CAP.store(usize::MAX, Ordering::Relaxed);
        report(info)
    }));
}

/// The most bytes live at once so far, and now (for finding a cap).
pub fn heap() -> (usize, usize) {
    (PEAK.load(Ordering::Relaxed), LIVE.load(Ordering::Relaxed))
}

pub const MIB: usize = 1 << 20;

/// Text that may go into a log line or an error a person reads: printable
/// ASCII only (the daemon escapes everything else as `\xNN`).
pub fn assert_printable(what: &str, s: &str) {
    assert!(
        s.bytes().all(|b| (0x20..0x7f).contains(&b)),
        "{what}: not printable: {s:?}"
    );
}

/// A parsed QBER, after the drivers' range check (any scale > 0), is a
/// number in [0, 0.5]: never NaN or infinite.
pub fn check_qber(raw: f64) {
    for scale in [1.0, 0.01] {
        if let Ok(q) = qkdpfd::engine::qber::validate(raw * scale) {
            assert!(
                q.is_finite() && (0.0..=0.5).contains(&q),
                "QBER {q} accepted"
            );
        }
    }
}

/// A driver's error goes into one log line with the source's URL: bounded.
pub fn check_error(driver: &str, e: &str) {
    assert!(e.len() <= 1024, "{driver}: error of {} bytes", e.len());
}

/// A reading the fuzzer chose, for the QBER targets' built answers: any
/// finite value (printed the shortest exact way) and, maybe, its sequence
/// in Unix milliseconds before year 10000.
#[derive(Debug)]
pub struct Reading {
    pub value: f64,
    pub seq: Option<u64>,
    /// Unrelated entries, lines or fields around the reading.
    pub noise: Vec<u8>,
}

impl<'a> arbitrary::Arbitrary<'a> for Reading {
    fn arbitrary(u: &mut arbitrary::Unstructured<'a>) -> arbitrary::Result<Reading> {
        let value = f64::arbitrary(u)?;
        let value = if value.is_finite() { value } else { 0.03 };
        let seq = Option::<u64>::arbitrary(u)?.map(|s| s % 253_402_300_800_000);
        Ok(Reading {
            value,
            seq,
            noise: Vec::arbitrary(u)?,
        })
    }
}

/// Built answers start with this byte; anything else is raw bytes (and the
/// seeds, which start with text, stay raw).
pub const BUILT: u8 = 0xb1;

/// Near-valid imsg frames: after `BUILT`, a type code (2 bytes) and the
/// body; the header (length, version) is made right here, so the fuzzer's
/// work goes into the JSON bodies rather than into matching a length.
pub fn framed(data: &[u8]) -> Option<Vec<u8>> {
    let (&BUILT, rest) = data.split_first()? else {
        return None;
    };
    let (code, body) = (rest.get(..2)?, &rest[2..]);
    let mut f = (body.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(&[qkdpfd::imsg::VERSION, 0, code[0], code[1]]);
    f.extend_from_slice(body);
    Some(f)
}

/// An imsg message's round trip: `m`, decoded from a frame of type `code`,
/// encodes to a frame whose header says its length and that type, and
/// whose body decodes to `m` again. A message over the channel's limit
/// encodes to nothing (it is never sent): nothing to check then.
pub fn assert_reencodes<M: PartialEq + std::fmt::Debug, E: std::fmt::Debug>(
    code: u16,
    m: &M,
    encode: impl Fn(&M) -> Vec<u8>,
    decode: impl Fn(u16, &[u8]) -> Result<M, E>,
) {
    use qkdpfd::imsg::{HEADER_LEN, parse_header};
    let frame = encode(m);
    if frame.is_empty() {
        return;
    }
    let h: &[u8; HEADER_LEN] = frame[..HEADER_LEN].try_into().expect("a header");
    let (len, code2) = parse_header(h).expect("our own header parses");
    assert_eq!((len, code2), (frame.len() - HEADER_LEN, code));
    let back = decode(code, &frame[HEADER_LEN..]).expect("our own frame decodes");
    assert_eq!(&back, m);
}

/// What a verified bundle must be, whoever signed it: its digest is the
/// signed list's, every file but the signature files it was verified with
/// is listed with its SHA-256, every listed file is there, and its policy
/// is what `policy.toml` says.
pub fn assert_verified(
    files: &qkdpfd::policy::bundle::Files,
    list_bytes: &[u8],
    b: &qkdpfd::policy::verify::Bundle,
) {
    use qkdpfd::policy::signify::{self, LIST_FILE, MINISIG_FILE, SIG_FILE};
    use sha2::{Digest, Sha256};
    assert_eq!(b.digest, <[u8; 32]>::from(Sha256::digest(list_bytes)));
    let list = signify::parse_list(list_bytes).expect("a verified list parses");
    let sig_files = match files.contains(SIG_FILE) {
        true => [SIG_FILE, LIST_FILE],
        false => [LIST_FILE, MINISIG_FILE],
    };
    for (name, body) in files.iter() {
        if sig_files.contains(&name) {
            continue;
        }
        let want = list
            .get(name)
            .unwrap_or_else(|| panic!("{name} verified unlisted"));
        assert_eq!(&<[u8; 32]>::from(Sha256::digest(body)), want, "{name}");
    }
    for name in list.keys() {
        assert!(files.contains(name), "{name} listed, absent, verified");
    }
    let text = std::str::from_utf8(files.get("policy.toml").expect("listed")).unwrap();
    let policy = qkdpfd::policy::document::parse(text).expect("a verified policy parses");
    assert_eq!(policy.0, b.policy);
}
