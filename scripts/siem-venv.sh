#!/bin/sh
# Creates target/siem-venv with the tools of contrib/siem/requirements.txt
# (sigma-cli, pySigma and its sqlite backend, PCRE2 bindings). Idempotent:
# when the venv already holds exactly these pins it returns at once.
# Prints the venv's path last. Usage: scripts/siem-venv.sh [VENV_DIR]
set -eu
cd "$(dirname "$0")/.."
venv=${1:-target/siem-venv}
req=contrib/siem/requirements.txt
stamp=$venv/.requirements.txt

if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && cmp -s "$req" "$stamp"; then
	echo "$venv"
	exit 0
fi
python3 -m venv "$venv" || {
	echo "siem-venv: python3 -m venv failed (Debian: apt-get install python3-venv)" >&2
	exit 1
}
"$venv/bin/pip" install --quiet --disable-pip-version-check -r "$req"
cp "$req" "$stamp"
echo "$venv"
