#!/bin/sh
# The qkdpfd demo (README's main command): two gateways, each running qkdpfd
# with real nftables and the userspace WireGuard backend, joined by a veth
# "fibre" with a wireguard-go tunnel between them. qkdsim plays the QKD link:
# two ETSI GS QKD 014 KMEs (mutual TLS) in gateway A on the underlay, and the
# link's QBER feed that BOTH qkdpfds poll. The demo shows the PSKs rotating
# and equal on both ends with traffic flowing, an eavesdropper on the fibre
# locking both ends, and the recovery when it leaves.
#
# Everything lives in /var/tmp/qkdpfd-demo (recreated on each run) and in
# the namespaces qkdemo-a and qkdemo-b; a trap removes daemons, qkdsim and
# namespaces on exit. As root it uses network namespaces; without root it
# runs the same demo inside `unshare -rnm` (private user, network and mount
# namespaces).
#
# Environment: PROFILE=debug (default release), SKIP_BUILD=1 (use the
# binaries already in target/PROFILE, or BIN_DIR), FAST=1 (shorter waits and
# fewer pings: the smoke test tests/demo.rs), WG=linux (kernel WireGuard and
# qkdpfd's netlink backend instead of wireguard-go: `make demo WG=linux`
# runs it in Debian's kernel in a VM).
set -eu
cd "$(dirname "$0")/.."
top=$(pwd)

if [ "$(id -u)" != 0 ] && [ -z "${QKD_DEMO_UNSHARED:-}" ]; then
	# Built out here: the private network inside cannot reach crates.io.
	if [ -z "${SKIP_BUILD:-}" ]; then
		echo "== building (--features testing) before entering the private namespaces"
		case ${PROFILE:-release} in
		release) cargo build --release --bins --features testing -q ;;
		*) cargo build --bins --features testing -q ;;
		esac
	fi
	echo "== not root: re-running inside unshare -rnm (private namespaces)"
	exec unshare -rnm --propagation private env QKD_DEMO_UNSHARED=1 SKIP_BUILD=1 sh -c \
		'mount -t tmpfs tmpfs /run && mkdir -p /run/netns /run/wireguard && exec "$0"' "$0"
fi

profile=${PROFILE:-release}
case ${WG:-userspace} in
linux) wg_backend=linux wg_what="kernel WireGuard" wg_note="netlink to the kernel's WireGuard" ;;
userspace) wg_backend=userspace wg_what=wireguard-go wg_note="wireguard-go's UAPI socket" ;;
*) echo "demo.sh: WG=$WG: linux or userspace" >&2; exit 2 ;;
esac
export WG=$wg_backend
bin=${BIN_DIR:-$top/target/$profile}
work=/var/tmp/qkdpfd-demo
SIGNIFY=${SIGNIFY:-signify-openbsd}
A=192.0.2.1 B=192.0.2.2 # underlay ("fibre") addresses of the gateways
# TEST_TIME_SCALE (an integer, default 1) stretches every wait, and the
# rotation period twice as much: under TCG (the kernel VM lane) each qkdctl
# call costs about a second, and a snapshot of both ends must fit in a period.
scale=${TEST_TIME_SCALE:-1}
period=$((scale == 1 ? 1 : 2 * scale))
if [ -n "${FAST:-}" ]; then
	rotate=$((2 * period))s npings=3 rounds=2
else
	rotate=$((4 * period))s npings=10 rounds=3
