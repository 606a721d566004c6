//! The KME calls of key agreement (engine): one ETSI 014 client per
//! `[kme.X]`, and a queue per KME that starts at most
//! [`kme::IN_FLIGHT`] calls at a time. A `rotate all` on a hub asks for
//! a thousand keys at once: queued requests are a few bytes each, where a
//! thousand parked call futures were megabytes. A link has at most one
//! request, queued or running: a new round's request replaces the old one
//! (a running call is aborted), so a long KME outage cannot pile up work.
//! Each call runs as a task; its answer comes back as a [`KmeAnswer`]
//! carrying the request's ticket, and an answer whose ticket is no longer
//! current is dropped.

use crate::engine::kme::{self, KmeClient, KmeSettings};
use crate::engine::rotate::Input;
use crate::imsg::KmeNet;
use crate::log::{self, Event};
use crate::proto::peer::KeyId;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use tokio::sync::mpsc;

/// Key size asked of the KME, in bits (DESIGN §6: shorter keys refused).
pub const KEY_BITS: u32 = 256;

/// A KME answer for one link, from its task.
pub struct KmeAnswer {
    pub link: String,
    pub input: Input,
    ticket: u64,
}

struct Request {
    link: String,
    /// The far SAE: the slave for `enc_keys`, the master for `dec_keys`.
    peer_sae: String,
    /// None: `enc_keys`; Some: `dec_keys` for this key_ID.
    key_id: Option<KeyId>,
    ticket: u64,
}

/// What a link has asked of its KME.
struct Current {
    kme: String,
    ticket: u64,
    task: Option<tokio::task::JoinHandle<()>>,
    /// The request's own words, to ask again after a reload.
    peer_sae: String,
    key_id: Option<KeyId>,
}

pub(super) struct Calls {
    clients: BTreeMap<String, Arc<KmeClient>>,
    net: BTreeMap<String, KmeNet>,
    queues: BTreeMap<String, VecDeque<Request>>,
    running: BTreeMap<String, usize>,
    current: HashMap<String, Current>,
    next_ticket: u64,
    answers: mpsc::UnboundedSender<KmeAnswer>,
}

impl Calls {
    pub(super) fn new(answers: mpsc::UnboundedSender<KmeAnswer>) -> Calls {
        Calls {
            clients: BTreeMap::new(),
            net: BTreeMap::new(),
            queues: BTreeMap::new(),
            running: BTreeMap::new(),
            current: HashMap::new(),
            next_ticket: 1,
            answers,
        }
    }

    /// New clients when the parent's KME settings changed. A request
    /// queued or in flight is asked again of the new client (its round
    /// waited otherwise for its whole deadline, `rotate` long, for an
    /// answer no task would send); one whose KME is gone fails its round.
    pub(super) fn configure(&mut self, kmes: &BTreeMap<String, KmeNet>) -> Result<(), String> {
        if self.net == *kmes {
            return Ok(());
        }
        let mut clients = BTreeMap::new();
        for (name, k) in kmes {
            let client = KmeClient::new(name, &k.url, &k.ca, &k.cert, k.key.clone(), None)
                .map_err(|e| e.to_string())?
                .with_settings(KmeSettings {
                    http: crate::engine::https::HttpSettings {
                        addr: Some(k.addr),
                        ..Default::default()
                    },
                    enc_keys_get: k.get,
                    dec_keys_get: k.get,
                    keys_low: k.keys_low,
                    ..KmeSettings::default()
                });
            clients.insert(name.clone(), Arc::new(client));
        }
        let mut asked: Vec<(String, Current)> = self.current.drain().collect();
        asked.sort_by_key(|(_, c)| c.ticket);
        for (_, c) in &mut asked {
            if let Some(t) = c.task.take() {
                t.abort();
            }
        }
        self.queues.clear();
        self.running.clear();
        self.clients = clients;
        self.net = kmes.clone();
        for (link, c) in asked {
            if self.clients.contains_key(&c.kme) {
                self.request(&link, &c.kme, &c.peer_sae, c.key_id);
                continue;
            }
            let ticket = self.next_ticket;
            self.next_ticket += 1;
            let why = format!("[kme.{}] is no longer configured", c.kme);
            let input = Input::KeyFailed {
                key_id: c.key_id.clone(),
                why,
            };
            self.current.insert(link.clone(), Current { ticket, ..c });
            let _ = self.answers.send(KmeAnswer {
                link,
                input,
                ticket,
            });
        }
        Ok(())
    }

