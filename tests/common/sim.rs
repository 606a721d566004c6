//! qkdsim in process for tests: KMEs `a` (SAE-A) and `b` (SAE-B) on
//! 127.0.0.1:0 sharing link `ab`, with certificates from `qkdsim pki`'s
//! code in a temporary directory. Stops when dropped.

use qkdpfd::sim::conf::SimConfig;
use qkdpfd::sim::link::SimState;
use qkdpfd::sim::pki;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::oneshot;

pub struct Sim {
    pub dir: tempfile::TempDir,
    pub addrs: HashMap<String, SocketAddr>,
    pub state: Arc<SimState>,
    _stop: oneshot::Sender<()>,
}

impl Sim {
    /// KME `a`'s address (the QBER feed is served by every KME).
    pub fn addr(&self) -> SocketAddr {
        self.addrs["a"]
    }

    /// A file of the test PKI.
    pub fn read(&self, f: &str) -> Vec<u8> {
        std::fs::read(self.dir.path().join(f)).unwrap()
    }
}

/// Starts the simulator; `saes` get client certificates, `link_extra` is
/// TOML placed right after `[link.ab] kmes = …` (more link keys, then any
/// further sections such as `[qber]`).
pub async fn start(saes: &[&str], link_extra: &str) -> Sim {
    let dir = tempfile::tempdir().unwrap();
    let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    pki::create(dir.path(), &names(&["a", "b"]), &names(saes), &[]).unwrap();
    let ca = format!("{:?}", dir.path().join("ca.pem"));
    let config = format!(
        r#"
[kme.a]
listen = "127.0.0.1:0"
kme_id = "KME-A"
sae_ids = ["SAE-A"]
ca = {ca}
cert = "kme-a.pem"
key = "kme-a.key"
[kme.b]
listen = "127.0.0.1:0"
kme_id = "KME-B"
sae_ids = ["SAE-B"]
ca = {ca}
cert = "kme-b.pem"
key = "kme-b.key"
[link.ab]
kmes = ["a", "b"]
{link_extra}
"#
    );
    let cfg = SimConfig::parse(&config, dir.path()).unwrap();
    let sim = qkdpfd::sim::kme::bind(&cfg).await.unwrap();
    let addrs = sim.addrs().into_iter().collect();
    let state = sim.state();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(sim.run(async move {
        let _ = stopped.await;
    }));
    Sim {
        dir,
        addrs,
        state,
        _stop: stop,
    }
}