fi

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
ctl() { # side args: qkdctl against that gateway's daemon
	side=$1
	shift
	"$bin/qkdctl" -s "$work/$side/qkdpfd.sock" "$@"
}
field() { # side name: one value of `qkdctl show link dr`
	ctl "$1" show link dr 2>/dev/null | sed -n "s/^ *$2: *//p"
}
psk_hash() { # side: first 8 hex digits of sha256 of the base64 PSK that
	# `wg show preshared-keys` reports; the key itself only crosses pipes.
	ip netns exec "qkdemo-$1" wg show "qkdemo-w$1" preshared-keys |
		awk '{ printf "%s", $2 }' | sha256sum | cut -c1-8
}
compact() { # side: the lines of `qkdctl show link dr` worth reading here
	ctl "$1" show link dr | grep -E '^ *(state|reasons|qber|installed epoch|psk fingerprint|rotations):' |
		sed "s/^ */   $1: /"
}
pinging() { # label: pings from gateway B to A through the tunnel
	n=$(ip netns exec qkdemo-b ping -n -c "$npings" -i 0.2 -W 1 10.99.0.1 2>/dev/null |
		sed -n 's/.* \([0-9]*\) received.*/\1/p')
	answered=${n:-0}
	echo "   $1: $answered/$npings pings from gateway B to A through the tunnel answered"
}
logs() {
	for f in a/qkdpfd.log b/qkdpfd.log qkdsim.log; do
		echo "--- $f" && tail -n 20 "$work/$f" 2>/dev/null
	done
}
wait_for() { # seconds description command...: poll until the command succeeds
	deadline=$(($(date +%s) + $1 * scale)) what=$2
	shift 2
	until "$@"; do
		[ "$(date +%s)" -lt $deadline ] || { echo "timeout waiting for $what" >&2; logs >&2; exit 1; }
		sleep 0.2
	done
}
keyed_open() { both_state open && both_epoch_at_least 1; }
of() { # name: one value of the `qkdctl show link dr` output in $shown
	printf '%s\n' "$shown" | sed -n "s/^ *$1: *//p"
}
snapshot() { # sets ea eb fa fb ha hb from both ends; fails unless one epoch held throughout
	# Four qkdctl calls and two wg show: under TCG each costs about a second
	# and the whole snapshot must fall between two rotations.
	shown=$(ctl a show link dr 2>/dev/null) || shown=""
	ea=$(of "installed epoch") fa=$(of "psk fingerprint")
	shown=$(ctl b show link dr 2>/dev/null) || shown=""
	eb=$(of "installed epoch") fb=$(of "psk fingerprint")
	[ -n "$ea" ] && [ "$ea" = "$eb" ] || return 1
	ha=$(psk_hash a) hb=$(psk_hash b)
	[ "$(field a "installed epoch")" = "$ea" ] && [ "$(field b "installed epoch")" = "$eb" ]
}
both_state() { [ "$(field a state)" = "$1" ] && [ "$(field b state)" = "$1" ]; }
both_epoch_at_least() { # n: both ends installed epoch >= n
	ea=$(field a "installed epoch") eb=$(field b "installed epoch")
	[ "${ea:-0}" -ge "$1" ] 2>/dev/null && [ "${eb:-0}" -ge "$1" ] 2>/dev/null
}
eve() { # fraction: qkdsim's eavesdropper control, POST over mutual TLS
	ip netns exec qkdemo-a curl -sS --fail-with-body --cacert "$work/pki/ca.pem" \
		--cert "$work/pki/sae-SAE-A.pem" --key "$work/pki/sae-SAE-A.key" \
		-X POST -d "{\"fraction\": $1}" "https://$A:8443/sim/dr/eve" >/dev/null
}
stop_pid() { # name: ends the process whose pid the demo wrote to $work/name.pid
	# (if it still is one of the demo's: a stale file may name a reused pid)
	[ -f "$work/$1.pid" ] || return 0
	pid=$(cat "$work/$1.pid")
	case $(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) in
	*qkdpfd* | *qkdsim* | ping*) kill "$pid" 2>/dev/null || true ;;
	esac
	rm -f "$work/$1.pid"
}
cleanup() {
	for p in pings qkdpfd-a qkdpfd-b qkdpfd-s qkdsim; do stop_pid "$p"; done
	ip netns del qkdemo-s 2>/dev/null || true
	wait 2>/dev/null || true
	"$top/scripts/gateways.sh" down qkdemo "$work/net" 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say "building (--features testing: the demo's configs shorten the rotation period in [testing])"
if [ -z "${SKIP_BUILD:-}" ]; then
	if [ "$profile" = release ]; then
		cargo build --release --bins --features testing -q
	else
		cargo build --bins --features testing -q
	fi
fi

cleanup # whatever an interrupted earlier run left behind
rm -rf "$work" || { echo "cannot remove $work (left by another user's run?)" >&2; exit 1; }
mkdir -p "$work/a" "$work/b"
chmod 0755 "$work"

say "keys: a policy signing key, a freshly signed sample bundle, a peering key per gateway ($SIGNIFY)"
"$SIGNIFY" -G -n -c "qkdpfd demo policy key" -p "$work/policy.pub" -s "$work/policy.sec"
cp -R pf-anchors/bundle "$work/bundle"
# The sample bundle with a short recovery: the link reopens after 2 s below 5 %.
sed 's/^recover_after = .*/recover_after = "2s"/' pf-anchors/bundle/policy.toml >"$work/bundle/policy.toml"
(cd "$work/bundle" && sha256sum --tag policy.toml anchors/* >SHA256 &&
	"$SIGNIFY" -S -e -s "$work/policy.sec" -m SHA256 -x SHA256.sig && rm SHA256 &&
	"$SIGNIFY" -C -p "$work/policy.pub" -x SHA256.sig)
for side in a b; do
	"$SIGNIFY" -G -n -c "qkdpfd demo peering key $side" -p "$work/$side/peer.pub" -s "$work/$side/peer.sec"
done

say "first one gateway alone on qkdpfd's built-in QKD simulator: etc/qkdpfd-sim.conf as shipped"
# Its own namespace and the paths the file names (the key made above).
ip netns add qkdemo-s
ip netns exec qkdemo-s "$bin/qkdpfd" -d -f "$top/etc/qkdpfd-sim.conf" 2>"$work/sim.log" &
echo $! >"$work/qkdpfd-s.pid"
simctl() { "$bin/qkdctl" -s "$work/qkdpfd.sock" "$@"; }
sim_state() { simctl show link dr 2>/dev/null | grep -q "^ *state: *$1\$"; }
sim_lines() { simctl show link dr | grep -E '^ *(state|reasons|band|qber):' | sed "s/^ */   $1: /"; }
wait_for 10 "qkdpfd on the simulator" sh -c "\"$bin/qkdctl\" -s \"$work/qkdpfd.sock\" status >/dev/null 2>&1"
simctl policy load "$work/bundle" | sed 's/^/   /'
wait_for 10 "the simulated link open" sim_state open
sim_lines "25 km, no eavesdropper"
simctl sim eve dr 1 >/dev/null
wait_for 10 "the simulated link locked" sim_state lockdown
sim_lines "25 km, eavesdropper"
stop_pid qkdpfd-s
ip netns del qkdemo-s

say "two gateways joined by a veth 'fibre' ($A <-> $B), $wg_what tunnel 10.99.0.1 <-> 10.99.0.2"
"$top/scripts/gateways.sh" up qkdemo "$work/net"
pinging "no qkdpfd yet"

say "qkdsim in gateway A: KME-A ($A:8443, for SAE-A) and KME-B ($A:8444, for SAE-B), one 25 km link 'dr'"
"$bin/qkdsim" pki --dir "$work/pki" --kme a --kme b --sae SAE-A --sae SAE-B --host "$A" >/dev/null
cat >"$work/qkdsim.toml" <<EOF
# Two ETSI GS QKD 014 KMEs sharing one simulated link; every KME listener
# also serves the link's QBER feed (GET /qber/dr) and the eavesdropper
# control (POST /sim/dr/eve).
[kme.a]
listen = "$A:8443"
kme_id = "KME-A"
sae_ids = ["SAE-A"]
ca = "pki/ca.pem"
cert = "pki/kme-a.pem"
key = "pki/kme-a.key"

[kme.b]
listen = "$A:8444"
kme_id = "KME-B"
sae_ids = ["SAE-B"]
ca = "pki/ca.pem"
cert = "pki/kme-b.pem"
key = "pki/kme-b.key"

[link.dr]
kmes = ["a", "b"]

[qber]
measure_interval = "250ms"
EOF
ip netns exec qkdemo-a "$bin/qkdsim" serve --config "$work/qkdsim.toml" 2>"$work/qkdsim.log" &
echo $! >"$work/qkdsim.pid"
wait_for 10 "qkdsim" sh -c "ip netns exec qkdemo-a ss -ltn | grep -q ':8444 '"

gateway_conf() { # side: writes $work/side/qkdpfd.conf
	side=$1
	case $side in
	a) me=$A far=$B far_side=b sae=SAE-A peer_sae=SAE-B role=master kme_port=8443 ;;
	*) me=$B far=$A far_side=a sae=SAE-B peer_sae=SAE-A role=slave kme_port=8444 ;;
	esac
	d=$work/$side
	cat >"$d/qkdpfd.conf" <<EOF
# qkdpfd on gateway $side of the demo (written by scripts/demo.sh).

[daemon]
user = "nobody"                      # the engine's user (Debian has no _qkdpfd)
state_dir = "$d/state"
socket = "$d/qkdpfd.sock"

[policy]
pubkeys = ["$work/policy.pub"]
dir = "$d/state/policy"

[firewall]
backend = "nftables"

[wireguard]
backend = "$wg_backend"                # $wg_note

[peering]                            # OFFER/CONFIRM with the far qkdpfd, on the underlay
listen = "$me:8071"
key = "$d/peer.sec"

[kme.site]                           # this gateway's KME in qkdsim, mutual TLS
url = "https://$A:$kme_port"
ca = "$work/pki/ca.pem"
cert = "$work/pki/sae-$sae.pem"
key = "$work/pki/sae-$sae.key"
sae_id = "$sae"

[qber.feed]                          # qkdsim's QBER feed: JSON in percent
driver = "http-json"
url = "https://$A:$kme_port/qber/{qber_id}"
pointer = "/links/0/qber"
scale = 0.01
poll = "250ms"
ca = "$work/pki/ca.pem"
cert = "$work/pki/sae-$sae.pem"
key = "$work/pki/sae-$sae.key"

[link.dr]
qber = "feed"
qber_id = "dr"
kme = "site"
peer_sae_id = "$peer_sae"
role = "$role"
peer = "$far:8071"
peer_pubkey = "$(sed -n 2p "$work/$far_side/peer.pub")"
wg_interface = "qkdemo-w$side"
wg_peer = "$(cat "$work/net/qkdemo-$far_side.pub")"
wg_port = 51820
addresses = ["$far"]

[testing]                            # only in builds with --features testing
rotate = "$rotate"                        # instead of the bundle's 300 s (WireGuard's floor is 120 s)
EOF
}
gateway_conf a
gateway_conf b