    pub(super) fn knows(&self, kme: &str) -> bool {
        self.clients.contains_key(kme)
    }

    pub(super) fn keys_low(&self, kme: &str) -> Option<u64> {
        self.net.get(kme).map(|k| k.keys_low)
    }

    pub(super) fn stored_key_count(&self, kme: &str, peer_sae: &str) -> Option<u64> {
        self.clients
            .get(kme)
            .and_then(|k| k.stored_key_count(peer_sae))
    }

    /// Asks `kme` for a key for `link`, replacing what the link asked before.
    pub(super) fn request(&mut self, link: &str, kme: &str, peer_sae: &str, key_id: Option<KeyId>) {
        self.cancel(link);
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        self.current.insert(
            link.to_string(),
            Current {
                kme: kme.to_string(),
                ticket,
                task: None,
                peer_sae: peer_sae.to_string(),
                key_id: key_id.clone(),
            },
        );
        self.queues
            .entry(kme.to_string())
            .or_default()
            .push_back(Request {
                link: link.to_string(),
                peer_sae: peer_sae.to_string(),
                key_id,
                ticket,
            });
        self.pump(kme);
    }

    /// Gives back what a burst grew: a `rotate all` queues a request for
    /// every link, and a queue or table keeps its largest size otherwise
    /// (2.4 MB at 10,000 links).
    pub(super) fn shrink(&mut self) {
        for q in self.queues.values_mut() {
            q.shrink_to_fit();
        }
        self.current.shrink_to_fit();
    }

    /// Takes an answer: Some(input) if it is the link's current request
    /// (its slot is freed and the next queued call starts), None if stale.
    pub(super) fn answered(&mut self, a: KmeAnswer) -> Option<(String, Input)> {
        let live = self
            .current
            .get(&a.link)
            .is_some_and(|c| c.ticket == a.ticket);
        if !live {
            return None;
        }
        let c = self.current.remove(&a.link).expect("checked");
        self.release(&c.kme);
        Some((a.link, a.input))
    }

    /// Forgets a link's request: dropped from the queue, or aborted.
    fn cancel(&mut self, link: &str) {
        let Some(c) = self.current.remove(link) else {
            return;
        };
        match c.task {
            Some(t) => {
                t.abort();
                self.release(&c.kme);
            }
            None => {
                if let Some(q) = self.queues.get_mut(&c.kme) {
                    q.retain(|r| r.ticket != c.ticket);
                }
            }
        }
    }

    fn release(&mut self, kme: &str) {
        if let Some(n) = self.running.get_mut(kme) {
            *n = n.saturating_sub(1);
        }
        self.pump(kme);
    }

    /// Starts queued calls while the KME has a free slot.
    fn pump(&mut self, kme: &str) {
        let Some(client) = self.clients.get(kme).cloned() else {
            return;
        };
        loop {
            let running = self.running.get(kme).copied().unwrap_or(0);
            if running >= kme::IN_FLIGHT {
                return;
            }
            let Some(r) = self.queues.get_mut(kme).and_then(VecDeque::pop_front) else {
                return;
            };
            let Some(c) = self.current.get_mut(&r.link) else {
                continue;
            };
            *self.running.entry(kme.to_string()).or_default() += 1;
            c.task = Some(tokio::spawn(call(client.clone(), r, self.answers.clone())));
        }
    }
}

