use super::*;
use crate::lock::LockReason;

#[test]
fn round_trip_every_type() {
    let to_parent = [
        ToParent::Hello(Hello {
            version: VERSION,
            pid: 7,
        }),
        ToParent::Reasons(LinkReasons {
            link: "dr".into(),
            reasons: [LockReason::Qber].into_iter().collect(),
            qber: Some(0.25),
            threshold: Some(0.08),
            by_operator: false,
            sampled_ns: Some(1),
        }),
        ToParent::Log(LogRecord {
            prio: 6,
            line: "event=x".into(),
        }),
        ToParent::CtlRequest(CtlRequest {
            id: 3,
            uid: 0,
            command: ParentCommand::Unlock,
        }),
        ToParent::Alive,
        ToParent::PolicyTaken(PolicyTaken { serial: 9 }),
    ];
    for m in to_parent {
        let f = m.encode();
        // Written once into a buffer of its exact size: no copy of a key's
        // text left behind by a growing buffer.
        assert_eq!(f.capacity(), f.len());
        let (code, payload) = read_frame_blocking(&mut &f[..]).unwrap().unwrap();
        assert_eq!(ToParent::decode(code, &payload).unwrap(), m);
        assert!(
            ToEngine::decode(code, &payload).is_err(),
            "direction is checked"
        );
    }
    let m = ToEngine::Policy(None);
    let f = m.encode();
    let (code, payload) = read_frame_blocking(&mut &f[..]).unwrap().unwrap();
    assert_eq!(ToEngine::decode(code, &payload).unwrap(), m);
}

#[test]
fn debug_hides_tls_key() {
    let n = QberNet {
        ca: Some(b"CA".to_vec()),
        cert: None,
        key: Some(zeroize::Zeroizing::new(
            b"-----BEGIN PRIVATE KEY----- SECRETBYTES".to_vec(),
        )),
        addr: None,
    };
    let d = format!("{n:?}");
    assert!(
        d.contains("<SECRET>") && !d.contains("SECRETBYTES") && !d.contains("83"),
        "{d}"
    );
}

#[test]
fn a_ctl_request_names_a_parent_command_and_carries_no_request() {
    let r = ToParent::decode(103, br#"{"id":1,"uid":0,"command":"policy-load"}"#).unwrap();
    assert_eq!(
        r,
        ToParent::CtlRequest(CtlRequest {
            id: 1,
            uid: 0,
            command: ParentCommand::PolicyLoad
        })
    );
    // The version-1 shape (the engine's own request) is a malformed frame.
    let old = br#"{"id":1,"uid":0,"request":{"unlock":{"target":"all","force":true}}}"#;
    assert!(matches!(
        ToParent::decode(103, old),
        Err(Error::Body(Type::CtlRequest, _))
    ));
    let both = br#"{"id":1,"uid":0,"command":"unlock","request":"reload"}"#;
    assert!(ToParent::decode(103, both).is_err());
    // Only the parent's commands: what the engine runs is no command.
    for c in ["status", "rotate", "monitor", "sim-eve", "reboot"] {
        let m = format!(r#"{{"id":1,"uid":0,"command":"{c}"}}"#);
        assert!(ToParent::decode(103, m.as_bytes()).is_err(), "{c}");
    }
}

#[test]
fn a_parent_request_and_its_command_agree() {
    let all = [
        Request::Lockdown {
            target: Target::All,
        },
        Request::Unlock {
            target: Target::Link("dr".into()),
            force: true,
        },
        Request::Reload,
        Request::PolicyLoad {
            bundle_b64: "AA==".into(),
        },
        Request::Log { verbose: true },
    ];
    for r in all {
        let c = ParentCommand::of(&r).unwrap();
        assert_eq!(c.name(), r.name());
        assert!(!r.read_only());
        assert_eq!(ParentRequest::from_request(r).unwrap().command(), c);
    }
    for r in [
        Request::Status,
        Request::Monitor,
        Request::Rotate {
            target: Target::All,
        },
        Request::SimNoise {
            link: "dr".into(),
            qber: 0.1,
        },
    ] {
        assert_eq!(ParentCommand::of(&r), None);
        assert_eq!(ParentRequest::from_request(r), None);
    }
}

#[test]
fn refuses_bad_frames() {
    let good = ToParent::Hello(Hello {
        version: VERSION,
        pid: 1,
    })
    .encode();
    // The next version and the last (whose CtlRequest carried the request).
    for other in [VERSION + 1, VERSION - 1] {
        let mut v = good.clone();
        v[4] = other;
        assert!(matches!(
            read_frame_blocking(&mut &v[..]),
            Err(Error::Version(n)) if n == other
        ));
    }
    let mut v = good.clone();
    v[0..4].copy_from_slice(&(MAX_PAYLOAD as u32 + 1).to_be_bytes());
    assert!(matches!(
        read_frame_blocking(&mut &v[..]),
        Err(Error::TooLarge(_))
    ));
    assert!(matches!(
        ToParent::decode(0, b"{}"),
        Err(Error::UnknownType(0))
    ));
    assert!(matches!(
        ToParent::decode(999, b"{}"),
        Err(Error::UnknownType(999))
    ));
    // Unknown field: refused.
    let r = ToParent::decode(100, br#"{"version":1,"pid":1,"extra":2}"#);
    assert!(matches!(r, Err(Error::Body(Type::Hello, _))));
    // Truncated frame is an error, not a silent EOF.
    assert!(read_frame_blocking(&mut &good[..good.len() - 1]).is_err());
    assert!(read_frame_blocking(&mut &good[..0]).unwrap().is_none());
}

/// A peer that stops reading: frames queue up to the bound, then the
/// channel refuses them and says so for good; written ones free their room.
#[tokio::test]
async fn a_channel_to_a_peer_that_stopped_reading_is_bounded() {
    let (ours, mut theirs) = tokio::io::duplex(64);
    let tx = super::spawn_writer_bounded(ours, || {}, 1000);
    for _ in 0..9 {
        tx.send(vec![7; 100]).unwrap();
    }
    assert!(!tx.overflowed());
    // 64 bytes fit the pipe; the rest waits, counted.
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert!(tx.queued() > 800, "{}", tx.queued());
    let mut sent = 0;
    while tx.send(vec![7; 100]).is_ok() {
        sent += 1;
        assert!(sent < 10, "never refused");
    }
    assert!(tx.overflowed());
    assert!(tx.queued() <= 1000, "{}", tx.queued());
    // Read out: the queue drains, the mark stays.
    let mut buf = vec![0u8; 4096];
    let mut got = 0;
    while got < 900 + sent * 100 {
        got += tokio::io::AsyncReadExt::read(&mut theirs, &mut buf)
            .await
            .unwrap();
    }
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    assert_eq!(tx.queued(), 0);
    assert!(tx.overflowed());
}
