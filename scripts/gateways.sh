#!/bin/sh
# Two gateway network namespaces joined by a veth "fibre", with a real
# WireGuard tunnel between them. Used by the demo and the tests.
#
#   gateways.sh up   PREFIX WORKDIR   creates PREFIX-a (gateway A, runs qkdpfd) and PREFIX-b
#   gateways.sh down PREFIX WORKDIR
#
# WG=linux makes the tunnel's interfaces kernel WireGuard (`ip link add type
# wireguard`: Debian's kernel, as in the VM lane); otherwise (WG unset or
# WG=userspace) they are wireguard-go's. WG_A=boringtun runs gateway A's on
# boringtun-cli instead ($BORINGTUN, target/boringtun/bin or PATH: see
# scripts/boringtun.sh), facing B's wireguard-go.
#
# Underlay: A 192.0.2.1/24 <-> B 192.0.2.2/24 (veth "fibre").
# Tunnel:   PREFIX-wa in A (10.99.0.1/24), PREFIX-wb in B (10.99.0.2/24), UDP port
#           51820. The names differ because wireguard-go's UAPI sockets
#           (/var/run/wireguard/<if>.sock) share one file system.
# Private keys are written to files (0600) in WORKDIR and handed to `wg set`
# by path, never on a command line.
set -eu
cmd=$1 prefix=$2 work=$3
A=$prefix-a B=$prefix-b

down() {
	for ns in "$A" "$B"; do
		if [ -f "$work/$ns.wg.pid" ]; then
			kill "$(cat "$work/$ns.wg.pid")" 2>/dev/null || true
			rm -f "$work/$ns.wg.pid"
		fi
		ip netns del "$ns" 2>/dev/null || true
	done
}

wg_up() { # ns if addr impl
	ns=$1 wif=$2 addr=$3 impl=$4
	case $impl in
	linux)
		ip -n "$ns" link add "$wif" type wireguard
		ip -n "$ns" addr add "$addr" dev "$wif"
		return
		;;
	userspace | boringtun) ;;
	*) echo "gateways.sh: WG=$impl: linux or userspace (WG_A: also boringtun)" >&2; exit 2 ;;
	esac
	# The daemon runs in the foreground under our pid file; its socket lives
	# in /var/run/wireguard.
	mkdir -p /var/run/wireguard
	if [ "$impl" = boringtun ]; then
		bt=${BORINGTUN:-$(dirname "$0")/../target/boringtun/bin/boringtun-cli}
		[ -x "$bt" ] || bt=$(command -v boringtun-cli) ||
			{ echo "gateways.sh: no boringtun-cli (scripts/boringtun.sh)" >&2; exit 1; }
		ip netns exec "$ns" "$bt" --disable-drop-privileges -f "$wif" >"$work/$ns.wg.log" 2>&1 &
	else
		ip netns exec "$ns" env WG_PROCESS_FOREGROUND=1 wireguard-go "$wif" >"$work/$ns.wg.log" 2>&1 &
	fi
	echo $! >"$work/$ns.wg.pid"
	i=0
	while ! ip netns exec "$ns" wg show "$wif" >/dev/null 2>&1; do
		i=$((i + 1)); [ $i -lt 100 ] || { echo "$impl did not start in $ns" >&2; exit 1; }
		sleep 0.05
	done
	ip netns exec "$ns" ip addr add "$addr" dev "$wif"
}

up() {
	down
	mkdir -p "$work"
	umask 077
	ip netns add "$A"
	ip netns add "$B"
	ip link add "$prefix-va" netns "$A" type veth peer name "$prefix-vb" netns "$B"
	ip -n "$A" link set lo up
	ip -n "$B" link set lo up
	ip -n "$A" addr add 192.0.2.1/24 dev "$prefix-va"
	ip -n "$B" addr add 192.0.2.2/24 dev "$prefix-vb"
	ip -n "$A" link set "$prefix-va" up
	ip -n "$B" link set "$prefix-vb" up
	for ns in "$A" "$B"; do
		wg genkey >"$work/$ns.key"
		wg pubkey <"$work/$ns.key" >"$work/$ns.pub"
	done
	wg_up "$A" "$prefix-wa" 10.99.0.1/24 "${WG_A:-${WG:-userspace}}"
	wg_up "$B" "$prefix-wb" 10.99.0.2/24 "${WG:-userspace}"
	ip netns exec "$A" wg set "$prefix-wa" listen-port 51820 private-key "$work/$A.key" \
		peer "$(cat "$work/$B.pub")" endpoint 192.0.2.2:51820 allowed-ips 10.99.0.2/32 \
		persistent-keepalive 1
	ip netns exec "$B" wg set "$prefix-wb" listen-port 51820 private-key "$work/$B.key" \
		peer "$(cat "$work/$A.pub")" endpoint 192.0.2.1:51820 allowed-ips 10.99.0.1/32 \
		persistent-keepalive 1
	ip -n "$A" link set "$prefix-wa" up
	ip -n "$B" link set "$prefix-wb" up
}

case $cmd in
up) up ;;
down) down ;;
*) echo "usage: gateways.sh up|down PREFIX WORKDIR" >&2; exit 2 ;;
esac
