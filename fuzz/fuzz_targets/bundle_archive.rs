//! The bundle reader (tar, gzip'd tar). Raw bytes: whatever it accepts
//! stays inside its documented limits, with names the bundle checks
//! accept, and a decompression bomb or a tar of endless headers is refused
//! within the allocation cap (4 MiB of files plus the reader's buffers).
//! Built archives (first byte `BUILT`): a tar (maybe gzip'd, maybe with
//! `./` names and directory entries) of files the fuzzer chose reads back
//! as exactly those files when the bundle's name rules accept them, and is
//! refused when they do not.
#![no_main]
use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use qkdpfd::policy::bundle::{self, Files, MAX_FILE_SIZE, MAX_FILES, MAX_TOTAL_SIZE};
use qkdpfd_fuzz::BUILT;
use std::collections::BTreeMap;

#[derive(Arbitrary, Debug)]
enum Part {
    Anchors,
    Open,
    Lockdown,
    Other(String),
}

#[derive(Arbitrary, Debug)]
struct Archive {
    files: Vec<(Vec<Part>, Vec<u8>)>,
    dot_slash: bool,
    dir_entries: bool,
    gzip: bool,
}

fn name(parts: &[Part]) -> String {
    let words: Vec<String> = parts
        .iter()
        .map(|p| match p {
            Part::Anchors => "anchors".to_string(),
            Part::Open => "open.nft".to_string(),
            Part::Lockdown => "lockdown.pf".to_string(),
            Part::Other(s) => s.clone(),
        })
        .collect();
    words.join("/")
}

fn tar_of(a: &Archive, map: &BTreeMap<String, Vec<u8>>) -> Option<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    let prefix = if a.dot_slash { "./" } else { "" };
    let mut dirs = std::collections::BTreeSet::new();
    for (n, body) in map {
        if let Some((dir, _)) = n.rsplit_once('/')
            && a.dir_entries
            && dirs.insert(dir.to_string())
        {
            let mut h = tar::Header::new_ustar();
            h.set_entry_type(tar::EntryType::Directory);
            h.set_size(0);
            h.set_mode(0o755);
            b.append_data(&mut h, format!("{prefix}{dir}/"), std::io::empty())
                .ok()?;
        }
        let mut h = tar::Header::new_ustar();
        h.set_size(body.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, format!("{prefix}{n}"), &body[..])
            .ok()?;
    }
    let t = b.into_inner().ok()?;
    if !a.gzip {
        return Some(t);
    }
    use std::io::Write;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&t).ok()?;
    gz.finish().ok()
}

fuzz_target!(
    init: qkdpfd_fuzz::set_cap(24 * qkdpfd_fuzz::MIB),
    |data: &[u8]| {
        if let Some((&BUILT, rest)) = data.split_first() {
            let Ok(a) = Archive::arbitrary(&mut Unstructured::new(rest)) else { return };
            // policy.toml at the top: one common top-level directory would
            // be stripped, as for `tar czf b.tgz bundle/`.
            let mut map = BTreeMap::from([("policy.toml".to_string(), b"serial = 1\n".to_vec())]);
            for (parts, body) in &a.files {
                let n = name(parts);
                // tar's own limits, names the tar crate rewrites as it writes
                // them (empty or `.` components), one name twice: not ours.
                let rewritten = n.split('/').any(|c| c.is_empty() || c == ".");
                if n.len() > 90 || n.contains('\0') || rewritten {
                    return;
                }
                if map.insert(n, body.clone()).is_some() {
                    return;
                }
            }
            // A name tar cannot write is not our question either.
            let Some(bytes) = tar_of(&a, &map) else { return };
            match Files::from_map(map) {
                Ok(want) => assert_eq!(bundle::read_bytes(&bytes), Ok(want)),
                Err(e) => {
                    if let Ok(got) = bundle::read_bytes(&bytes) {
                        let names: Vec<&str> = got.names().collect();
                        panic!("refused as files ({e}), read back from a tar: {names:?}");
                    }
                }
            }
            return;
        }
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
