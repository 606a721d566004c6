#!/bin/sh
# Runs INSIDE the kernel VM (scripts/kernel-vm.sh test): the tests that need
# Debian's own kernel, on the test executables the host built (listed one
# per line in the file $1). Every gateway pair runs kernel WireGuard through
# qkdpfd's netlink backend (WG=linux), every nft call meets Debian 6.1's
# nf_tables. Prints one line per group and exits non-zero if any failed.
#
# Under TCG the guest is slow and its clock coarse: the tests assert order
# and outcome; their time limits are the host's, which hold here with room.
set -u
list=$1
export WG=linux
# Limits stretched four times (TCG), never the outcomes asserted.
export TEST_TIME_SCALE=${TEST_TIME_SCALE:-4}
modprobe wireguard || { echo "kernel-lane: modprobe wireguard failed" >&2; exit 1; }
modprobe nf_tables || { echo "kernel-lane: modprobe nf_tables failed" >&2; exit 1; }
echo "kernel-lane: $(uname -r), WireGuard $(cat /sys/module/wireguard/version 2>/dev/null)"
mkdir -p /run/netns /var/run/wireguard

exe_of() { # test name: its executable from the list
	grep "/deps/$1-[0-9a-f]*$" "$list" | head -n 1
}

failed=""
threads=
group() { # label test-name [filter args...]
	label=$1 name=$2
	shift 2
	exe=$(exe_of "$name")
	if [ -z "$exe" ]; then
		echo "kernel-lane: no executable for tests/$name.rs in $list" >&2
		failed="$failed $label"
		return
	fi
	start=$(date +%s)
	echo "==== kernel-lane: $label"
	if "$exe" --test-threads="${threads:-${LANE_THREADS:-3}}" "$@"; then
		echo "==== kernel-lane: $label: ok ($(($(date +%s) - start)) s)"
	else
		echo "==== kernel-lane: $label: FAILED ($(($(date +%s) - start)) s)"
		failed="$failed $label"
	fi
}

group "netlink backend against wireguard.ko" wg_linux
# The key-agreement tests where the WireGuard implementation matters (the
# peer protocol's own checks — a dropped CONFIRM, forged datagrams, the
# IPv4 wildcard — run on the host, where the tunnel is wireguard-go).
# Two pairs at a time, not three: with three, a CI run under TCG saw one
# round fail (the test prints both logs if one fails again).
threads=2
group "two gateways on kernel WireGuard" keys --skip a_dropped_confirm \
	--skip forged_replayed --skip a_wildcard_listen
threads=
group "nftables backend on Debian's nf_tables" fw_nft
group "nftables loads of many links on Debian's nf_tables" fw_nft_batch
group "read-backs after our own nftables loads on Debian's nf_tables" fw_nft_reverify
group "dead-man switch on Debian's nf_tables" daemon --exact a_killed_parent_locks_every_link_by_itself
group "the demo on kernel WireGuard" demo

if [ -n "$failed" ]; then
	echo "kernel-lane: FAILED:$failed"
	exit 1
fi
echo "kernel-lane: all groups passed"
