//! Latency summaries for the benchmarks (included by path).

/// `p50 X ms  p90 X ms  p99 X ms  max X ms` of microsecond samples,
/// sorted ascending (nearest-rank percentiles).
pub fn percentiles_ms(sorted_us: &[u64]) -> String {
    let pct = |p: f64| sorted_us[((sorted_us.len() as f64 - 1.0) * p).round() as usize];
    let ms = |us: u64| us as f64 / 1000.0;
    format!(
        "p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        ms(pct(0.5)),
        ms(pct(0.9)),
        ms(pct(0.99)),
        ms(*sorted_us.last().expect("samples"))
    )
}

/// The number after ` key=` in a log line (the rotation benches).
#[allow(dead_code)]
pub fn field(line: &str, key: &str) -> Option<u64> {
    line.split(' ')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))?
        .parse()
        .ok()
}
