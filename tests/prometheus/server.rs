//! A real `prometheus` server for tests/prometheus.rs, in a gateway's
//! namespace, and what its HTTP API answers.

use super::common::gateway::unix_now;
use super::common::pair::{Pair, slow};
use super::{PROM, RULES, TARGET, output, repo};
use serde_json::Value;
use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `prometheus` server in a gateway's namespace; killed on drop.
pub struct Server {
    child: Child,
    ns: String,
    log: PathBuf,
}

impl Server {
    pub fn start(p: &Pair, ns: &str) -> Server {
        let dir = p.work.path().join("prometheus");
        fs::create_dir_all(dir.join("data")).unwrap();
        let config = dir.join("prometheus.yml");
        fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - {rules}\n\
                 scrape_configs:\n  - job_name: qkdpfd\n    static_configs:\n      - targets: [\"{TARGET}\"]\n",
                rules = repo().join(RULES).display(),
            ),
        )
        .unwrap();
        let log = dir.join("prometheus.log");
        let child = Command::new("ip")
            .args(["netns", "exec", ns, "prometheus"])
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={PROM}"))
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut s = Server {
            child,
            ns: ns.to_string(),
            log,
        };
        let t = Instant::now();
        while s.get("/-/ready", &[]).1.trim() != "Prometheus Server is Ready." {
            if let Ok(Some(st)) = s.child.try_wait() {
                panic!("prometheus exited ({st}):\n{}", s.log());
            }
            assert!(
                t.elapsed() < slow(Duration::from_secs(30)),
                "prometheus not ready:\n{}",
                s.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        s
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// GET `path` with URL-encoded `params`, by curl in the namespace:
    /// (HTTP status, body).
    pub fn get(&self, path: &str, params: &[(&str, &str)]) -> (u16, String) {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns, "curl", "-sS", "--max-time", "10"])
            .args(["-w", "\n%{http_code}", "-G"]);
        for (k, v) in params {
            c.arg("--data-urlencode").arg(format!("{k}={v}"));
        }
        c.arg(format!("http://{PROM}{path}"));
        let o = output(&mut c);
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }

    /// An API call that must succeed: its `data`.
    pub fn api(&self, path: &str, params: &[(&str, &str)]) -> Value {
        let (code, body) = self.get(path, params);
        let v: Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("{path} {params:?}: HTTP {code}, not JSON ({e}): {body}"));
        assert!(
            code == 200 && v["status"] == "success",
            "{path} {params:?}: HTTP {code}: {v}"
        );
        v["data"].clone()
    }

    /// An instant query's result vector.
    pub fn query(&self, expr: &str) -> Vec<Value> {
        let d = self.api("/api/v1/query", &[("query", expr)]);
        assert_eq!(d["resultType"], "vector", "{expr}: {d}");
        d["result"].as_array().cloned().unwrap_or_default()
    }

    /// A range query over the last `secs` seconds: its series.
    pub fn query_range(&self, expr: &str, secs: u64) -> Vec<Value> {
        let end = unix_now();
        let start = format!("{:.3}", end - secs as f64);
        let end = format!("{end:.3}");
        let d = self.api(
            "/api/v1/query_range",
            &[
                ("query", expr),
                ("start", &start),
                ("end", &end),
                ("step", "1"),
            ],
        );
        assert_eq!(d["resultType"], "matrix", "{expr}: {d}");
        d["result"].as_array().cloned().unwrap_or_default()
    }

    /// Polls `what` until it returns Some, within `limit`.
    pub fn wait<T>(&self, what: &str, limit: Duration, f: impl Fn(&Server) -> Option<T>) -> T {
        let limit = slow(limit);
        let t = Instant::now();
        loop {
            if let Some(v) = f(self) {
                return v;
            }
            assert!(
                t.elapsed() < limit,
                "{what}: not within {limit:?}\nprometheus log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
    }
}

pub fn value_of(sample: &Value) -> f64 {
    sample["value"][1]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or(f64::NAN)
}

/// The alert `name` for link dr in `/api/v1/alerts`, if it is in `state`.
pub fn alert(s: &Server, name: &str, state: &str) -> Option<Value> {
    let d = s.api("/api/v1/alerts", &[]);
    d["alerts"]
        .as_array()?
        .iter()
        .find(|a| {
            a["labels"]["alertname"] == name
                && a["state"] == state
                && (a["labels"]["link"] == "dr" || a["labels"]["link"].is_null())
        })
        .cloned()
}
