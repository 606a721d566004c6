//! qkdsim's QBER feed and eavesdropper controls, served by the qkdsim
//! process on every KME's HTTPS listener (the same mutual TLS: any client
//! certificate signed by the simulator's CA may read and control). Pure
//! request handling: [`route`] takes the parsed request and returns a
//! [`Reply`]; `sim::kme`'s router turns it into HTTP.
//!
//! Per simulated link (`[link.NAME]` of the qkdsim config), three views of
//! the same measurement, as three kinds of agent publish QBER:
//!
//! * ETSI GS QKD 015-style RESTCONF JSON,
//!   `GET /restconf/data/etsi-qkd-sdn-node:qkd_node/qkd_links/qkd_link={NAME}/qkdl_performance`:
//!
//!   ```json
//!   {"qkdl_performance": {
//!       "expected_consumption": 0,
//!       "skr": 12345,
//!       "phys_perf": [{"perf_type": "QBER", "value": 0.0312,
//!                      "time_stamp": "2025-01-02T03:04:05.678Z"}]}}
//!   ```
//!
//!   The names are those of the `etsi-qkd-sdn-node` YANG module of ETSI GS
//!   QKD 015 (V2.1.1, 2022-04; published at forge.etsi.org/rep/qkd/
//!   gs015-ctrl-int-sdn): `qkd_node/qkd_links/qkd_link[link_id]/
//!   qkdl_performance` with `expected_consumption` and `skr` (bit/s) and the
//!   `phys_perf` list of `perf_type`/`value`/`time_stamp` (see
//!   reference/etsi014.md). Simplifications: the top-level member is not
//!   module-qualified, `perf_type` is the bare identity `QBER`, `skr` is the
//!   link's secret key rate (`sim::keyrate`) rounded to whole bit/s, and
//!   `expected_consumption` is 0 (the simulator has no application
//!   bandwidth reservations). `time_stamp` is RFC 3339 UTC with
//!   milliseconds.
//! * Prometheus text, `GET /metrics`: `qkd_qber{link_id="NAME"} VALUE MS`
//!   (HIP-71's gauge, a fraction) and `qkd_skr{link_id="NAME"} BITS MS`,
//!   both stamped with the measurement time in unix milliseconds.
//! * Plain JSON as HIP-71-style or vendor agents serve it, `GET /qber/NAME`:
//!   `{"links": [{"id": "NAME", "qber": 3.12, "unit": "percent",
//!   "measured_at": MS, "seq": N}]}`, in PERCENT on purpose (a consumer needs
//!   `scale = 0.01`).
//!
//! Controls (POST, JSON body; ETSI 014-style error bodies
//! `{"message": ..., "details": [{"message": ...}]}`):
//! `/sim/NAME/eve` `{"fraction": 0..=1}`, `/sim/NAME/noise` `{"qber":
//! 0..=0.5}`, `/sim/NAME/stall` `{"stalled": bool}`. Each answers the
//! link's settings and what they lead to: `{"link", "eve", "noise",
//! "expected_qber", "single_photon_error" (e1), "skr" (bit/s), "stalled"}`.
//!
//! Measurements: every `measure_interval` (`[qber]` of the qkdsim config,
//! default 1 s) the link takes one new QBER sample from its model, with
//! sequence number N (the tick count since start, from 1) and time stamp
//! start + (N−1)·interval. Between ticks every feed serves the SAME value and
//! time stamp, so a consumer can tell a new measurement from a repeat. A
//! stalled link keeps serving its last measurement (a hung agent).

use super::link::feed::Measurement;
use super::link::{SimLink, SimState};
use serde_json::{Value, json};
use std::fmt::Write as _;
use std::time::Instant;

/// An answer for the router: status, content type, body.
#[derive(Debug, PartialEq)]
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

fn json_reply(status: u16, v: &Value) -> Reply {
    Reply {
        status,
        content_type: "application/json",
        body: v.to_string(),
    }
}

/// An ETSI 014-style error body.
fn error(status: u16, message: &str, details: &[String]) -> Reply {
    let details: Vec<Value> = details.iter().map(|d| json!({ "message": d })).collect();
    json_reply(status, &json!({ "message": message, "details": details }))
}

/// Whether `segments` (the request path split on `/`) belong to the feed.
pub fn is_feed_path(segments: &[&str]) -> bool {
    matches!(
        segments.first(),
        Some(&("restconf" | "metrics" | "qber" | "sim"))
    )
}

/// The feed's router. `segments` are the raw path segments; each is
/// percent-decoded by `decode` first (a client may send `%3A` for `:`).
pub fn route(
    state: &SimState,
    method: &hyper::Method,
    segments: &[&str],
    body: &[u8],
    decode: fn(&str) -> String,
) -> Reply {
    use hyper::Method;
    let get = method == Method::GET;
    let post = method == Method::POST;
    let now = Instant::now();
    let decoded: Vec<String> = segments.iter().map(|s| decode(s)).collect();
    let segments: Vec<&str> = decoded.iter().map(String::as_str).collect();
    match segments.as_slice() {
        [
            "restconf",
            "data",
            "etsi-qkd-sdn-node:qkd_node",
            "qkd_links",
            l,
            "qkdl_performance",
        ] => {
            let Some(name) = l.strip_prefix("qkd_link=") else {
                return error(404, "not found", &[]);
            };
            match (get, find(state, name)) {
                (false, _) => error(405, "method not allowed", &[]),
                (_, Err(r)) => r,
                (_, Ok(link)) => etsi015(link, now),
            }
        }
        ["metrics"] if get => metrics(state, now),
        ["qber", name] if get => match find(state, name) {
            Ok(link) => hip_json(link, now),
            Err(r) => r,
        },
        ["sim", name, knob] if post => match find(state, name) {
            Ok(link) => control(link, knob, body, now),
            Err(r) => r,
        },
        ["metrics"] | ["qber", _] | ["sim", _, _] => error(405, "method not allowed", &[]),
        _ => error(404, "not found", &[]),
    }
}

