//! The bundle reader (tar, gzip'd tar): whatever it accepts stays inside
//! its documented limits, with names the bundle checks accept, and a
//! decompression bomb or a tar of endless headers is refused within the
//! allocation cap (4 MiB of files plus the reader's own buffers).
#![no_main]
use libfuzzer_sys::fuzz_target;
use qkdpfd::policy::bundle::{self, MAX_FILE_SIZE, MAX_FILES, MAX_TOTAL_SIZE};

fuzz_target!(
    init: qkdpfd_fuzz::set_cap(24 * qkdpfd_fuzz::MIB),
    |data: &[u8]| {
        let Ok(files) = bundle::read_bytes(data) else { return };
        assert!(files.len() <= MAX_FILES, "{} files accepted", files.len());
        let mut total = 0u64;
        for (name, body) in files.iter() {
            assert!(bundle::check_name(name).is_ok(), "name {name:?} accepted");
            assert!(body.len() as u64 <= MAX_FILE_SIZE, "{name}: {} bytes", body.len());
            total += body.len() as u64;
        }
        assert!(total <= MAX_TOTAL_SIZE, "{total} bytes in all accepted");
    }
);
