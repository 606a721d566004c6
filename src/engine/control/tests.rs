//! Tests of the control socket server: connection slots per class, how
//! much of a request the engine reads (a whole line, a bundle past the
//! peek window, what it leaves for the parent), and access levels.

use super::*;

#[test]
fn root_keeps_its_slots_whatever_members_do() {
    let mut s = Slots::default();
    for _ in 0..MAX_PER_UID {
        assert!(s.take(65534).is_some());
    }
    assert!(s.take(65534).is_none(), "per-uid cap");
    let mut uid = 1000;
    while s.take(uid).is_some() {
        uid += 1;
    }
    assert_eq!(s.others, MAX_OTHERS);
    for _ in 0..MAX_ROOT {
        assert!(s.take(0).is_some(), "root crowded out");
    }
    assert!(s.take(0).is_none());
    s.give(65534);
    assert!(s.take(65534).is_some());
    s.give(0);
    assert!(s.take(0).is_some());
}

#[test]
fn a_whole_line_is_judged_by_its_newline() {
    assert_eq!(judge(b"\"status\"\n", 64), Peeked::Line(9));
    assert_eq!(judge(b"\"status\"\nmore", 64), Peeked::Line(9));
    assert_eq!(judge(b"\"stat", 64), Peeked::More);
    assert_eq!(judge(b"", 64), Peeked::More);
    // A small bundle is a whole line like any other.
    let line = b"{\"policy-load\":{\"bundle_b64\":\"AA==\"}}\n";
    assert_eq!(judge(line, 64), Peeked::Line(line.len()));
}

