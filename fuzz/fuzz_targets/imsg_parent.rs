//! The parent's side of the socketpair: frames from a hostile (compromised)
//! engine. Every frame is read with the parent's own reader (the async
//! read_frame of its reader task) and decoded as the parent decodes it. A frame never exceeds its limit, and what decodes
//! encodes to a frame that decodes to the same message.
#![no_main]
use libfuzzer_sys::fuzz_target;
use qkdpfd::imsg::{HEADER_LEN, MAX_PAYLOAD, ToParent, parse_header, read_frame};

thread_local! {
    static RT: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
}

fuzz_target!(
    // One frame's payload (8 MiB) read in, its JSON, and its re-encoding.
    init: qkdpfd_fuzz::set_cap(64 * qkdpfd_fuzz::MIB),
    |data: &[u8]| {
        // The parent's reader task (imsg::spawn_reader) reads with the
        // async read_frame.
        let framed = qkdpfd_fuzz::framed(data);
        let data = framed.as_deref().unwrap_or(data);
        RT.with(|rt| {
            rt.block_on(async {
                let mut r = data;
                while let Ok(Some((code, payload))) = read_frame(&mut r).await {
                    assert!(payload.len() <= MAX_PAYLOAD);
                    let Ok(m) = ToParent::decode(code, &payload) else { break };
                    let frame = m.encode();
                    if frame.is_empty() {
                        continue; // over the channel's limit re-encoded: never sent
                    }
                    let h: &[u8; HEADER_LEN] = frame[..HEADER_LEN].try_into().expect("a header");
                    let (len, code2) = parse_header(h).expect("our own header parses");
                    assert_eq!((len, code2), (frame.len() - HEADER_LEN, code));
                    let back = ToParent::decode(code, &frame[HEADER_LEN..]).expect("our frame decodes");
                    assert_eq!(back, m);
                }
            })
        })
    }
);
