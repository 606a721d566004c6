//! syslog(3) sink for the parent (on OpenBSD syslog(3) uses sendsyslog(2)).

use crate::log::Prio;
use std::ffi::CString;

fn facility(name: &str) -> libc::c_int {
    match name {
        "user" => libc::LOG_USER,
        "auth" => libc::LOG_AUTH,
        "authpriv" => libc::LOG_AUTHPRIV,
        "local0" => libc::LOG_LOCAL0,
        "local1" => libc::LOG_LOCAL1,
        "local2" => libc::LOG_LOCAL2,
        "local3" => libc::LOG_LOCAL3,
        "local4" => libc::LOG_LOCAL4,
        "local5" => libc::LOG_LOCAL5,
        "local6" => libc::LOG_LOCAL6,
        "local7" => libc::LOG_LOCAL7,
        _ => libc::LOG_DAEMON,
    }
}

/// Opens the log with ident "qkdpfd" and the configured facility.
pub fn open(fac: &str) {
    static IDENT: &[u8] = b"qkdpfd\0";
    unsafe {
        libc::openlog(
            IDENT.as_ptr().cast(),
            libc::LOG_PID | libc::LOG_NDELAY,
            facility(fac),
        )
    };
}

pub fn write(prio: Prio, line: &str) {
    let Ok(c) = CString::new(line.replace('\0', "\\x00")) else {
        return;
    };
    unsafe { libc::syslog(prio as libc::c_int, c"%s".as_ptr(), c.as_ptr()) };
}
