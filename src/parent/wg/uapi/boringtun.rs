//! boringtun's reading of the configuration protocol, which differs from
//! wireguard-go's where it matters to us (boringtun 0.6 and 0.7.1, its
//! `device/api.rs` and `device/mod.rs`, and boringtun-cli 0.7.1 run here):
//!
//! - a get lists the interface's `own_public_key=`, never `private_key=`;
//! - a set refuses a key it does not know, `update_only` among them
//!   (`errno=22`, nothing of that peer changed);
//! - a set that names an existing peer without `remove=true` panics the
//!   thread that answers the socket, which then answers nothing again: a
//!   peer can only be removed and added back, never changed in place;
//! - in one set, what a peer block set holds for the blocks after it, so
//!   a block that adds a peer after a removal says `remove=false`
//!   (wireguard-go refuses that line: only boringtun gets it);
//! - `last_handshake_time_sec`/`_nsec` are the time since the current
//!   session's handshake, not a time since the epoch, and are left out
//!   when the peer has no session. A responder stamps that time when an
//!   initiation arrives, before the initiator has confirmed the session,
//!   and on its monotonic clock, which the wall clock here may have
//!   stepped away from. Neither lets traffic resume on a session from
//!   before an incident: a link opens on a new session only once the
//!   master has re-created its peer (`parent/session.rs`), which then
//!   holds no earlier session to accept such traffic with; at worst a
//!   boringtun slave opens before the new session carries anything.
//!
//! Which of the two answers is known from each get reply, before every
//! write ([`Server::of`]): no state, and a daemon swapped under a running
//! qkdpfd is read as what it is.

use std::time::{Duration, SystemTime};

use super::super::WgError;

/// Which implementation answers a socket, as far as a get reply tells.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Server {
    /// wireguard-go and what follows its protocol to the letter: a peer's
    /// PSK is changed in place, under `update_only`.
    WireguardGo,
    /// boringtun: a peer is removed and added back to change it.
    Boringtun,
}

impl Server {
    /// boringtun when the interface's lines (those before the first peer)
    /// name `own_public_key`.
    ///
    /// Byte by byte: a text copy of a reply that is not UTF-8 would be a
    /// copy of its keys that nothing zeroizes.
    pub fn of(reply: &[u8]) -> Server {
        for line in reply.split(|&b| b == b'\n') {
            if line.starts_with(b"public_key=") {
                break;
            }
            if line.starts_with(b"own_public_key=") {
                return Server::Boringtun;
            }
        }
        Server::WireguardGo
    }
}

/// The interface's public key as boringtun lists it: `None` when the
/// interface lines have no `own_public_key` (boringtun leaves it out while
/// the interface has no private key) or it is all zero. Errors quote no
/// line.
pub fn own_public_key(reply: &[u8]) -> Result<Option<[u8; 32]>, WgError> {
    Ok(super::interface_key(reply, "own_public_key")?.map(|k| *k))
}

