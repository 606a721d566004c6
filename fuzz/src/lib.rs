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

fn over_cap() -> ! {
    // No formatting here: formatting allocates, and we are inside the
    // allocator.
    let msg = b"\n==qkdpfd-fuzz== allocation over the target's cap: aborting\n";
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
        over_cap();
    }
}

unsafe impl GlobalAlloc for Capped {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        grow(l.size());
        unsafe { System.alloc(l) }
    }

    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        grow(l.size());
        unsafe { System.alloc_zeroed(l) }
    }

    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        unsafe { System.dealloc(p, l) }
    }

    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        if new > l.size() {
            grow(new - l.size());
        } else {
            LIVE.fetch_sub(l.size() - new, Ordering::Relaxed);
        }
        unsafe { System.realloc(p, l, new) }
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