/// One call and its answer; then `status` for `stored_key_count`.
async fn call(kme: Arc<KmeClient>, r: Request, tx: mpsc::UnboundedSender<KmeAnswer>) {
    let input = fetch_key(&kme, &r.peer_sae, r.key_id).await;
    if let Input::KeyFailed { why, .. } = &input {
        log::event(Event::KmeError)
            .kv("link", &r.link)
            .kv("kme", kme.name())
            .msg(why)
            .send();
    }
    let ok = matches!(input, Input::KeyReady { .. });
    let _ = tx.send(KmeAnswer {
        link: r.link.clone(),
        input,
        ticket: r.ticket,
    });
    if ok {
        // For `show link`, the metrics and the stock warning; a failure
        // here changes no round. The stock is the SAE pair's: asked once a
        // second at most, the link's warning otherwise judged on the last
        // answer.
        let stored = match kme.status_due(&r.peer_sae, std::time::Instant::now()) {
            true => kme.status_for_stock(&r.peer_sae).await.unwrap_or_else(|e| {
                // Without it `kme_keys_low` cannot fire: said once a streak.
                log::event(Event::KmeError)
                    .kv("link", &r.link)
                    .kv("kme", kme.name())
                    .msg(e)
                    .send();
                None
            }),
            false => kme.stored_key_count(&r.peer_sae),
        };
        if let Some(stored) = stored
            && let Some(threshold) = kme.stock_fell_low(&r.link, stored)
        {
            log::event(Event::KmeKeysLow)
                .kv("link", &r.link)
                .kv("kme", kme.name())
                .kv("stored_key_count", stored)
                .kv("threshold", threshold)
                .send();
        }
    }
}

