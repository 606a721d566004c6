#!/bin/sh
# Makes the signed seeds of the bundle, signature and list targets with the
# real tools, as an operator would: fresh signify and minisign keys (their
# secret halves are deleted at the end, so nothing else can ever verify),
# the sample bundle signed by each, as tar and gzip'd tar. The targets read
# the public keys and signed lists from seeds/keys/. Run from fuzz/:
#   sh seeds/make-bundles.sh
set -eu
command -v signify-openbsd >/dev/null && SIGNIFY=signify-openbsd || SIGNIFY=signify
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p seeds/keys seeds/bundle_verify seeds/bundle_archive seeds/minisign \
	seeds/signify_sig seeds/sha256_list seeds/policy_toml

$SIGNIFY -G -n -p seeds/keys/signify.pub -s "$tmp/signify.sec"
minisign -G -W -f -p seeds/keys/minisign.pub -s "$tmp/minisign.key" >/dev/null

bundle() { # dir
	mkdir -p "$1/anchors"
	cp ../pf-anchors/bundle/policy.toml "$1/policy.toml"
	printf 'accept\n' >"$1/anchors/open.nft"
	printf 'drop\n' >"$1/anchors/lockdown.nft"
	(cd "$1" && sha256sum --tag policy.toml anchors/open.nft anchors/lockdown.nft >SHA256)
}

bundle "$tmp/s"
$SIGNIFY -S -e -s "$tmp/signify.sec" -m "$tmp/s/SHA256" -x "$tmp/s/SHA256.sig"
rm "$tmp/s/SHA256"
cp "$tmp/s/SHA256.sig" seeds/signify_sig/signed
sed 1,2d "$tmp/s/SHA256.sig" >seeds/keys/signify.list
cp seeds/keys/signify.list seeds/sha256_list/signed
cp "$tmp/s/policy.toml" seeds/policy_toml/shipped

bundle "$tmp/m"
minisign -S -s "$tmp/minisign.key" -m "$tmp/m/SHA256" -x "$tmp/m/SHA256.minisig" \
	-t 'fuzz seed' >/dev/null
cp "$tmp/m/SHA256" seeds/keys/minisign.list
python3 - "$tmp/m" seeds/minisign/signed <<'PY'
import sys
d, out = sys.argv[1], sys.argv[2]
lst = open(d + "/SHA256", "rb").read()
sig = open(d + "/SHA256.minisig", "rb").read()
open(out, "wb").write(len(lst).to_bytes(2, "big") + lst + sig)
PY

for b in s m; do
	tar -cf "seeds/bundle_verify/$b.tar" --owner=0 --group=0 --sort=name -C "$tmp/$b" .
	tar -czf "seeds/bundle_verify/$b.tgz" --owner=0 --group=0 --sort=name -C "$tmp/$b" .
done
cp seeds/bundle_verify/* seeds/bundle_archive/
