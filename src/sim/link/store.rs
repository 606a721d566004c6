//! Key store of one simulated QKD link (qkdsim process). Pure: the caller
//! passes `now`. Secret bits accrue at the link's key rate up to
//! `max_key_count` keys of `key_size`; enc_keys on either KME draws from the
//! shared pool and hands each key to exactly one slave SAE, once.

use crate::secret::QkdKey;
use crate::sim::conf::LinkSimConf;
use crate::sim::keyrate;
use crate::sim::model::LinkModel;
use std::collections::{HashMap, VecDeque};
use std::time::Instant;

/// ETSI 014's normative message for a dec_keys miss.
pub const NOT_FOUND: &str = "one or more keys specified are not found on KME";

/// A key handed to the master by enc_keys, waiting for the slave's dec_keys.
struct Delivered {
    master: String,
    slave: String,
    key: QkdKey,
}

/// Why a store operation was refused: (HTTP status, message, details).
#[derive(Debug, PartialEq)]
pub struct Refusal {
    pub status: u16,
    pub message: String,
    pub details: Vec<String>,
}

fn refuse(status: u16, message: impl Into<String>, details: Vec<String>) -> Refusal {
    Refusal {
        status,
        message: message.into(),
        details,
    }
}

pub struct LinkStore {
    pub conf: LinkSimConf,
    model: LinkModel,
    bits: f64,
    last: Instant,
    delivered: HashMap<String, Delivered>,
    /// `delivered`'s key_IDs, oldest first, and some already given out: a
    /// dec_keys takes its keys out of `delivered` alone (a scan of this
    /// queue per dec_keys made a 10,000-link hub's first rounds quadratic
    /// in the simulator), and the queue is compacted once it holds twice
    /// as many as `delivered` (see [`LinkStore::give`]).
    order: VecDeque<String>,
}

