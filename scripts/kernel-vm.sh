#!/bin/sh
# Debian's own kernel in a VM: runs commands as root under Debian's stock
# linux-image-amd64 (in-kernel WireGuard, nf_tables) booted by QEMU in TCG
# mode (no KVM here), with the host's file system visible read-only and
# throw-away tmpfs overlays on /tmp, /var, /etc and /run (virtme-ng).
#
#   kernel-vm.sh setup           fetch and prepare everything (idempotent)
#   kernel-vm.sh run 'COMMAND'   boot once, run COMMAND in the project
#                                directory as root, exit with its status
#   kernel-vm.sh test            build the kernel lane's tests on the host,
#                                boot once, run them (scripts/kernel-lane.sh)
#   kernel-vm.sh demo            build, boot once, run the demo with WG=linux
#
# Downloads only from Debian's archive (apt) and PyPI (pip). What it
# touches on the host, and nothing else:
#   - Debian packages qemu-system-x86 busybox-static kmod udev (apt-get);
#     udev only so the guest can name its virtio-serial ports (it starts
#     nothing);
#   - /lib/modules/<version>/ of the guest's kernel (copied from the .deb,
#     then depmod): the guest's root is the host's, so its modules must be
#     there; no host kernel has this version;
#   - $VM_DIR (default target/kernel-vm): the .deb, the unpacked kernel and a
#     Python venv with virtme-ng.
#
# Environment: VM_DIR, VM_MEMORY (default 2G), VM_CPUS (default 2),
# CI=true is passed into the guest. A guest that does not boot is an error
# that says so.
set -eu
cd "$(dirname "$0")/.."
top=$(pwd)
VM_DIR=${VM_DIR:-$top/target/kernel-vm}
VNG_VERSION=1.42
VM_MEMORY=${VM_MEMORY:-2G}
VM_CPUS=${VM_CPUS:-2}

die() {
	echo "kernel-vm: $*" >&2
	exit 1
}

as_root() {
	if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

setup() {
	sh scripts/setup-debian.sh qemu-system-x86 busybox-static kmod udev
	mkdir -p "$VM_DIR"
	# The package linux-image-amd64 depends on today (its name changes with
	# Debian's security updates).
	kernel_pkg() {
		apt-cache depends linux-image-amd64 2>/dev/null |
			sed -n 's/^ *Depends: \(linux-image-[0-9].*\)$/\1/p' | head -n 1
	}
	pkg=$(kernel_pkg)
	if [ -z "$pkg" ]; then # a fresh machine: no package lists yet
		as_root apt-get update -qq
		pkg=$(kernel_pkg)
	fi
	[ -n "$pkg" ] || die "apt-cache depends linux-image-amd64 names no kernel package (apt-get update?)"
	ver=${pkg#linux-image-}
	if [ ! -f "$VM_DIR/root/boot/vmlinuz-$ver" ]; then
		rm -rf "$VM_DIR/root" "$VM_DIR"/*.deb
		(cd "$VM_DIR" && apt-get download -q "$pkg" 2>&1 | grep -v "unsandboxed" || true)
		deb=$(ls "$VM_DIR"/"$pkg"_*.deb 2>/dev/null | head -n 1)
		[ -n "$deb" ] || die "apt-get download $pkg failed"
		dpkg -x "$deb" "$VM_DIR/root"
	fi
	if [ ! -f "/lib/modules/$ver/kernel/drivers/net/wireguard/wireguard.ko" ]; then
		as_root mkdir -p /lib/modules
		as_root cp -a "$VM_DIR/root/lib/modules/$ver" /lib/modules/
		as_root depmod "$ver"
	fi
	if ! "$VM_DIR/venv/bin/vng" --version 2>/dev/null | grep -q "$VNG_VERSION"; then
		rm -rf "$VM_DIR/venv"
		python3 -m venv "$VM_DIR/venv" 2>/dev/null || {
			DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
			python3 -m venv "$VM_DIR/venv"
		}
		"$VM_DIR/venv/bin/pip" install -q "virtme-ng==$VNG_VERSION"
	fi
	echo "$ver" >"$VM_DIR/version"
}

# Boots the kernel once and runs $1 in the project directory as root.
# vng must get pipes, not files: QEMU opens /proc/self/fd/1 with O_TRUNC.
run() {
	[ -f "$VM_DIR/version" ] || setup
	ver=$(cat "$VM_DIR/version")
	status_file=$(mktemp)
	echo "kernel-vm: booting Debian's $ver under QEMU (TCG)"
	# The guest's own marker tells a command's failure from a boot that
	# never reached it (vng exits 255 with no output then).
	set +e
	{
		PATH="$VM_DIR/venv/bin:$PATH" vng --disable-kvm -r "$VM_DIR/root/boot/vmlinuz-$ver" \
			--user root --memory "$VM_MEMORY" --cpus "$VM_CPUS" -- \
			"echo qkdpfd-vm-booted \$(uname -r); cd '$top' && export CI='${CI:-}' && $1" </dev/null 2>&1
		echo $? >"$status_file"
	} | tee "$VM_DIR/last.log"
	set -e
	rc=$(cat "$status_file")
	rm -f "$status_file"
	if ! grep -q "^qkdpfd-vm-booted $ver" "$VM_DIR/last.log"; then
		echo "######## kernel-vm: the VM DID NOT BOOT Debian's $ver (vng exit $rc); see $VM_DIR/last.log ########" >&2
		exit 1
	fi
	return "$rc"
}

case ${1:-} in
setup) setup ;;
run)
	[ $# -eq 2 ] || die "usage: kernel-vm.sh run 'COMMAND'"
	run "$2"
	;;
test)
	setup
	# Built on the host (the guest shares its files); the list of test
	# executables goes to the guest in a file.
	list=$VM_DIR/tests.list
	cargo test --no-run --features testing,sandbox-probe \
		--test wg_linux --test keys --test fw_nft --test fw_nft_batch --test fw_nft_reverify \
		--test daemon --test demo \
		--message-format=json |
		sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' >"$list"
	[ -s "$list" ] || die "cargo test --no-run listed no test executable"
	run "sh scripts/kernel-lane.sh '$list'"
	;;
demo)
	setup
	cargo build --release --features testing --bins
	# TCG is several times slower: the demo's waits and period stretch.
	run "WG=linux SKIP_BUILD=1 TEST_TIME_SCALE=${TEST_TIME_SCALE:-4} sh scripts/demo.sh"
	;;
*) die "usage: kernel-vm.sh setup | run 'COMMAND' | test | demo" ;;
esac