/// One `enc_keys` (no key_ID) or `dec_keys` call, as a rotation input.
async fn fetch_key(kme: &KmeClient, peer_sae: &str, key_id: Option<KeyId>) -> Input {
    let failed = |key_id: Option<KeyId>, why: String| Input::KeyFailed { key_id, why };
    let got = match &key_id {
        None => kme.enc_keys(peer_sae, 1, KEY_BITS).await,
        Some(id) => {
            kme.dec_keys(peer_sae, std::slice::from_ref(id), KEY_BITS)
                .await
        }
    };
    let mut keys = match got {
        Ok(k) => k,
        Err(e) => return failed(key_id, e.to_string()),
    };
    match keys.pop().filter(|_| keys.is_empty()) {
        Some((id, key)) => Input::KeyReady { key_id: id, key },
        None => failed(key_id, "expected exactly one key".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Calls to a KME that accepts connections and never answers: every
    /// started call stays running for the test's duration.
    fn silent_kme(dir: &std::path::Path) -> (std::net::TcpListener, BTreeMap<String, KmeNet>) {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        crate::sim::pki::create(dir, &names(&["a"]), &names(&["SAE-A"]), &[]).unwrap();
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let read = |f: &str| std::fs::read(dir.join(f)).unwrap();
        let net = KmeNet {
            url: format!("https://127.0.0.1:{}", addr.port()),
            sae_id: "SAE-A".into(),
            ca: read("ca.pem"),
            cert: read("sae-SAE-A.pem"),
            key: zeroize::Zeroizing::new(read("sae-SAE-A.key")),
            addr,
            get: false,
            keys_low: 10,
        };
        (l, [("site".to_string(), net)].into_iter().collect())
    }

    fn running(c: &Calls) -> usize {
        c.running.get("site").copied().unwrap_or(0)
    }

    fn queued(c: &Calls) -> usize {
        c.queues.get("site").map_or(0, VecDeque::len)
    }

    #[tokio::test]
    async fn a_burst_starts_at_most_in_flight_calls_and_a_link_has_one_request() {
        let dir = tempfile::tempdir().unwrap();
        let (_kme, net) = silent_kme(dir.path());
        let (tx, _rx) = mpsc::unbounded_channel();
        let mut c = Calls::new(tx);
        c.configure(&net).unwrap();
        for i in 0..10 {
            c.request(&format!("l{i}"), "site", "SAE-B", None);
        }
        assert_eq!(
            (running(&c), queued(&c)),
            (kme::IN_FLIGHT, 10 - kme::IN_FLIGHT)
        );
        // A new round on a running link: the old call is aborted, the slot
        // goes to the next queued request, the new one queues.
        c.request("l0", "site", "SAE-B", None);
        assert_eq!(
            (running(&c), queued(&c)),
            (kme::IN_FLIGHT, 10 - kme::IN_FLIGHT)
        );
        assert_eq!(c.current.len(), 10);
        // A new round on a queued link replaces its queued request.
        c.request("l9", "site", "SAE-B", None);
        assert_eq!(queued(&c), 10 - kme::IN_FLIGHT);
        // An answer carrying an old ticket is stale: dropped, no slot freed.
        let stale = KmeAnswer {
            link: "l0".into(),
            input: Input::Tick,
            ticket: 1,
        };
        assert!(c.answered(stale).is_none());
        assert_eq!(running(&c), kme::IN_FLIGHT);
        // The current answer of a running link frees its slot for the queue.
        let l1 = c.current["l1"].ticket;
        let live = KmeAnswer {
            link: "l1".into(),
            input: Input::Tick,
            ticket: l1,
        };
        assert_eq!(c.answered(live).map(|(l, _)| l), Some("l1".to_string()));
        assert_eq!(
            (running(&c), queued(&c)),
            (kme::IN_FLIGHT, 10 - kme::IN_FLIGHT - 1)
        );
    }

    #[tokio::test]
    async fn shrink_gives_back_what_a_burst_grew_and_keeps_every_request() {
        let dir = tempfile::tempdir().unwrap();
        let (_kme, net) = silent_kme(dir.path());
        let (tx, _rx) = mpsc::unbounded_channel();
        let mut c = Calls::new(tx);
        c.configure(&net).unwrap();
        for i in 0..2000 {
            c.request(&format!("l{i}"), "site", "SAE-B", None);
        }
        // New rounds on all but ten queued links: their requests go.
        for i in kme::IN_FLIGHT + 10..2000 {
            c.cancel(&format!("l{i}"));
        }
        let cap = |c: &Calls| c.queues["site"].capacity();
        assert!(cap(&c) >= 2000 - kme::IN_FLIGHT && c.current.capacity() >= 2000);
        c.shrink();
        assert_eq!((running(&c), queued(&c)), (kme::IN_FLIGHT, 10));
        assert!(cap(&c) < 100, "queue capacity {}", cap(&c));
        assert!(c.current.capacity() < 100, "{}", c.current.capacity());
        assert_eq!(c.current.len(), kme::IN_FLIGHT + 10);
        // What is left still runs: a freed slot takes the next request.
        let l0 = c.current["l0"].ticket;
        let answer = KmeAnswer {
            link: "l0".into(),
            input: Input::Tick,
            ticket: l0,
        };
        assert!(c.answered(answer).is_some());
        assert_eq!((running(&c), queued(&c)), (kme::IN_FLIGHT, 9));
    }

    #[tokio::test]
    async fn a_reload_asks_again_what_was_asked_or_fails_it() {
        let dir = tempfile::tempdir().unwrap();
        let (_kme, net) = silent_kme(dir.path());
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut c = Calls::new(tx);
        c.configure(&net).unwrap();
        for i in 0..10 {
            c.request(
                &format!("l{i}"),
                "site",
                "SAE-B",
                Some(KeyId::new("k1").unwrap()),
            );
        }
        let before = c.current["l0"].ticket;
        // Another setting of the same KME: every request is asked again of
        // the new client, under a new ticket, none lost and none doubled.
        let mut changed = net.clone();
        changed.get_mut("site").unwrap().keys_low += 1;
        c.configure(&changed).unwrap();
        assert_eq!(
            (running(&c), queued(&c)),
            (kme::IN_FLIGHT, 10 - kme::IN_FLIGHT)
        );
        assert_eq!(c.current.len(), 10);
        assert!(c.current["l0"].ticket > before);
        assert_eq!(c.current["l3"].key_id, Some(KeyId::new("k1").unwrap()));
        assert!(rx.try_recv().is_err(), "nothing failed");
        // The KME gone: each round is told at once that its key failed.
        c.configure(&BTreeMap::new()).unwrap();
        let mut failed = 0;
        while let Ok(a) = rx.try_recv() {
            match c.answered(a) {
                Some((_, Input::KeyFailed { key_id, why })) => {
                    assert_eq!(key_id, Some(KeyId::new("k1").unwrap()));
                    assert!(why.contains("[kme.site]"), "{why}");
                    failed += 1;
                }
                other => panic!("{:?}", other.map(|(l, _)| l)),
            }
        }
        assert_eq!((failed, c.current.len()), (10, 0));
    }
}