say "qkdpfd -n: configuration check of both gateways (gateway A's link below)"
for side in a b; do
	ip netns exec "qkdemo-$side" "$bin/qkdpfd" -n -f "$work/$side/qkdpfd.conf" 2>&1 | sed "s/^/   $side: /"
done
sed -n '/^\[link.dr\]/,$p' "$work/a/qkdpfd.conf" | sed 's/^/   /'

say "starting qkdpfd on both gateways; no policy bundle yet, so every link is locked"
for side in a b; do
	ip netns exec "qkdemo-$side" "$bin/qkdpfd" -d -f "$work/$side/qkdpfd.conf" 2>"$work/$side/qkdpfd.log" &
	echo $! >"$work/qkdpfd-$side.pid"
done
for side in a b; do
	wait_for 10 "qkdpfd on gateway $side" ctl "$side" status >/dev/null 2>&1
done
ctl a show links | sed 's/^/   a: /'
ctl b show links | sed 's/^/   b: /'
pinging "no policy (no-policy: locked)"

say "qkdctl policy load (the same signed bundle on both gateways)"
ctl a policy load "$work/bundle"
ctl b policy load "$work/bundle"
wait_for 20 "both ends open with a first key" keyed_open
compact a
compact b
pinging "link open"

say "PSK rotation every $rotate ([testing] rotate), a ping stream from B to A running throughout"
echo "   each line: the installed epoch, qkdctl's psk fingerprint, and the first 8 hex digits of"
echo "   sha256 over the PSK that 'wg show <if> preshared-keys' reports (the key itself is never shown)"
ip netns exec qkdemo-b ping -n -i 0.1 -W 1 10.99.0.1 >"$work/pings.txt" 2>&1 &
echo $! >"$work/pings.pid"
last="" r=0 differ=0
while :; do
	# Three rotation periods: a snapshot that a rotation cut is taken again.
	wait_for $((10 + 3 * ${rotate%s} / scale)) "both ends on one epoch" snapshot
	if [ "$fa" = "$fb" ] && [ "$ha" = "$hb" ]; then verdict="equal"; else
		verdict="DIFFERENT" differ=$((differ + 1))
	fi
	[ -z "$last" ] && verdict="$verdict (current key)"
	[ -n "$last" ] && [ "$ha" != "$last" ] && verdict="$verdict, changed"
	last=$ha
	printf '   epoch %-3s A: fingerprint %s wg %s | B: fingerprint %s wg %s  -> %s\n' \
		"$ea" "$fa" "$ha" "$fb" "$hb" "$verdict"
	[ $r -lt $rounds ] || break
	r=$((r + 1))
	next=$((ea + 1))
	wait_for 30 "rotation to epoch $next" both_epoch_at_least "$next"