/// The wall-clock time of a handshake boringtun lists as `sec`/`nsec` ago;
/// None when it lists none (no session). `now` is read before the request,
/// so no later than boringtun's own reading, and boringtun stamps a
/// session with the time of its last timer turn (every 250 ms) before the
/// handshake: the time found is never later than the real one (while the
/// wall clock is not stepped), and a session is never taken for newer than
/// it is.
pub fn handshake_from_elapsed(
    sec: i64,
    nsec: i64,
    now: SystemTime,
) -> Result<Option<SystemTime>, WgError> {
    if sec == 0 && nsec == 0 {
        return Ok(None);
    }
    if sec < 0 || !(0..1_000_000_000).contains(&nsec) {
        return Err(WgError::Protocol("bad last handshake time".into()));
    }
    now.checked_sub(Duration::new(sec as u64, nsec as u32))
        .filter(|t| *t > SystemTime::UNIX_EPOCH)
        .map(Some)
        .ok_or_else(|| WgError::Protocol("bad last handshake time".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A get reply as boringtun-cli 0.7.1 printed it here (keys made up).
    fn reply(own: &str) -> String {
        format!(
            "{own}listen_port=51999\npublic_key={}\npreshared_key={}\nendpoint=127.0.0.1:51998\n\
             allowed_ip=10.99.0.2/32\nlast_handshake_time_sec=3\nlast_handshake_time_nsec=5\n\
             rx_bytes=0\ntx_bytes=0\nerrno=0\n\n",
            "91".repeat(32),
            "07".repeat(32)
        )
    }

    #[test]
    fn the_interface_lines_tell_the_server() {
        let own = format!("own_public_key={}\n", "0e".repeat(32));
        assert_eq!(Server::of(reply(&own).as_bytes()), Server::Boringtun);
        let private = format!("private_key={}\n", "0e".repeat(32));
        assert_eq!(Server::of(reply(&private).as_bytes()), Server::WireguardGo);
        assert_eq!(Server::of(reply("").as_bytes()), Server::WireguardGo);
        // Only the interface's lines count, not a peer's.
        let late = reply("").replace("rx_bytes=0\n", &own);
        assert_eq!(Server::of(late.as_bytes()), Server::WireguardGo);
        // Not UTF-8: read as bytes all the same.
        let mut bytes = own.into_bytes();
        bytes.extend_from_slice(b"\xff\xfe\n");
        assert_eq!(Server::of(&bytes), Server::Boringtun);
    }

    #[test]
    fn own_public_key_is_read_and_checked_without_quoting() {
        let own = format!("own_public_key={}\n", "0e".repeat(32));
        assert_eq!(
            own_public_key(reply(&own).as_bytes()).unwrap(),
            Some([0x0e; 32])
        );
        assert_eq!(own_public_key(reply("").as_bytes()).unwrap(), None);
        let zero = format!("own_public_key={}\n", "00".repeat(32));
        assert_eq!(own_public_key(reply(&zero).as_bytes()).unwrap(), None);
        let short = format!("own_public_key={}\n", &"5a".repeat(32)[..63]);
        let e = own_public_key(reply(&short).as_bytes()).unwrap_err();
        assert!(!format!("{e} {e:?}").contains("5a5a"), "{e}");
        let twice = format!("{own}{own}");
        assert!(own_public_key(reply(&twice).as_bytes()).is_err());
    }

    #[test]
    fn an_elapsed_handshake_becomes_a_wall_clock_time() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        assert_eq!(
            handshake_from_elapsed(3, 5, now).unwrap(),
            Some(now - Duration::new(3, 5))
        );
        assert_eq!(handshake_from_elapsed(0, 0, now).unwrap(), None);
        assert!(handshake_from_elapsed(-1, 0, now).is_err());
        assert!(handshake_from_elapsed(1, 1_000_000_000, now).is_err());
        assert!(handshake_from_elapsed(i64::MAX, 0, now).is_err());
    }

    /// What the backend writes to boringtun, against a fake that answers
    /// as boringtun-cli 0.7.1 did here.
    mod writes {
        use super::super::super::{Uapi, WgBackend, WgError, WgPeer, tests::fake, tests::hex};
        use crate::secret::Psk;

        fn peer(ifname: &str) -> WgPeer {
            WgPeer {
                interface: ifname.into(),
                public_key: [1; 32],
            }
        }

        /// Peer [1; 32] with `psk`, and a stranger.
        fn answer(psk: u8) -> String {
            format!(
                "own_public_key={}\nlisten_port=51999\npublic_key={}\npreshared_key={}\n\
                 endpoint=192.0.2.2:51820\nallowed_ip=10.99.0.2/32\nallowed_ip=fd00::/64\n\
                 rx_bytes=0\ntx_bytes=0\npublic_key={}\nendpoint=192.0.2.3:51820\n\
                 rx_bytes=0\ntx_bytes=0\nerrno=0\n\n",
                hex(&[0x0e; 32]),
                hex(&[1; 32]),
                hex(&[psk; 32]),
                hex(&[2; 32]),
            )
        }

        /// Removed and added back with what it had and `psk`: no
        /// update_only, the removal ended, its own keepalive.
        fn recreated(psk: u8) -> String {
            let pk = hex(&[1; 32]);
            format!(
                "set=1\npublic_key={pk}\nremove=true\npublic_key={pk}\nremove=false\n\
                 preshared_key={}\nendpoint=192.0.2.2:51820\npersistent_keepalive_interval=0\n\
                 replace_allowed_ips=true\nallowed_ip=10.99.0.2/32\nallowed_ip=fd00::/64\n\n",
                hex(&[psk; 32])
            )
        }

        #[test]
        fn a_psk_is_installed_by_removing_and_adding_the_peer_back() {
            let dir = tempfile::tempdir().unwrap();
            let srv = fake(
                dir.path(),
                "bt0",
                vec![answer(0), "errno=0\n\n".into(), answer(0x42)],
            );
            let mut u = Uapi::new(dir.path());
            u.set_psk(&peer("bt0"), &Psk::from_bytes([0x42; 32]))
                .unwrap();
            let seen = srv.join().unwrap();
            assert_eq!(
                seen,
                ["get=1\n\n".to_string(), recreated(0x42), "get=1\n\n".into()]
            );
            // The PSK it has already: read, nothing written.
            let srv = fake(dir.path(), "bt1", vec![answer(0x42)]);
            u.set_psk(&peer("bt1"), &Psk::from_bytes([0x42; 32]))
                .unwrap();
            assert_eq!(srv.join().unwrap(), ["get=1\n\n".to_string()]);
            // Absent: read, nothing written, never created.
            let srv = fake(
                dir.path(),
                "bt2",
                vec![answer(0).replace(&hex(&[1; 32]), &hex(&[3; 32]))],
            );
            let e = u.set_psk(&peer("bt2"), &Psk::from_bytes([0x42; 32]));
            assert_eq!(e, Err(WgError::NoSuchPeer));
            assert_eq!(srv.join().unwrap().len(), 1);
            // Refused (errno=22, as boringtun answers a key it does not
            // know) or read back otherwise: an error without a key in it.
            let srv = fake(dir.path(), "bt3", vec![answer(0), "errno=22\n\n".into()]);
            let e = u
                .set_psk(&peer("bt3"), &Psk::from_bytes([0x42; 32]))
                .unwrap_err();
            assert!(format!("{e}").contains("errno=22"), "{e}");
            assert_eq!(srv.join().unwrap().len(), 2);
            let srv = fake(
                dir.path(),
                "bt4",
                vec![answer(0), "errno=0\n\n".into(), answer(0x43)],
            );
            let e = u
                .set_psk(&peer("bt4"), &Psk::from_bytes([0x42; 32]))
                .unwrap_err();
            assert_eq!(e, WgError::Mismatch);
            assert!(!format!("{e} {e:?}").contains("4242"));
            srv.join().unwrap();
        }

        #[test]
        fn a_new_session_keeps_the_peers_own_keepalive() {
            let dir = tempfile::tempdir().unwrap();
            let srv = fake(
                dir.path(),
                "bt5",
                vec![answer(0x42), "errno=0\n\n".into(), answer(0x42)],
            );
            let mut u = Uapi::new(dir.path());
            let before = u.new_session(&peer("bt5"), 25).unwrap();
            assert_eq!(before.keepalive, 0);
            // One set, no temporary keepalive to take back.
            let seen = srv.join().unwrap();
            assert_eq!(
                seen,
                ["get=1\n\n".to_string(), recreated(0x42), "get=1\n\n".into()]
            );
        }

        #[test]
        fn a_removal_has_no_update_only_and_the_own_key_is_listed() {
            let dir = tempfile::tempdir().unwrap();
            let gone = answer(0).replace(&hex(&[1; 32]), &hex(&[3; 32]));
            let srv = fake(
                dir.path(),
                "bt6",
                vec![answer(0), "errno=0\n\n".into(), gone],
            );
            let mut u = Uapi::new(dir.path());
            u.remove_peer(&peer("bt6")).unwrap();
            let seen = srv.join().unwrap();
            let want = format!("set=1\npublic_key={}\nremove=true\n\n", hex(&[1; 32]));
            assert_eq!(seen[1], want);
            let srv = fake(dir.path(), "bt7", vec![answer(0)]);
            assert_eq!(u.public_key("bt7").unwrap(), [0x0e; 32]);
            srv.join().unwrap();
            // An interface without a key lists none: an error, not a key.
            let keyless = answer(0).replace(&format!("own_public_key={}\n", hex(&[0x0e; 32])), "");
            let srv = fake(dir.path(), "bt8", vec![keyless]);
            assert!(u.public_key("bt8").is_err());
            srv.join().unwrap();
        }

        #[test]
        fn a_handshake_time_is_counted_back_from_now() {
            use std::time::{Duration, SystemTime};
            let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
            let r = answer(0).replace(
                "rx_bytes=0\ntx_bytes=0\npublic_key",
                "last_handshake_time_sec=2\nlast_handshake_time_nsec=500\nrx_bytes=0\n\
                 tx_bytes=0\npublic_key",
            );
            let at = |k: u8| super::super::super::parse_handshake_at(r.as_bytes(), &[k; 32], now);
            assert_eq!(at(1).unwrap(), Some(Some(now - Duration::new(2, 500))));
            // No session: no time; no such peer: None.
            assert_eq!(at(2).unwrap(), Some(None));
            assert_eq!(at(3).unwrap(), None);
        }
    }
}
