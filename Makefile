# qkdpfd — works with GNU make and BSD make.
# No GNU-only syntax (no $(shell), ifeq or pattern rules): what depends on
# the OS is decided by sh in the recipes.
PREFIX ?= /usr/local
DESTDIR ?=
SBINDIR ?= $(PREFIX)/sbin
BINDIR ?= $(PREFIX)/bin
MANDIR ?= $(PREFIX)/man
EXAMPLESDIR ?= $(PREFIX)/share/examples/qkdpfd
# Installed only on OpenBSD (rc.d) and Linux (systemd); both go to
# EXAMPLESDIR everywhere. OPSYS overrides `uname -s` (e.g. OPSYS=OpenBSD to
# see the OpenBSD tree on Linux).
RCDIR ?= /etc/rc.d
SYSTEMDUNITDIR ?= $(PREFIX)/lib/systemd/system
OPSYS ?=
# Where `make build` leaves the binaries; install does not build (a build as
# root would leave root-owned files in target/).
RELEASE ?= target/release
CARGO ?= cargo
# Debian calls it signify-openbsd: make bundle SIGNIFY=signify-openbsd
SIGNIFY ?= signify
SECKEY ?= /etc/signify/qkdpfd-policy.sec
BUNDLE_SRC ?= pf-anchors/bundle
BUNDLE_OUT ?= bundle-signed
# Optional: the serial written into the signed copy's policy.toml.
SERIAL ?=

MAN1 = qkdsim.1
MAN5 = qkdpfd.conf.5 qkdpfd-policy.5
MAN8 = qkdpfd.8 qkdctl.8
CONFS = qkdpfd.conf qkdpfd-sim.conf
ANCHORS = open.pf lockdown.pf open.nft lockdown.nft
# SIEM and monitoring files (contrib/), installed as examples; with the
# Sigma rules of contrib/siem/sigma/.
CONTRIB = siem/rsyslog/qkdpfd.conf siem/rsyslog/qkdpfd.rulebase \
	siem/wazuh/qkdpfd_decoders.xml siem/wazuh/qkdpfd_rules.xml \
	prometheus/qkdpfd.rules.yml grafana/qkdpfd.json
CONTRIBDIRS = siem/sigma siem/rsyslog siem/wazuh siem prometheus grafana

all: build

build:
	$(CARGO) build --release --bins

# The test suite. CI=true makes every real-component test mandatory.
# Test-only features, never in `make build` or `make install`:
#   testing        the [testing] config section (short rotation periods)
#   sandbox-probe  the engine reports what its sandbox refused (tests/sandbox.rs)
# The SIEM and monitoring tests (part of the suite) need, beyond
# setup-debian.sh's list: rsyslog (tests/siem.rs: the daemons log through a
# real rsyslogd with contrib/siem/rsyslog/), prometheus (prometheus and
# promtool: tests/prometheus.rs, contrib/prometheus, contrib/grafana) and a
# venv from PyPI for contrib/siem/check.py (sigma-cli, pySigma's sqlite
# backend, PCRE2: scripts/siem-venv.sh, target/siem-venv). tests/*boringtun.rs
# needs boringtun-cli, built from crates.io into target/boringtun
# (scripts/boringtun.sh).
SIEM_PKGS = rsyslog python3-venv prometheus
test:
	sh scripts/setup-debian.sh $(SIEM_PKGS)
	sh scripts/siem-venv.sh
	sh scripts/boringtun.sh
	if command -v cargo-nextest >/dev/null 2>&1; then \
		$(CARGO) nextest run --no-fail-fast --features testing,sandbox-probe; \
	else \
		$(CARGO) test --no-fail-fast --features testing,sandbox-probe; \
	fi

# The SIEM path and the monitoring alone (issue 12): the scenarios through
# rsyslog, their logs left in $QKDPFD_SIEM_LOGS (default target/siem-logs),
# contrib/siem/check.py's Sigma and Wazuh checks on them; promtool and a
# real Prometheus. Root.
siem-test:
	sh scripts/setup-debian.sh $(SIEM_PKGS)
	sh scripts/siem-venv.sh
	if command -v cargo-nextest >/dev/null 2>&1; then \
		$(CARGO) nextest run --no-fail-fast --features testing,sandbox-probe \
			--test siem --test prometheus; \
	else \
		$(CARGO) test --no-fail-fast --features testing,sandbox-probe \
			--test siem --test prometheus; \
	fi

# The README's main command: the two-gateway demo. scripts/demo.sh builds
# with --features testing (its configs shorten rotation in [testing]).
# WG=linux runs it on kernel WireGuard in Debian's own kernel in a VM.
WG ?=
demo:
	sh scripts/setup-debian.sh
	if [ "$(WG)" = linux ]; then sh scripts/kernel-vm.sh demo; else sh scripts/demo.sh; fi

