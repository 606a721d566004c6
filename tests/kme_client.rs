//! The ETSI 014 client against the real simulated KMEs (in process, on
//! 127.0.0.1:0, with certificates from `qkdsim pki`'s code).

mod common;

use common::sim::{self, Sim};
use qkdpfd::engine::kme::{KmeClient, KmeErrorKind, KmeSettings};
use qkdpfd::sim::pki::Ca;
use zeroize::Zeroizing;

const NOT_FOUND: &str = "one or more keys specified are not found on KME";

/// qkdsim with SAE-X holding a client certificate no KME serves.
async fn start(pulse_rate: f64) -> Sim {
    let link = format!("pulse_rate = {pulse_rate:e}\nmax_key_per_request = 4");
    sim::start(&["SAE-A", "SAE-B", "SAE-X"], &link).await
}

impl Sim {
    fn client_with(&self, kme: &str, sae: &str, name: Option<&str>) -> KmeClient {
        let url = format!("https://localhost:{}", self.addrs[kme].port());
        let key = Zeroizing::new(self.read(&format!("sae-{sae}.key")));
        KmeClient::new(
            "site",
            &url,
            &self.read("ca.pem"),
            &self.read(&format!("sae-{sae}.pem")),
            key,
            name,
        )
        .unwrap()
    }

    fn client(&self, kme: &str, sae: &str) -> KmeClient {
        self.client_with(kme, sae, None)
    }

    /// Waits until the link holds at least `n` keys.
    async fn wait_keys(&self, n: u64) {
        let c = self.client("a", "SAE-A");
        for _ in 0..100 {
            if c.status("SAE-B").await.unwrap().stored_key_count >= n {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("the simulated link never stored {n} keys");
    }
}

#[tokio::test]
async fn status_reports_every_field_and_is_tracked() {
    let sim = start(1e9).await;
    let c = sim.client("a", "SAE-A");
    assert_eq!(c.stored_key_count("SAE-B"), None);
    let st = c.status("SAE-B").await.unwrap();
    assert_eq!(
        (st.source_kme_id.as_str(), st.target_kme_id.as_str()),
        ("KME-A", "KME-B")
    );
    assert_eq!(
        (st.master_sae_id.as_str(), st.slave_sae_id.as_str()),
        ("SAE-A", "SAE-B")
    );
    assert_eq!(
        (st.key_size, st.max_key_count, st.max_key_per_request),
        (256, 1000, 4)
    );
    assert_eq!(c.stored_key_count("SAE-B"), Some(st.stored_key_count));
    assert_eq!(c.stored_key_count("SAE-X"), None, "counted per far SAE");
    // The slave's KME reports the same shared link.
    let b = sim.client("b", "SAE-B").status("SAE-A").await.unwrap();
    assert_eq!(b.source_kme_id, "KME-B");
}

#[tokio::test]
async fn enc_keys_then_dec_keys_once() {
    let sim = start(1e9).await;
    sim.wait_keys(8).await;
    let master = sim.client("a", "SAE-A");
    let slave = sim.client("b", "SAE-B");
    let sent = master.enc_keys("SAE-B", 2, 256).await.unwrap();
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[0].1.len(), 32);
    let ids: Vec<_> = sent.iter().map(|k| k.0.clone()).collect();
    let got = slave.dec_keys("SAE-A", &ids, 256).await.unwrap();
    assert_eq!(got[0].0, ids[0]);
    assert_eq!(got[0].1, sent[0].1);
    assert_eq!(got[1].1, sent[1].1);
    assert_ne!(got[0].1, got[1].1);
    let again = slave.dec_keys("SAE-A", &ids[..1], 256).await.unwrap_err();
    // ETSI's message, then its details (which key_ID).
    let shown = format!(
        "{NOT_FOUND} (details: [{{\"message\":\"key_ID {} not found\"}}])",
        ids[0].as_str()
    );
    match &again.kind {
        KmeErrorKind::Status {
            status: 400,
            message,
        } => assert_eq!(message, &shown),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        again.to_string(),
        format!("kme site: dec_keys: HTTP 400: {shown}")
    );
    // The master's own KME does not hand its keys out a second time either.
    assert!(master.dec_keys("SAE-B", &ids[..1], 256).await.is_err());
}

#[tokio::test]
async fn get_forms_work_too() {
    let sim = start(1e9).await;
    sim.wait_keys(4).await;
    let get = KmeSettings {
        enc_keys_get: true,
        dec_keys_get: true,
        ..KmeSettings::default()
    };
    let master = sim.client("a", "SAE-A").with_settings(get.clone());
    let slave = sim.client("b", "SAE-B").with_settings(get);
    let sent = master.enc_keys("SAE-B", 2, 128).await.unwrap();
    let ids: Vec<_> = sent.iter().map(|k| k.0.clone()).collect();
    let got = slave.dec_keys("SAE-A", &ids, 128).await.unwrap();
    assert_eq!(got[1].1, sent[1].1);
}

#[tokio::test]
async fn kme_limits_come_back_as_etsi_errors() {
    let sim = start(1e9).await;
    sim.wait_keys(8).await;
    let e = sim
        .client("a", "SAE-A")
        .enc_keys("SAE-B", 5, 256)
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(400), "{e}");
    assert!(e.to_string().contains("max_key_per_request"), "{e}");
    let e = sim
        .client("a", "SAE-A")
        .enc_keys("SAE-B", 1, 8)
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(400), "{e}");
    let e = sim
        .client("a", "SAE-A")
        .status("SAE-NOBODY")
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(400), "{e}");
}

