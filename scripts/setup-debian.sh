#!/bin/sh
# Installs what the demo and the tests need on a fresh Debian 12 machine.
# Idempotent; needs root (or sudo) only when something is missing.
# Arguments name further packages (the kernel lane's QEMU and friends).
set -eu
# make runs both README commands; procps has sysctl (the namespace tests);
# systemd has systemd-analyze (the unit's verification).
pkgs="nftables wireguard-go wireguard-tools signify-openbsd minisign mandoc iproute2 iputils-ping bmake make procps systemd curl $*"
missing=""
for p in $pkgs; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
	echo "installing:$missing"
	sudo=""
	[ "$(id -u)" = 0 ] || sudo=sudo
	$sudo apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
command -v cargo >/dev/null || { echo "cargo not found: install Rust (rustup) first" >&2; exit 1; }