# The kernel lane: Debian's stock kernel booted by QEMU (TCG) with the
# host's files visible; kernel WireGuard and Debian 6.1's nf_tables under
# the tests scripts/kernel-lane.sh names. Root; see scripts/kernel-vm.sh
# for what it installs and touches.
test-kernel:
	sh scripts/setup-debian.sh
	sh scripts/kernel-vm.sh test

# Coverage-guided fuzzing of every parser of untrusted bytes (FUZZING.md):
# each target for FUZZ_SECONDS; fails on a crash. Needs the nightly
# toolchain and cargo-fuzz. fuzz-smoke is CI's short run of every target.
FUZZ_SECONDS ?= 60
FUZZ_JOBS ?= 1
fuzz:
	FUZZ_SECONDS=$(FUZZ_SECONDS) FUZZ_JOBS=$(FUZZ_JOBS) sh scripts/fuzz.sh

fuzz-smoke:
	FUZZ_SECONDS=15 FUZZ_JOBS=2 sh scripts/fuzz.sh

# As root (network namespaces). rotation needs the testing feature.
bench:
	$(CARGO) bench --features testing --bench attack_wire --bench dispatch --bench flip --bench lockdown --bench rotation --bench rotation_wire

# Type-check the whole crate for OpenBSD (needs nightly + rust-src; CI does
# not depend on it: .ci/run runs it only where the toolchain is there).
check-openbsd:
	rustup component add rust-src --toolchain nightly
	$(CARGO) +nightly check -Zbuild-std=std,panic_abort \
		--target x86_64-unknown-openbsd --all-targets --target-dir target/openbsd

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings
	$(CARGO) test --test structure
	mandoc -Tlint -Wwarning man/*.[158]
	sh -n rc.d/qkdpfd

# Sign the bundle source BUNDLE_SRC (default the sample) with signify(1) into
# BUNDLE_OUT, as DESIGN §4 and qkdpfd-policy(5) describe: the SHA256 list of
# every file, signed with the list embedded (-e), then the list removed.
bundle:
	rm -rf $(BUNDLE_OUT)
	cp -R $(BUNDLE_SRC) $(BUNDLE_OUT)
	if [ -n "$(SERIAL)" ]; then \
		sed 's/^serial = .*/serial = $(SERIAL)/' $(BUNDLE_SRC)/policy.toml \
			> $(BUNDLE_OUT)/policy.toml; \
	fi
	seckey="$(SECKEY)"; case "$$seckey" in /*) ;; *) seckey="`pwd`/$$seckey" ;; esac; \
	cd $(BUNDLE_OUT) && \
	if command -v sha256 >/dev/null 2>&1; then \
		sha256 -h SHA256 policy.toml anchors/*; \
	else \
		sha256sum --tag policy.toml anchors/* > SHA256; \
	fi && \
	$(SIGNIFY) -S -e -s "$$seckey" -m SHA256 -x SHA256.sig && rm SHA256

install:
	@for b in qkdpfd qkdctl qkdsim; do \
		test -x $(RELEASE)/$$b || { \
			echo "$(RELEASE)/$$b is missing: run make build first" >&2; exit 1; }; \
	done
	install -d $(DESTDIR)$(SBINDIR) $(DESTDIR)$(BINDIR) \
		$(DESTDIR)$(MANDIR)/man1 $(DESTDIR)$(MANDIR)/man5 $(DESTDIR)$(MANDIR)/man8 \
		$(DESTDIR)$(EXAMPLESDIR)/rc.d $(DESTDIR)$(EXAMPLESDIR)/systemd \
		$(DESTDIR)$(EXAMPLESDIR)/pf-anchors/bundle/anchors
	install -m 0555 $(RELEASE)/qkdpfd $(DESTDIR)$(SBINDIR)/qkdpfd
	install -m 0555 $(RELEASE)/qkdctl $(DESTDIR)$(SBINDIR)/qkdctl
	install -m 0555 $(RELEASE)/qkdsim $(DESTDIR)$(BINDIR)/qkdsim
	for f in $(MAN1); do install -m 0444 man/$$f $(DESTDIR)$(MANDIR)/man1/$$f; done
	for f in $(MAN5); do install -m 0444 man/$$f $(DESTDIR)$(MANDIR)/man5/$$f; done
	for f in $(MAN8); do install -m 0444 man/$$f $(DESTDIR)$(MANDIR)/man8/$$f; done
	for f in $(CONFS); do install -m 0444 etc/$$f $(DESTDIR)$(EXAMPLESDIR)/$$f; done
	rm -f $(DESTDIR)$(EXAMPLESDIR)/rc.d/qkdpfd $(DESTDIR)$(EXAMPLESDIR)/systemd/qkdpfd.service
	sed 's|/usr/local|$(PREFIX)|g' rc.d/qkdpfd > $(DESTDIR)$(EXAMPLESDIR)/rc.d/qkdpfd
	sed 's|/usr/local|$(PREFIX)|g' etc/systemd/qkdpfd.service \
		> $(DESTDIR)$(EXAMPLESDIR)/systemd/qkdpfd.service
	chmod 0444 $(DESTDIR)$(EXAMPLESDIR)/rc.d/qkdpfd \
		$(DESTDIR)$(EXAMPLESDIR)/systemd/qkdpfd.service
	install -m 0444 pf-anchors/pf.conf.example $(DESTDIR)$(EXAMPLESDIR)/pf-anchors/
	install -m 0444 pf-anchors/bundle/policy.toml $(DESTDIR)$(EXAMPLESDIR)/pf-anchors/bundle/
	for f in $(ANCHORS); do \
		install -m 0444 pf-anchors/bundle/anchors/$$f \
			$(DESTDIR)$(EXAMPLESDIR)/pf-anchors/bundle/anchors/$$f; \
	done
	for d in $(CONTRIBDIRS); do install -d $(DESTDIR)$(EXAMPLESDIR)/contrib/$$d; done
	for f in $(CONTRIB) `cd contrib && ls siem/sigma/*.yml`; do \
		install -m 0444 contrib/$$f $(DESTDIR)$(EXAMPLESDIR)/contrib/$$f; \
	done
	os="$(OPSYS)"; [ -n "$$os" ] || os=`uname -s`; \
	case "$$os" in \
	OpenBSD) \
		install -d $(DESTDIR)$(RCDIR) && rm -f $(DESTDIR)$(RCDIR)/qkdpfd && \
		sed 's|/usr/local|$(PREFIX)|g' rc.d/qkdpfd > $(DESTDIR)$(RCDIR)/qkdpfd && \
		chmod 0555 $(DESTDIR)$(RCDIR)/qkdpfd ;; \
	Linux) \
		install -d $(DESTDIR)$(SYSTEMDUNITDIR) && \
		rm -f $(DESTDIR)$(SYSTEMDUNITDIR)/qkdpfd.service && \
		sed 's|/usr/local|$(PREFIX)|g' etc/systemd/qkdpfd.service \
			> $(DESTDIR)$(SYSTEMDUNITDIR)/qkdpfd.service && \
		chmod 0444 $(DESTDIR)$(SYSTEMDUNITDIR)/qkdpfd.service ;; \
	esac

# Removes what install put there; configuration, keys and state stay.
uninstall:
	rm -f $(DESTDIR)$(SBINDIR)/qkdpfd $(DESTDIR)$(SBINDIR)/qkdctl $(DESTDIR)$(BINDIR)/qkdsim
	for f in $(MAN1); do rm -f $(DESTDIR)$(MANDIR)/man1/$$f; done
	for f in $(MAN5); do rm -f $(DESTDIR)$(MANDIR)/man5/$$f; done
	for f in $(MAN8); do rm -f $(DESTDIR)$(MANDIR)/man8/$$f; done
	for f in $(CONFS) rc.d/qkdpfd systemd/qkdpfd.service pf-anchors/pf.conf.example \
		pf-anchors/bundle/policy.toml; do rm -f $(DESTDIR)$(EXAMPLESDIR)/$$f; done
	for f in $(ANCHORS); do rm -f $(DESTDIR)$(EXAMPLESDIR)/pf-anchors/bundle/anchors/$$f; done
	for f in $(CONTRIB) `cd contrib && ls siem/sigma/*.yml`; do \
		rm -f $(DESTDIR)$(EXAMPLESDIR)/contrib/$$f; done
	for d in $(CONTRIBDIRS) ""; do rmdir $(DESTDIR)$(EXAMPLESDIR)/contrib/$$d 2>/dev/null || true; done
	for d in pf-anchors/bundle/anchors pf-anchors/bundle pf-anchors rc.d systemd; do \
		rmdir $(DESTDIR)$(EXAMPLESDIR)/$$d 2>/dev/null || true; done
	rmdir $(DESTDIR)$(EXAMPLESDIR) 2>/dev/null || true
	os="$(OPSYS)"; [ -n "$$os" ] || os=`uname -s`; \
	case "$$os" in \
	OpenBSD) rm -f $(DESTDIR)$(RCDIR)/qkdpfd ;; \
	Linux) rm -f $(DESTDIR)$(SYSTEMDUNITDIR)/qkdpfd.service ;; \
	esac

.PHONY: all build test siem-test test-kernel demo bench check-openbsd fuzz fuzz-smoke lint bundle install uninstall
