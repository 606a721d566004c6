#!/bin/sh
# The qkdpfd demo (README's main command): one gateway running qkdpfd on the
# built-in QKD simulator with real nftables, a peer gateway, a wireguard-go
# tunnel between them, a freshly signed policy bundle, and an eavesdropper.
#
# As root it uses network namespaces; without root it runs the same demo
# inside `unshare -rnm` (a private user, network and mount namespace).
set -eu
cd "$(dirname "$0")/.."
top=$(pwd)

if [ "$(id -u)" != 0 ] && [ -z "${QKD_DEMO_UNSHARED:-}" ]; then
	echo "== not root: re-running inside unshare -rnm (private namespaces)"
	exec unshare -rnm --propagation private env QKD_DEMO_UNSHARED=1 sh -c \
		'mount -t tmpfs tmpfs /run && mkdir -p /run/netns /run/wireguard && exec "$0"' "$0"
fi

profile=${PROFILE:-release}
bin=$top/target/$profile
work=/var/tmp/qkdpfd-demo
conf=$top/etc/qkdpfd-sim.conf
SIGNIFY=${SIGNIFY:-signify-openbsd}
qkdctl() { "$bin/qkdctl" -f "$conf" "$@"; }
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
pinging() { # label: 10 pings through the tunnel from the peer gateway
	n=$(ip netns exec qkdemo-b ping -n -c 10 -i 0.2 -W 1 10.99.0.1 2>/dev/null |
		sed -n 's/.* \([0-9]*\) received.*/\1/p')
	echo "   $1: ${n:-0}/10 pings from the peer gateway through the tunnel answered"
}
wait_state() { # state: poll `show link dr` until it says so (max 30 s)
	i=0
	until qkdctl show link dr | grep -q "state: *$1"; do
		i=$((i + 1)); [ $i -lt 150 ] || { echo "timeout waiting for $1" >&2; exit 1; }
		sleep 0.2
	done
}

cleanup() {
	[ -n "${pid:-}" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
	"$top/scripts/gateways.sh" down qkdemo "$work" 2>/dev/null || true
}
trap cleanup EXIT INT TERM

say "building"
if [ -z "${SKIP_BUILD:-}" ]; then
	if [ "$profile" = release ]; then cargo build --release --bins -q; else cargo build --bins -q; fi
fi

say "a signing key and a freshly signed sample bundle ($SIGNIFY)"
rm -rf "$work"
mkdir -p "$work/incoming"
"$SIGNIFY" -G -n -c "qkdpfd demo policy key" -p "$work/policy.pub" -s "$work/policy.sec"
cp -R pf-anchors/bundle "$work/bundle"
(cd "$work/bundle" && sha256sum --tag policy.toml anchors/* >SHA256 &&
	"$SIGNIFY" -S -e -s "$work/policy.sec" -m SHA256 -x SHA256.sig && rm SHA256 &&
	"$SIGNIFY" -C -p "$work/policy.pub" -x SHA256.sig)

say "two gateways joined by a veth 'fibre', wireguard-go tunnel 10.99.0.1 <-> 10.99.0.2"
"$top/scripts/gateways.sh" up qkdemo "$work"
pinging "no qkdpfd yet"

say "qkdpfd -n: configuration check"
ip netns exec qkdemo-a "$bin/qkdpfd" -n -f "$conf"

say "qkdpfd -L at boot (rc.local / ExecStartPre): table installed, every link locked"
ip netns exec qkdemo-a "$bin/qkdpfd" -L -f "$conf"
pinging "daemon never started, boot lockdown in place"

say "starting qkdpfd on gateway A (nftables backend, simulator QBER source)"
ip netns exec qkdemo-a "$bin/qkdpfd" -d -f "$conf" 2>"$work/qkdpfd.log" &
pid=$!
i=0
until qkdctl status >/dev/null 2>&1; do
	i=$((i + 1)); [ $i -lt 100 ] || { cat "$work/qkdpfd.log"; exit 1; }
	sleep 0.1
done
qkdctl status
qkdctl show links
pinging "no policy bundle yet (no-policy: locked)"

say "qkdctl policy load (signed bundle)"
qkdctl policy load "$work/bundle"
wait_state open
qkdctl show links
pinging "link open"

say "eavesdropper on the fibre: qkdctl sim eve dr 1.0 (intercept-resend of every photon)"
qkdctl sim eve dr 1.0
wait_state lockdown
qkdctl show link dr
pinging "eavesdropper: link locked"
ip netns exec qkdemo-a nft list chain inet qkdpfd link_dr | sed "s/^/   /"
ip netns exec qkdemo-a nft list chain inet qkdpfd lock_dr | sed "s/^/   /"

say "eavesdropper gone: qkdctl sim eve dr 0 (recovery after recover_after = 10s below 5 %)"
qkdctl sim eve dr 0
wait_state open
qkdctl show link dr
pinging "recovered"

say "operator lockdown and unlock"
qkdctl lockdown dr
pinging "operator lockdown"
qkdctl unlock dr
wait_state open
pinging "after unlock"

say "what qkdpfd logged"
grep -E 'event=(startup|policy_loaded|band|lockdown|unlock|sim_control)' "$work/qkdpfd.log" | sed 's/^/   /'

say "done: stopping qkdpfd and removing the namespaces"