impl LinkStore {
    pub fn new(conf: LinkSimConf, model: LinkModel, now: Instant) -> LinkStore {
        LinkStore {
            conf,
            model,
            bits: 0.0,
            last: now,
            delivered: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Secret bits per second: pulse rate × the decoy-state BB84 rate per
    /// pulse (`sim::keyrate`); zero once Eve or noise push e1 and E_μ too
    /// high, or the link is too long.
    pub fn secret_bit_rate(&self) -> f64 {
        self.conf.pulse_rate * keyrate::rate_per_pulse(&self.model, &self.conf.key_rate)
    }

    fn capacity_bits(&self) -> f64 {
        self.conf.max_key_count as f64 * self.conf.key_size as f64
    }

    /// Adds the bits produced since the last call, capped at capacity.
    pub fn accrue(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.bits = (self.bits + dt * self.secret_bit_rate()).min(self.capacity_bits());
    }

    /// The model, for QBER and eavesdropper controls. Bits made so far
    /// accrue at the old rate first.
    pub fn model_mut(&mut self, now: Instant) -> &mut LinkModel {
        self.accrue(now);
        &mut self.model
    }

    pub fn model(&self) -> &LinkModel {
        &self.model
    }

    /// Keys of `key_size` in the pool (ETSI `stored_key_count`).
    pub fn stored_key_count(&mut self, now: Instant) -> u64 {
        self.accrue(now);
        (self.bits / self.conf.key_size as f64).floor() as u64
    }

    /// Checks an enc_keys request against the link's limits.
    pub fn check_request(&self, number: u64, size: u64) -> Result<(), Refusal> {
        let c = &self.conf;
        if number == 0 || number > c.max_key_per_request {
            let d = format!("number must be 1..={}", c.max_key_per_request);
            return Err(refuse(
                400,
                "requested number of keys exceeds max_key_per_request",
                vec![d],
            ));
        }
        if size % 8 != 0 {
            return Err(refuse(400, "size shall be a multiple of 8", vec![]));
        }
        if size < c.min_key_size as u64 || size > c.max_key_size as u64 {
            let d = format!("size must be {}..={}", c.min_key_size, c.max_key_size);
            return Err(refuse(400, "requested key size is out of range", vec![d]));
        }
        Ok(())
    }

    /// enc_keys: takes `number` keys of `size` bits from the pool for
    /// `master` → `slave`; they wait for the slave's dec_keys.
    pub fn take(
        &mut self,
        master: &str,
        slave: &str,
        number: u64,
        size: u64,
        now: Instant,
    ) -> Result<Vec<(String, QkdKey)>, Refusal> {
        self.check_request(number, size)?;
        self.accrue(now);
        let need = (number * size) as f64;
        if need > self.bits {
            let d = format!("{need} bits asked, {} stored", self.bits.floor());
            return Err(refuse(
                503,
                "not enough key material on KME, retry later",
                vec![d],
            ));
        }
        self.bits -= need;
        let mut out = Vec::with_capacity(number as usize);
        for _ in 0..number {
            let mut bytes = vec![0u8; (size / 8) as usize];
            rand::Rng::fill(&mut rand::thread_rng(), &mut bytes[..]);
            let key = QkdKey::new(bytes);
            let id = uuid_v4();
            self.remember(&id, master, slave, key.clone());
            out.push((id, key));
        }
        Ok(out)
    }

    /// Keeps at most `max_key_count` undelivered keys; the oldest go first
    /// (a slave that never asks cannot grow the simulator without bound).
    fn remember(&mut self, id: &str, master: &str, slave: &str, key: QkdKey) {
        while self.delivered.len() >= self.conf.max_key_count as usize {
            // The oldest still held; a given-out one's entry goes with it.
            let Some(old) = self.order.pop_front() else {
                break;
            };
            self.delivered.remove(&old);
        }
        let d = Delivered {
            master: master.to_string(),
            slave: slave.to_string(),
            key,
        };
        self.delivered.insert(id.to_string(), d);
        self.order.push_back(id.to_string());
    }

    /// dec_keys: all of `ids` for `slave` from `master`, or none (a miss
    /// leaves every key in place). Each key is given out once.
    pub fn give(
        &mut self,
        master: &str,
        slave: &str,
        ids: &[String],
    ) -> Result<Vec<(String, QkdKey)>, Refusal> {
        if ids.is_empty() || ids.len() as u64 > self.conf.max_key_per_request {
            let d = format!("1..={} key_IDs per request", self.conf.max_key_per_request);
            return Err(refuse(400, "bad number of key_IDs", vec![d]));
        }
        let mut missing = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            let ok = self
                .delivered
                .get(id)
                .is_some_and(|d| d.master == master && d.slave == slave);
            if !ok || ids[..i].contains(id) {
                missing.push(format!("key_ID {id} not found"));
            }
        }
        if !missing.is_empty() {
            return Err(refuse(400, NOT_FOUND, missing));
        }
        let out = ids
            .iter()
            .filter_map(|id| self.delivered.remove(id).map(|d| (id.clone(), d.key)))
            .collect();
        // Amortised: each compaction drops at least half of the queue.
        if self.order.len() > 2 * self.delivered.len() + 64 {
            let held = &self.delivered;
            self.order.retain(|o| held.contains_key(o));
        }
        Ok(out)
    }
}

/// A random (version 4) UUID, the key_ID form real KMEs use.
pub fn uuid_v4() -> String {
    let mut b = [0u8; 16];
    rand::Rng::fill(&mut rand::thread_rng(), &mut b[..]);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = crate::text::hex(&b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn store(rate: f64) -> (LinkStore, Instant) {
        let c = LinkSimConf {
            pulse_rate: rate,
            max_key_count: 10,
            max_key_per_request: 4,
            ..Default::default()
        };
        let m = LinkModel::new(&c.physics).unwrap();
        let now = Instant::now();
        (LinkStore::new(c, m, now), now)
    }

    #[test]
    fn accrues_at_model_rate_up_to_capacity() {
        let (mut s, t0) = store(1e6);
        let per_s = s.secret_bit_rate();
        assert!(per_s > 100.0 && per_s < 10_000.0, "{per_s}");
        let n = s.stored_key_count(t0 + Duration::from_secs(1));
        assert_eq!(n, (per_s / 256.0).floor() as u64);
        assert_eq!(s.stored_key_count(t0 + Duration::from_secs(3600)), 10);
        s.model_mut(t0 + Duration::from_secs(3600))
            .set_eve(1.0)
            .unwrap();
        assert_eq!(s.secret_bit_rate(), 0.0);
    }

    #[test]
    fn the_rate_is_the_decoy_rate_and_stops_past_142_km() {
        let (s, _) = store(1e9);
        // tests/vectors/decoy_rate.py: 7.543932e-4 bits per pulse at 25 km.
        let r = s.secret_bit_rate();
        assert!((r - 754_393.2).abs() < 7_544.0, "{r}");
        let far = LinkSimConf {
            physics: crate::conf::SimLinkConf {
                length_km: 145.0,
                ..Default::default()
            },
            ..s.conf.clone()
        };
        let m = LinkModel::new(&far.physics).unwrap();
        let t0 = Instant::now();
        let mut s = LinkStore::new(far, m, t0);
        assert_eq!(s.secret_bit_rate(), 0.0);
        assert_eq!(s.stored_key_count(t0 + Duration::from_secs(3600)), 0);
    }

    #[test]
    fn keys_are_single_use_and_bound_to_the_pair() {
        let (mut s, t0) = store(1e6);
        let t = t0 + Duration::from_secs(3600);
        let keys = s.take("A", "B", 2, 256, t).unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(s.stored_key_count(t), 8);
        let ids: Vec<String> = keys.iter().map(|k| k.0.clone()).collect();
        assert_eq!(s.give("A", "C", &ids).unwrap_err().message, NOT_FOUND);
        assert_eq!(
            s.give("A", "B", &[ids[0].clone(), ids[0].clone()])
                .unwrap_err()
                .status,
            400
        );
        let got = s.give("A", "B", &ids).unwrap();
        assert_eq!(got[0].1, keys[0].1);
        assert_eq!(s.give("A", "B", &ids[..1]).unwrap_err().message, NOT_FOUND);
    }

    #[test]
    fn the_oldest_undelivered_keys_go_first_and_given_ones_are_not_kept() {
        let (mut s, t0) = store(1e9);
        // A second apart: the pool refills between takes.
        let mut now = t0;
        let mut take = |s: &mut LinkStore| {
            now += Duration::from_secs(1);
            s.take("A", "B", 1, 256, now).unwrap()[0].0.clone()
        };
        // Ten held (the cap), the first given out, then three more taken:
        // the three oldest still held make room, the given one counts not.
        let ids: Vec<String> = (0..10).map(|_| take(&mut s)).collect();
        s.give("A", "B", &ids[..1]).unwrap();
        for _ in 0..3 {
            take(&mut s);
        }
        let gone =
            |s: &mut LinkStore, id: &String| s.give("A", "B", std::slice::from_ref(id)).is_err();
        assert!(gone(&mut s, &ids[1]) && gone(&mut s, &ids[2]));
        assert!(!gone(&mut s, &ids[3]), "evicted while there was room");
        assert_eq!(s.delivered.len(), 9);
        // Keys taken and given one by one: the queue stays bounded.
        for _ in 0..10_000 {
            let id = take(&mut s);
            s.give("A", "B", &[id]).unwrap();
        }
        assert!(
            s.order.len() <= 2 * s.delivered.len() + 64,
            "{}",
            s.order.len()
        );
        assert!(!gone(&mut s, &ids[4]), "a held key lost to the compaction");
    }

    #[test]
    fn limits() {
        let (mut s, t0) = store(1e6);
        assert_eq!(s.check_request(5, 256).unwrap_err().status, 400);
        assert_eq!(
            s.check_request(1, 100).unwrap_err().message,
            "size shall be a multiple of 8"
        );
        assert!(s.check_request(1, 8).is_err() && s.check_request(1, 8192).is_err());
        assert_eq!(s.take("A", "B", 1, 256, t0).unwrap_err().status, 503);
        assert!(uuid_v4().len() == 36 && uuid_v4() != uuid_v4());
    }
}