#[test]
fn only_a_bundle_may_be_longer_than_the_window() {
    let mut bundle = b" \n"[..1].to_vec();
    bundle.extend_from_slice(b"{\"policy-load\":{\"bundle_b64\":\"");
    bundle.extend(std::iter::repeat_n(b'A', 200));
    assert_eq!(judge(&bundle, 64), Peeked::PolicyLoad);
    // Known from its start, before the window is full.
    assert_eq!(judge(&bundle[..20], 64), Peeked::PolicyLoad);
    // Not yet known: wait.
    assert_eq!(judge(b"{\"policy-lo", 64), Peeked::More);
    let mut other = b"{\"unlock\":{\"target\":{\"link\":\"".to_vec();
    other.extend(std::iter::repeat_n(b'a', 100));
    assert_eq!(judge(&other[..63], 64), Peeked::More);
    assert_eq!(judge(&other, 64), Peeked::TooLong);
    // A bundle's prefix in a field is no bundle.
    let mut nested = b"{\"unlock\":{\"policy-load\":".to_vec();
    nested.extend(std::iter::repeat_n(b'a', 100));
    assert_eq!(judge(&nested, 64), Peeked::TooLong);
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A client that wrote `sent` (in `pieces` written 50 ms apart, then
/// closed when `close`); what the engine made of it as root, and the
/// bytes left on the connection for whoever reads next.
fn as_root(pieces: &[&[u8]], close: bool, window: usize) -> (Got, Vec<u8>) {
    use std::io::Write;
    rt().block_on(async {
        let (client, server) = std::os::unix::net::UnixStream::pair().unwrap();
        server.set_nonblocking(true).unwrap();
        let server = UnixStream::from_std(server).unwrap();
        let left = AsFd::as_fd(&server).try_clone_to_owned().unwrap();
        let (mut rd, _wr) = server.into_split();
        let pieces: Vec<Vec<u8>> = pieces.iter().map(|p| p.to_vec()).collect();
        let writer = std::thread::spawn(move || {
            let mut client = client;
            for p in pieces {
                client.write_all(&p).unwrap();
                std::thread::sleep(Duration::from_millis(50));
            }
            if !close {
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        let got = tokio::time::timeout(Duration::from_secs(5), root_request(&mut rd, window))
            .await
            .expect("decided in time")
            .unwrap();
        writer.join().unwrap();
        // What the parent would read now.
        let mut rest = vec![0u8; 1 << 16];
        let n = nix::sys::socket::recv(
            left.as_raw_fd(),
            &mut rest,
            nix::sys::socket::MsgFlags::MSG_DONTWAIT,
        )
        .unwrap_or(0);
        rest.truncate(n);
        (got, rest)
    })
}

#[test]
fn a_request_the_engine_runs_is_read_and_nothing_after_it() {
    let (got, left) = as_root(&[b"\"status\"\n", b"\"reload\"\n"], true, 64);
    assert_eq!(got, Ok(Some(Asked::Line(Request::Status))));
    assert_eq!(left, b"\"reload\"\n");
    let (got, left) = as_root(&[b"{\"show-li", b"nk\":{\"link\":\"dr\"}}\n"], false, 64);
    assert_eq!(
        got,
        Ok(Some(Asked::Line(Request::ShowLink { link: "dr".into() })))
    );
    assert!(left.is_empty());
}

#[test]
fn a_request_the_parent_runs_is_left_for_the_parent() {
    let line: &[u8] = b"{\"unlock\":{\"target\":\"all\",\"force\":true}}\n";
    let (got, left) = as_root(&[&line[..5], &line[5..]], false, 64);
    let want = Request::Unlock {
        target: crate::proto::ctl::Target::All,
        force: true,
    };
    assert_eq!(got, Ok(Some(Asked::Line(want))));
    assert_eq!(left, line, "unread");
    // A bundle longer than the window: known by its start, all left.
    let mut bundle = b"{\"policy-load\":{\"bundle_b64\":\"".to_vec();
    bundle.extend(std::iter::repeat_n(b'A', 300));
    bundle.extend_from_slice(b"\"}}\n");
    let (got, left) = as_root(&[&bundle[..3], &bundle[3..]], false, 64);
    assert_eq!(got, Ok(Some(Asked::PolicyLoad)));
    assert_eq!(left, bundle);
}

#[test]
fn a_root_request_too_long_bad_or_unfinished_is_refused() {
    let long = [b'x'; 100];
    let (got, _) = as_root(&[&long], false, 64);
    assert!(
        matches!(got, Err(Reply::Error { code: ErrorCode::BadRequest, ref message }) if message == "request too long"),
        "{got:?}"
    );
    let (got, _) = as_root(&[b"reboot\n"], true, 64);
    assert!(
        matches!(
            got,
            Err(Reply::Error {
                code: ErrorCode::BadRequest,
                ..
            })
        ),
        "{got:?}"
    );
    let (got, _) = as_root(&[b"\"stat"], true, 64);
    assert!(
        matches!(got, Err(Reply::Error { ref message, .. }) if message == "incomplete request"),
        "{got:?}"
    );
    let (got, _) = as_root(&[], true, 64);
    assert_eq!(got, Ok(None), "left without a byte");
}

#[test]
fn access_levels() {
    let a = Access {
        readonly_uids: vec![1000],
        readonly_gid: Some(50),
    };
    assert_eq!(a.level(0, 0), Level::Root);
    assert_eq!(a.level(1000, 1000), Level::ReadOnly);
    assert_eq!(a.level(1001, 50), Level::ReadOnly);
    assert_eq!(a.level(1001, 1001), Level::None);
}

/// Members together take at most MAX_MONITORS - ROOT_MONITORS streams;
/// root's `monitor` still gets in after them.
#[test]
fn members_cannot_take_roots_monitor_streams() {
    let line = format!("{}\n", serde_json::to_string(&Request::Monitor).unwrap());
    rt().block_on(async {
        let access = Access {
            readonly_uids: (1000..1100).collect(),
            readonly_gid: None,
        };
        let (calls, _rx) = mpsc::channel(4);
        let (events, _keep) = broadcast::channel(16);
        let limiter: Shared<log::PerMinute<u32, String>> = Default::default();
        let slots: Shared<Slots> = Default::default();
        // Opens a monitor as `uid`; its first answer, if one comes at once.
        let open = |uid: u32| {
            let (client, server) = UnixStream::pair().unwrap();
            let srv = connection(
                server,
                (uid, uid),
                access.clone(),
                calls.clone(),
                events.clone(),
                limiter.clone(),
                slots.clone(),
            );
            let line = line.clone();
            async move {
                let task = tokio::spawn(srv);
                let (rd, mut wr) = client.into_split();
                wr.write_all(line.as_bytes()).await.unwrap();
                let mut got = String::new();
                let mut rd = BufReader::new(rd);
                let read = rd.read_line(&mut got);
                let _ = tokio::time::timeout(Duration::from_millis(200), read).await;
                (got, task, wr, rd)
            }
        };
        let mut kept = Vec::new();
        for i in 0..(MAX_MONITORS - ROOT_MONITORS) as u32 {
            let (got, task, wr, rd) = open(1000 + i).await;
            assert!(got.is_empty(), "member {i} refused: {got}");
            kept.push((task, wr, rd));
        }
        let (got, ..) = open(1099).await;
        assert!(got.contains("too many monitor streams"), "{got}");
        let (got, task, wr, rd) = open(0).await;
        assert!(got.is_empty(), "root refused: {got}");
        kept.push((task, wr, rd));
    });
}
