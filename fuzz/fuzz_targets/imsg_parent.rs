//! The parent's side of the socketpair: frames from a hostile (compromised)
//! engine. Every frame is read with the parent's own reader (the async
//! read_frame of its reader task) and decoded as the parent decodes it. A frame never exceeds its limit, and what decodes
//! encodes to a frame that decodes to the same message.
#![no_main]
use libfuzzer_sys::fuzz_target;
use qkdpfd::imsg::{MAX_PAYLOAD, ToParent, read_frame};

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
                    qkdpfd_fuzz::assert_reencodes(code, &m, ToParent::encode, ToParent::decode);
                }
            })
        })
    }
);