fn find<'a>(state: &'a SimState, name: &str) -> Result<&'a SimLink, Reply> {
    state.link(name).ok_or_else(|| {
        let m = format!("no simulated link {}", crate::text::printable(name, 64));
        error(404, "unknown link", &[m])
    })
}

/// The link's current measurement and secret key rate (bit/s). Lock
/// order: feed, then store (the controls take the store alone).
fn read(link: &SimLink, now: Instant) -> (Measurement, f64) {
    let mut feed = link.feed.lock().unwrap_or_else(|e| e.into_inner());
    let mut store = link.store.lock().unwrap_or_else(|e| e.into_inner());
    let m = feed.current(now, || store.model_mut(now).sample());
    (m, store.secret_bit_rate())
}

fn etsi015(link: &SimLink, now: Instant) -> Reply {
    let (m, skr) = read(link, now);
    let stamp = crate::utc::format_rfc3339_ms(m.measured_at_ms);
    json_reply(
        200,
        &json!({ "qkdl_performance": {
            "expected_consumption": 0,
            "skr": skr.round() as u64,
            "phys_perf": [{ "perf_type": "QBER", "value": m.qber, "time_stamp": stamp }],
        }}),
    )
}

fn hip_json(link: &SimLink, now: Instant) -> Reply {
    let (m, _) = read(link, now);
    json_reply(
        200,
        &json!({ "links": [{
            "id": link.name,
            "qber": m.qber * 100.0,
            "unit": "percent",
            "measured_at": m.measured_at_ms,
            "seq": m.seq,
        }]}),
    )
}

/// Prometheus text exposition format 0.0.4.
fn metrics(state: &SimState, now: Instant) -> Reply {
    let rows: Vec<(String, Measurement, f64)> = state
        .links
        .iter()
        .map(|l| {
            let (m, skr) = read(l, now);
            (label_value(&l.name), m, skr)
        })
        .collect();
    let mut out = String::new();
    out.push_str("# HELP qkd_qber Quantum bit error rate of the last measurement (fraction).\n");
    out.push_str("# TYPE qkd_qber gauge\n");
    for (id, m, _) in &rows {
        let _ = writeln!(
            out,
            "qkd_qber{{link_id=\"{id}\"}} {} {}",
            m.qber, m.measured_at_ms
        );
    }
    out.push_str("# HELP qkd_skr Secret key rate (bit/s).\n");
    out.push_str("# TYPE qkd_skr gauge\n");
    for (id, m, skr) in &rows {
        let _ = writeln!(
            out,
            "qkd_skr{{link_id=\"{id}\"}} {skr} {}",
            m.measured_at_ms
        );
    }
    Reply {
        status: 200,
        content_type: "text/plain; version=0.0.4",
        body: out,
    }
}

/// A Prometheus label value: `\`, `"` and newline escaped.
fn label_value(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn control(link: &SimLink, knob: &str, body: &[u8], now: Instant) -> Reply {
    let v: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(_) => return error(400, "request body is not JSON", &[]),
    };
    let number = |k: &str| v.get(k).and_then(Value::as_f64);
    let done = match knob {
        "eve" => match number("fraction") {
            Some(f) => set_model(link, now, |m| m.set_eve(f)),
            None => Err("body must be {\"fraction\": 0..1}".to_string()),
        },
        "noise" => match number("qber") {
            Some(q) => set_model(link, now, |m| m.set_noise(q)),
            None => Err("body must be {\"qber\": 0..0.5}".to_string()),
        },
        "stall" => match v.get("stalled").and_then(Value::as_bool) {
            Some(s) => {
                let mut feed = link.feed.lock().unwrap_or_else(|e| e.into_inner());
                feed.set_stalled(s);
                Ok(())
            }
            None => Err("body must be {\"stalled\": true|false}".to_string()),
        },
        _ => return error(404, "not found", &[]),
    };
    if let Err(e) = done {
        return error(400, "invalid control value", &[e]);
    }
    let stalled = link
        .feed
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .stalled();
    let store = link.store.lock().unwrap_or_else(|e| e.into_inner());
    let m = store.model();
    let single = crate::sim::keyrate::estimate(m, store.conf.key_rate.decoy);
    json_reply(
        200,
        &json!({
            "link": link.name,
            "eve": m.eve(),
            "noise": m.noise(),
            "expected_qber": m.expected_qber(),
            "single_photon_error": single.single_error,
            "skr": store.secret_bit_rate().round() as u64,
            "stalled": stalled,
        }),
    )
}

fn set_model(
    link: &SimLink,
    now: Instant,
    f: impl FnOnce(&mut crate::sim::model::LinkModel) -> Result<(), String>,
) -> Result<(), String> {
    let mut store = link.store.lock().unwrap_or_else(|e| e.into_inner());
    f(store.model_mut(now))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label_value("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