#[tokio::test]
async fn sae_not_served_gets_401() {
    let sim = start(1e9).await;
    let e = sim.client("a", "SAE-X").status("SAE-B").await.unwrap_err();
    assert_eq!(e.status(), Some(401), "{e}");
    assert!(
        e.to_string().starts_with("kme site: status: HTTP 401: "),
        "{e}"
    );
    // SAE-B is known, but not served by KME a.
    let e = sim.client("a", "SAE-B").status("SAE-A").await.unwrap_err();
    assert_eq!(e.status(), Some(401), "{e}");
}

#[tokio::test]
async fn client_certificate_from_another_ca_is_refused_at_tls() {
    let sim = start(1e9).await;
    let rogue = Ca::new().unwrap().client("SAE-A").unwrap();
    let url = format!("https://localhost:{}", sim.addrs["a"].port());
    let ca = sim.read("ca.pem");
    let c = KmeClient::new(
        "site",
        &url,
        &ca,
        rogue.cert_pem.as_bytes(),
        rogue.key_bytes(),
        None,
    )
    .unwrap();
    let e = c.status("SAE-B").await.unwrap_err();
    assert!(matches!(e.kind, KmeErrorKind::Tls(_)), "{e}");
    assert!(e.to_string().starts_with("kme site: status: TLS: "), "{e}");
}

#[tokio::test]
async fn server_name_is_checked() {
    let sim = start(1e9).await;
    let e = sim
        .client_with("a", "SAE-A", Some("kme.elsewhere.example"))
        .status("SAE-B")
        .await
        .unwrap_err();
    assert!(
        matches!(&e.kind, KmeErrorKind::Tls(m) if m.contains("not valid for name")),
        "{e}"
    );
    // The IP address is in the certificate too; the KME's name "a" as well.
    let c = sim.client_with("a", "SAE-A", Some("127.0.0.1"));
    assert!(c.status("SAE-B").await.is_ok());
}

#[tokio::test]
async fn a_server_from_another_ca_is_refused() {
    let sim = start(1e9).await;
    let other = Ca::new().unwrap();
    let url = format!("https://localhost:{}", sim.addrs["a"].port());
    let key = Zeroizing::new(sim.read("sae-SAE-A.key"));
    let c = KmeClient::new(
        "site",
        &url,
        other.cert_pem().as_bytes(),
        &sim.read("sae-SAE-A.pem"),
        key,
        None,
    )
    .unwrap();
    let e = c.status("SAE-B").await.unwrap_err();
    assert!(
        matches!(&e.kind, KmeErrorKind::Tls(m) if m.contains("invalid peer certificate")),
        "{e}"
    );
}

/// `kme_keys_low` is said once per link when the KME's real stock falls
/// below `keys_low`, again only after it was back at or above; 0 never.
#[tokio::test]
async fn a_low_stock_is_told_once_until_it_recovers() {
    let sim = start(1e9).await;
    sim.wait_keys(8).await;
    let low_at = 1_000_000;
    let c = sim.client("a", "SAE-A").with_settings(KmeSettings {
        keys_low: low_at,
        ..KmeSettings::default()
    });
    let n = c.status("SAE-B").await.unwrap().stored_key_count;
    assert!((8..low_at).contains(&n), "{n}");
    assert_eq!(c.stock_fell_low("dr", n), Some(low_at));
    assert_eq!(c.stock_fell_low("dr", n), None, "said once");
    assert_eq!(c.stock_fell_low("hq", n), Some(low_at), "per link");
    assert_eq!(c.stock_fell_low("dr", low_at), None, "back at the mark");
    assert_eq!(c.stock_fell_low("dr", n), Some(low_at), "fell again");
    let never = sim.client("a", "SAE-A");
    assert_eq!(
        never.stock_fell_low("dr", 0),
        None,
        "keys_low 0 never warns"
    );
}

/// The stock is the SAE pair's: a status call per far SAE at most once
/// per `STATUS_EVERY`, whatever the number of links asking.
#[tokio::test]
async fn status_is_asked_once_a_second_per_far_sae() {
    use qkdpfd::engine::kme::STATUS_EVERY;
    let sim = start(1e9).await;
    let c = sim.client("a", "SAE-A");
    let t0 = std::time::Instant::now();
    assert!(c.status_due("SAE-B", t0));
    let ms = std::time::Duration::from_millis;
    for later in [ms(0), ms(1), STATUS_EVERY - ms(1)] {
        assert!(!c.status_due("SAE-B", t0 + later), "{later:?}");
    }
    assert!(c.status_due("SAE-C", t0 + ms(1)), "another far SAE");
    assert!(c.status_due("SAE-B", t0 + STATUS_EVERY));
    assert!(!c.status_due("SAE-B", t0 + STATUS_EVERY + ms(500)));
}
