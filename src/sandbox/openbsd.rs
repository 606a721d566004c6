//! OpenBSD sandbox: pledge(2) for the engine, unveil(2) for the parent.
//!
//! The engine pledges `stdio inet sendfd` after chroot and the
//! privilege drop, as ntpd's engine pledges `stdio inet`: sockets it holds
//! (control socket, fd 3, metrics, peering: inherited across exec), new
//! TCP connections to the KME and QBER sources, and `sendfd` for passing
//! ctl clients to the parent; no files, no exec, nothing received.
//!
//! The parent is unveiled, NOT pledged: `SIOCSWG`, the ioctl that sets a
//! WireGuard peer's PSK, is allowed under no pledge promise (kern_pledge.c),
//! and the parent must set PSKs. relayd's parent is likewise only unveiled.
//!
//! Every OpenBSD fact relied on here is listed, with the source revision
//! it was checked against, in `src/OPENBSD-FACTS.md`.

use super::{ENGINE_PROMISES, EngineLimits, ParentPaths, Report, dir_of};
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

pub fn engine(_limits: &EngineLimits) -> Result<Report, String> {
    // pledge has no per-port rule: the ports are the Linux landlock's.
    pledge(ENGINE_PROMISES)?;
    let mut report = Report::new("engine");
    report.kv("pledge", ENGINE_PROMISES);
    #[cfg(feature = "sandbox-probe")]
    {
        report.probe = Some(probe());
    }
    Ok(report)
}

pub fn parent(paths: &ParentPaths) -> Result<Report, String> {
    let mut n = 0;
    for f in &paths.read {
        n += unveil(f, "r")?;
    }
    for d in paths.rwc.iter().chain(&paths.incoming) {
        n += unveil(d, "rwc")?;
    }
    for t in &paths.exec {
        n += unveil(t, "x")?;
    }
    // The control socket's directory (unlinked at exit). Not /dev/pf:
    // pfctl opens it, and an exec without execpromises drops the unveil
    // list (kern_exec.c), so pfctl never sees ours.
    n += unveil(&dir_of(&paths.socket), "rwc")?;
    // wireguard-go's UAPI sockets: unp_connect asks the unveil list for
    // write (the default control socket's /var/run hid that need).
    for d in &paths.connect {
        n += unveil(d, "rw")?;
    }
    // getpwnam/getgrnam again on reload (the engine's user, socket_group).
    n += unveil(Path::new("/etc/pwd.db"), "r")?;
    n += unveil(Path::new("/etc/group"), "r")?;
    // SAFETY: two nulls lock the list.
    if unsafe { libc::unveil(std::ptr::null(), std::ptr::null()) } != 0 {
        return Err(format!("unveil lock: {}", std::io::Error::last_os_error()));
    }
    let mut report = Report::new("parent");
    report.kv("unveil", n);
    report.kv("pledge", "none-SIOCSWG-is-in-no-promise");
    Ok(report)
}

pub fn pledge(promises: &str) -> Result<(), String> {
    let c = CString::new(promises).map_err(|_| "pledge: NUL in promises".to_string())?;
    // SAFETY: a valid C string and a null execpromises (left unchanged).
    if unsafe { libc::pledge(c.as_ptr(), std::ptr::null()) } != 0 {
        return Err(format!(
            "pledge {promises:?}: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// One unveil(2); a missing path is allowed (unveil accepts it when the
/// directory exists) but counts only when the call succeeds.
fn unveil(path: &Path, perms: &str) -> Result<usize, String> {
    let p = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| format!("{}: NUL in path", path.display()))?;
    let m = CString::new(perms).map_err(|e| e.to_string())?;
    // SAFETY: valid C strings.
    if unsafe { libc::unveil(p.as_ptr(), m.as_ptr()) } == 0 {
        return Ok(1);
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        // Nothing there to keep (a component is missing): skip it.
        Some(libc::ENOENT) => Ok(0),
        _ => Err(format!("unveil {} {perms}: {e}", path.display())),
    }
}

/// `sandbox-probe` builds only: pledge kills on a violation, so the probe
/// cannot try; it reports the promises instead of errnos.
#[cfg(feature = "sandbox-probe")]
fn probe() -> String {
    format!("pledged={}", ENGINE_PROMISES.replace(' ', ","))
}
