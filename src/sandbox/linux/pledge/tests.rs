use super::*;

#[test]
fn promise_words_parse_like_sys_pledge() {
    assert_eq!(parse("stdio").unwrap(), STDIO);
    assert_eq!(parse("stdio  rpath unix").unwrap(), STDIO | RPATH | UNIX);
    assert_eq!(parse("").unwrap(), 0);
    assert!(parse("stdio network").unwrap_err().contains("network"));
    assert_eq!(parse("fattr").unwrap(), FATTR | CHOWN);
}

#[test]
fn stdio_alone_allows_only_the_common_socket_options() {
    let m = rules(STDIO);
    // Present with rules: SO_RCVBUF, SO_ERROR, TCP_NODELAY, IP_TOS and
    // IPV6_TCLASS only.
    assert_eq!(m[&(libc::SYS_setsockopt as i64)].len(), 5);
    assert!(!m.contains_key(&(libc::SYS_connect as i64)));
    assert!(!m.contains_key(&(libc::SYS_execve as i64)));
    assert!(m[&(libc::SYS_read as i64)].is_empty());
    // A network promise opens SOL_SOCKET as a whole.
    assert!(rules(STDIO | UNIX)[&(libc::SYS_setsockopt as i64)].len() > 5);
    assert!(rules(STDIO | INET).contains_key(&(libc::SYS_connect as i64)));
}

#[test]
fn no_promise_leaves_only_the_always_calls() {
    let m = rules(0);
    assert!(m.contains_key(&(libc::SYS_exit_group as i64)));
    assert!(!m.contains_key(&(libc::SYS_write as i64)));
    assert!(compile(0).is_ok());
    assert!(compile(parse("stdio inet recvfd sendfd").unwrap()).is_ok());
}

#[test]
fn open_needs_the_path_promises_its_flags_ask_for() {
    assert!(open_rules(STDIO, 2).is_empty());
    assert_eq!(open_rules(STDIO | RPATH, 2).len(), 1);
    assert_eq!(open_rules(STDIO | RPATH | WPATH, 2).len(), 3);
    assert_eq!(open_rules(STDIO | RPATH | WPATH | CPATH, 2).len(), 6);
}
