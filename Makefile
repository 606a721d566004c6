# qkdpfd — works with GNU make and BSD make.
PREFIX ?= /usr/local
DESTDIR ?=
CARGO ?= cargo
SIGNIFY ?= signify-openbsd
SECKEY ?= /etc/signify/qkdpfd-policy.sec
BUNDLE_OUT ?= bundle-signed

all: build

build:
	$(CARGO) build --release --bins

# The test suite. CI=true makes every real-component test mandatory.
# --features sandbox-probe: the engine reports what its sandbox refused
# (tests/sandbox.rs); `make build` and `make install` never include it.
test:
	sh scripts/setup-debian.sh
	if command -v cargo-nextest >/dev/null 2>&1; then \
		$(CARGO) nextest run --no-fail-fast --features sandbox-probe; \
	else \
		$(CARGO) test --no-fail-fast --features sandbox-probe; \
	fi

demo:
	sh scripts/setup-debian.sh
	sh scripts/demo.sh

bench:
	$(CARGO) bench --bench lockdown

# Type-check the whole crate for OpenBSD (needs nightly + rust-src; CI does
# not depend on it: .ci/run runs it only where the toolchain is there).
check-openbsd:
	rustup component add rust-src --toolchain nightly
	$(CARGO) +nightly check -Zbuild-std=std,panic_abort \
		--target x86_64-unknown-openbsd --all-targets --target-dir target/openbsd

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings
	mandoc -Tlint -Wwarning man/*.[58]

# Sign the sample bundle in pf-anchors/bundle with signify(1).
bundle:
	rm -rf $(BUNDLE_OUT) && cp -R pf-anchors/bundle $(BUNDLE_OUT)
	cd $(BUNDLE_OUT) && sha256sum --tag policy.toml anchors/* > SHA256 && \
		$(SIGNIFY) -S -e -s $(SECKEY) -m SHA256 -x SHA256.sig && rm SHA256

install: build
	install -d $(DESTDIR)$(PREFIX)/sbin $(DESTDIR)$(PREFIX)/man/man8 \
		$(DESTDIR)$(PREFIX)/man/man5 $(DESTDIR)$(PREFIX)/share/examples/qkdpfd
	install -m 0555 target/release/qkdpfd $(DESTDIR)$(PREFIX)/sbin/qkdpfd
	install -m 0555 target/release/qkdctl $(DESTDIR)$(PREFIX)/sbin/qkdctl
	install -m 0444 man/qkdpfd.8 man/qkdctl.8 $(DESTDIR)$(PREFIX)/man/man8/
	install -m 0444 man/qkdpfd.conf.5 $(DESTDIR)$(PREFIX)/man/man5/
	install -m 0444 etc/qkdpfd.conf etc/qkdpfd-sim.conf pf-anchors/pf.conf.example \
		$(DESTDIR)$(PREFIX)/share/examples/qkdpfd/

.PHONY: all build test demo bench check-openbsd lint bundle install
