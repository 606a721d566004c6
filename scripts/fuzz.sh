#!/bin/sh
# Runs every fuzz target (or those named) with libFuzzer, with debug
# assertions (overflow checks) and without a sanitizer (the code is safe
# Rust: the targets assert, and fuzz/src/lib.rs caps allocations). Each
# starts from the committed seeds (fuzz/seeds/TARGET) and its working
# corpus (fuzz/corpus/TARGET, not committed). Fails when any target
# crashes, with the input left in fuzz/artifacts/TARGET/. Needs the
# nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`); see
# FUZZING.md.
#   sh scripts/fuzz.sh [TARGET...]
# FUZZ_SECONDS  seconds per target (default 60)
# FUZZ_RUNS     executions per target instead (a campaign: FUZZ_RUNS=10000000)
# FUZZ_JOBS     targets run at once (default 1)
# FUZZ_LOG      where each target's libFuzzer output goes (default
#               fuzz/corpus/logs); its last lines are the final stats
set -eu
cd "$(dirname "$0")/../fuzz"
secs=${FUZZ_SECONDS:-60}
jobs=${FUZZ_JOBS:-1}
log=${FUZZ_LOG:-corpus/logs}
cargo +nightly fuzz build -O -a -s none
targets=${*:-$(cargo +nightly fuzz list)}
mkdir -p "$log"
bin=target/x86_64-unknown-linux-gnu/release
if [ -n "${FUZZ_RUNS:-}" ]; then
	limit="-runs=$FUZZ_RUNS"
else
	limit="-max_total_time=$secs"
fi

stat() { # log name
	grep -a "stat::$2:" "$1" | grep -o '[0-9]*$' || true
}

one() { # target
	t=$1
	mkdir -p "corpus/$t" "artifacts/$t" "seeds/$t"
	# -max_len keeps inputs near the parsers' own limits; -rss_limit_mb
	# backs up the allocation cap of fuzz/src/lib.rs.
	case $t in
	bundle_*) max=1048576 ;;
	imsg_* | ctl_request) max=262144 ;;
	*) max=65536 ;;
	esac
	start=$(date +%s)
	if "$bin/$t" "$limit" -max_len=$max -rss_limit_mb=2048 \
		-artifact_prefix="artifacts/$t/" -print_final_stats=1 \
		"corpus/$t" "seeds/$t" >"$log/$t.log" 2>&1; then
		cov=$(grep -a -o 'cov: [0-9]*' "$log/$t.log" | tail -1 | grep -o '[0-9]*')
		echo "fuzz $t: ok: $(stat "$log/$t.log" number_of_executed_units) runs" \
			"in $(($(date +%s) - start)) s, $(stat "$log/$t.log" average_exec_per_sec)/s," \
			"cov $cov, peak RSS $(stat "$log/$t.log" peak_rss_mb) MB"
	else
		echo "fuzz $t: CRASH (fuzz/$log/$t.log; input in fuzz/artifacts/$t/)"
		grep -a -m1 -A3 'panicked\|over the target\|ERROR: libFuzzer' "$log/$t.log" || tail -20 "$log/$t.log"
		touch "$log/$t.crashed"
	fi
}

rm -f "$log"/*.crashed
running=0
for t in $targets; do
	one "$t" &
	running=$((running + 1))
	if [ "$running" -ge "$jobs" ]; then
		wait
		running=0
	fi
done
wait
crashed=$(cd "$log" && ls -- *.crashed 2>/dev/null | sed 's/\.crashed$//' | tr '\n' ' ')
[ -z "$crashed" ] || { echo "fuzz: crashes in: $crashed"; exit 1; }
echo "fuzz: no crash"
