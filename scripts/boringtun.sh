#!/bin/sh
# boringtun-cli (Cloudflare's userspace WireGuard, BSD-3-Clause) for
# tests/wg_boringtun.rs and tests/gateway_boringtun.rs: built from crates.io
# into target/boringtun, once.
# A boringtun-cli already on PATH is used as it is.
set -eu
cd "$(dirname "$0")/.."
[ -x target/boringtun/bin/boringtun-cli ] && exit 0
command -v boringtun-cli >/dev/null 2>&1 && exit 0
echo "building boringtun-cli 0.7.1 into target/boringtun"
cargo install --quiet --locked --version 0.7.1 --root target/boringtun boringtun-cli