done
[ "$differ" = 0 ] || { echo "the two ends hold different PSKs" >&2; logs >&2; exit 1; }
ping_pid=$(cat "$work/pings.pid")
kill -INT "$ping_pid" && rm -f "$work/pings.pid"
wait "$ping_pid" || true # ping prints its summary on SIGINT
# Lost = answers missing below the last one answered; an echo still in
# flight when the stream was stopped is counted apart, not as lost.
lost=$(awk -F'icmp_seq=' '/icmp_seq=/ { split($2, a, " "); n++; if (a[1] > m) m = a[1] }
	END { print m - n + 0 }' "$work/pings.txt")
echo "   ping stream across the rotations: $(sed -n 's/^\([0-9]* packets transmitted, [0-9]* received\).*/\1/p' "$work/pings.txt") ($lost lost before the last answer)"
echo "   (after each rotation gateway A re-creates its WireGuard peer, [wireguard] new_session, so a new"
echo "   session starts under the new key at once; an echo B sent on the old one just then may be lost)"
ctl a show link dr | grep -E '^ *(key role|epoch|installed epoch|psk fingerprint|key age|rotations|kme stored keys):' |
	sed 's/^/   a: /'

say "eavesdropper on the fibre: qkdsim POST /sim/dr/eve {\"fraction\": 1.0} (intercept-resend of every photon)"
eve 1.0
wait_for 15 "lockdown on both ends" both_state lockdown
compact a
compact b
pinging "eavesdropper: both ends locked"
for chain in link_dr lock_dr; do
	ip netns exec qkdemo-a nft list chain inet qkdpfd "$chain" | grep -vE '^(table|})' | sed 's/^/   a: /'
done

say "eavesdropper gone: fraction 0 (recovery after recover_after = 2s below 5 % and a fresh key)"
eve 0
wait_for 40 "both ends open again" both_state open
compact a
compact b
pinging "recovered"
if [ "$answered" != "$npings" ]; then
	# The key still rotates every 2 s, and each rotation re-creates A's
	# peer: an echo B sent on the old session just then is lost (as in the
	# stream above). Once more; a link that did not recover fails again.
	pinging "recovered (again: an echo lost to a rotation)"
fi

say "what the two qkdpfds logged (excerpt)"
for side in a b; do
	grep -E 'event=(policy_loaded|key_rotated|lockdown|unlock)' "$work/$side/qkdpfd.log" |
		sed 's/^.*\(event=\)/\1/' | tail -n 8 | sed "s/^/   $side: /"
done

say "done: stopping qkdpfd, qkdsim and $wg_what, removing the namespaces"
