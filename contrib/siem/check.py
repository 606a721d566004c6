#!/usr/bin/env python3
"""Tests qkdpfd's Sigma rules and Wazuh decoder/rules against real logs.

Usage: check.py [options] LOGDIR

LOGDIR holds, for each scenario of expect.yml, the logs a real qkdpfd sent
through rsyslog:
  <scenario>.jsonl  one JSON object per line: rsyslog's parse of the
                    message's key=value fields (event, proc, link, ...) and
                    the syslog metadata (timestamp, host, program, ...)
  <scenario>.log    the same messages as rsyslog's traditional lines
                    ("Dec  3 11:00:00 gw1 qkdpfd[123]: event=lockdown ...")

Sigma: every rule of sigma/*.yml is converted with pySigma's sqlite backend
(correlation rules included) and the SQL is run on an sqlite table `logs`
made of the scenario's .jsonl. Wazuh: every PCRE2 pattern of
wazuh/qkdpfd_decoders.xml and wazuh/qkdpfd_rules.xml is run with PCRE2 on
the scenario's .log lines, after the syslog header is taken off as Wazuh's
pre-decoder does; the decoded fields must equal the .jsonl's fields of the
same message. expect.yml says on which scenarios each rule must fire and
where it may; a rule firing anywhere else (on `clean` above all) is a
mismatch, and so is a rule that stays silent on its scenario.

Prints a rule x scenario table of hit counts for each. Exit status: 0 when
everything matched the expectations, 1 on any mismatch, 2 on a usage error
or missing files or tools.
"""

import argparse
import datetime
import json
import os
import re
import sqlite3
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
EXIT_MISMATCH = 1
EXIT_USAGE = 2


def usage_error(msg):
    print(f"check.py: {msg}", file=sys.stderr)
    sys.exit(EXIT_USAGE)


try:
    import pcre2  # noqa: F401 (wazuh_emulation.py: a usage error here when missing)
    import yaml
    from sigma.backends.sqlite import sqliteBackend
    from sigma.collection import SigmaCollection
except ImportError as e:  # pragma: no cover
    usage_error(
        f"{e}; run scripts/siem-venv.sh and use target/siem-venv/bin/python"
    )


class Mismatches:
    def __init__(self):
        self.items = []

    def add(self, what):
        self.items.append(what)
        print(f"MISMATCH: {what}")


# ---------------------------------------------------------------- the logs


from records import flatten, parse_time  # noqa: E402


def load_jsonl(path, cfg):
    """The records of one .jsonl, each with `timestamp` (UTC, ISO 8601 with
    milliseconds: what the sqlite backend's correlations read) and `host`
    set from whichever key this rsyslog template used."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                usage_error(f"{path}:{n}: not JSON: {e}")
            if not isinstance(rec, dict):
                usage_error(f"{path}:{n}: not a JSON object")
            rec = flatten(rec)
            t = None
            for k in cfg["time_keys"]:
                if k in rec:
                    t = parse_time(rec[k])
                    if t:
                        break
            if t is None:
                usage_error(f"{path}:{n}: no timestamp in keys {cfg['time_keys']}")
            rec["timestamp"] = (
                t.astimezone(datetime.timezone.utc)
                .isoformat(timespec="milliseconds")
                .replace("+00:00", "Z")
            )
            if "host" not in rec:
                for k in cfg["host_keys"]:
                    if k in rec:
                        rec["host"] = rec[k]
                        break
            rows.append(rec)
    return rows


def qkdpfd_records(rows, cfg):
    """The records that are qkdpfd's (program name), in order."""
    out = []
    for r in rows:
        prog = next((r[k] for k in cfg["program_keys"] if k in r), None)
        if prog is None or str(prog) == "qkdpfd":
            out.append(r)
    return out


def make_db(rows, numeric):
    """An in-memory sqlite db with one table `logs`: one column per key of
    any record (TEXT), the catalogue's numeric fields NUMERIC (as a SIEM
    maps them, so `suppressed >= 10` compares numbers, not text)."""
    cols = []
    for r in rows:
        for k in r:
            if k not in cols:
                cols.append(k)
    db = sqlite3.connect(":memory:")

    def q(name):
        return '"' + name.replace('"', '""') + '"'

    decl = ", ".join(
        f"{q(c)} {'NUMERIC' if c in numeric else 'TEXT'}" for c in cols
    )
    db.execute(f"CREATE TABLE logs ({decl})")
    if cols:
        marks = ", ".join("?" for _ in cols)
        db.executemany(
            f"INSERT INTO logs ({', '.join(q(c) for c in cols)}) VALUES ({marks})",
            [[r.get(c) for c in cols] for r in rows],
        )
    return db, cols


# -------------------------------------------------------------- expectations


def check_expectations(kind, hits, expect, scenarios, quiet, mm, min_level=None):
    """hits: {rule: {scenario: count}}. expect: {rule: {fires, may}}."""
    untested = []
    for rule in sorted(set(hits) | set(expect)):
        if rule not in expect:
            mm.add(f"{kind} rule {rule} has no entry in expect.yml")
            continue
        if rule not in hits:
            mm.add(f"{kind} rule {rule} of expect.yml does not exist")
            continue
        e = expect[rule] or {}
        fires = e.get("fires") or []
        may = e.get("may") or []
        for s in fires + may:
            if s not in scenarios:
                mm.add(f"{kind} rule {rule}: unknown scenario {s} in expect.yml")
        if not fires:
            untested.append((rule, e.get("untested", "no scenario")))
        for s in scenarios:
            n = hits[rule].get(s, 0)
            if s in fires and n == 0:
                mm.add(f"{kind} rule {rule} did not fire on {s}")
            elif s in quiet and n > 0 and s not in fires + may:
                if min_level is None or min_level(rule):
                    mm.add(f"{kind} rule {rule} fired {n}x on {s}, which must stay quiet")
            elif n > 0 and s not in fires + may:
                if min_level is None or min_level(rule):
                    mm.add(f"{kind} rule {rule} fired {n}x on {s}, not expected there")
    return untested


def print_table(title, rows, scenarios, labels=None):
    names = [labels.get(r, r) if labels else r for r in rows]
    w0 = max([len(title)] + [len(n) for n in names])
    heads = [s for s in scenarios]
    widths = [max(len(h), 4) for h in heads]
    print()
    print(title.ljust(w0) + " | " + " | ".join(h.rjust(w) for h, w in zip(heads, widths)))
    print("-" * w0 + "-+-" + "-+-".join("-" * w for w in widths))
    for r, name in zip(rows, names):
        cells = [str(rows[r].get(s, 0)) for s in scenarios]
        print(name.ljust(w0) + " | " + " | ".join(c.rjust(w) for c, w in zip(cells, widths)))


# --------------------------------------------------------------------- Sigma


def sigma_rules(rules_dir):
    """{rule name: (title, sql)} for every output rule of every file: the
    file's stem names it (one output rule a file; a correlation's base rules
    are not output)."""
    backend = sqliteBackend()
    out = {}
    files = sorted(f for f in os.listdir(rules_dir) if f.endswith(".yml"))
    if not files:
        usage_error(f"no Sigma rules in {rules_dir}")
    for f in files:
        path = os.path.join(rules_dir, f)
        with open(path, encoding="utf-8") as fh:
            coll = SigmaCollection.from_yaml(fh.read())
        queries = backend.convert(coll)
        titles = [
            r.title
            for r in coll.rules
            if getattr(r, "_output", True)
        ]
        if len(queries) != 1:
            usage_error(f"{f}: {len(queries)} queries, expected one output rule a file")
        out[f[: -len(".yml")]] = (titles[-1] if titles else f, queries[0])
    return out


def load_catalogue(path):
    """{event name: set of field names} of qkdpfd's own events, read from
    the catalogue in src/log/catalogue.rs (the one list the daemon, its man
    page and these rules share; qkdsim's entries left out)."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    body = text[text.index("catalogue! {") :]
    entries = re.findall(
        r'\b[A-Z]\w*\s+"([a-z0-9_]+)"\s+[A-Z]\w*(?:\s*\[[^\]]*\])?\s*'
        r'\(((?:\s*"[^"]*"\s*,?)*)\)\s*(qkdsim)?',
        body,
    )
    cat = {}
    for name, fields, qkdsim in entries:
        if qkdsim:
            continue
        cat[name] = {x.strip("[]") for x in re.findall(r'"([^"]*)"', fields)}
    if not cat:
        usage_error(f"{path}: no catalogue entries found")
    return cat


def check_sigma_names(rules_dir, cat, meta, mm):
    """Every event a Sigma rule names is in the catalogue, and so is every
    field: in a detection that names events, each other field must be a
    field of one of those events (so a misspelt or misplaced field, which
    would just never match, is caught). Returns the count of bad names."""
    all_fields = set().union(*cat.values()) | {"event", "proc"} | set(meta)
    bad = 0

    def items(d):
        for it in d.detection_items:
            if hasattr(it, "detection_items"):
                yield from items(it)
            else:
                yield it

    for f in sorted(os.listdir(rules_dir)):
        if not f.endswith(".yml"):
            continue
        with open(os.path.join(rules_dir, f), encoding="utf-8") as fh:
            coll = SigmaCollection.from_yaml(fh.read())
        for r in coll.rules:
            used = set(getattr(r, "group_by", None) or []) | set(getattr(r, "fields", None) or [])
            for dname, d in getattr(getattr(r, "detection", None), "detections", {}).items():
                its = list(items(d))
                events = {str(v) for it in its if it.field == "event" for v in it.value}
                for e in sorted(events - set(cat)):
                    bad += 1
                    mm.add(f"sigma {f}: event {e} is not in the catalogue")
                for it in its:
                    if it.field in (None, "event", "proc"):
                        continue
                    ok = [e for e in events if e in cat and it.field in cat[e]]
                    if events and not ok:
                        bad += 1
                        mm.add(f"sigma {f} ({dname}): field {it.field} belongs to none of {sorted(events)}")
                    used.add(it.field)
            for u in sorted(used - all_fields):
                bad += 1
                mm.add(f"sigma {f}: field {u} is in no event of the catalogue")
    return bad


def run_sigma_check(rules_dir, mm):
    """sigma-cli's validation. The two validators that download MITRE data
    (ATT&CK, D3FEND) cannot run offline and are left out."""
    sigma = os.path.join(os.path.dirname(sys.executable), "sigma")
    if not os.path.exists(sigma):
        usage_error("sigma-cli is not installed next to this python (scripts/siem-venv.sh)")
    cmd = [sigma, "check", "--fail-on-issues", "-x", "attacktag", "-x", "d3_fendtag", rules_dir]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    summary = [l for l in p.stdout.splitlines() if l.startswith("Found ")]
    print(f"sigma check: exit {p.returncode}; {summary[0] if summary else p.stdout[-500:]}")
    if p.returncode != 0:
        print(p.stdout[-3000:])
        print(p.stderr[-3000:], file=sys.stderr)
        mm.add("sigma check found errors or issues")


# --------------------------------------------------------------------- Wazuh

from wazuh_emulation import Decoders, WazuhRules, unescape, wazuh_scenario  # noqa: E402,F401 (unescape: selftest.py)


# ---------------------------------------------------------------------- main


def main():
    ap = argparse.ArgumentParser(
        description="Test qkdpfd's Sigma and Wazuh rules on real logs (see the module doc)."
    )
    ap.add_argument("logdir", help="directory of <scenario>.jsonl and <scenario>.log")
    ap.add_argument("--expect", default=os.path.join(HERE, "expect.yml"))
    ap.add_argument("--sigma-dir", default=os.path.join(HERE, "sigma"))
    ap.add_argument("--wazuh-dir", default=os.path.join(HERE, "wazuh"))
    ap.add_argument("--no-sigma-check", action="store_true", help="skip `sigma check`")
    ap.add_argument("--catalogue", default=os.path.join(HERE, "..", "..", "src", "log", "catalogue.rs"),
                    help="the event catalogue (src/log/catalogue.rs)")
    ap.add_argument("--show-sql", action="store_true", help="print each converted query")
    args = ap.parse_args()

    if not os.path.isdir(args.logdir):
        usage_error(f"{args.logdir}: not a directory")
    try:
        with open(args.expect, encoding="utf-8") as f:
            expect = yaml.safe_load(f)
    except OSError as e:
        usage_error(f"{args.expect}: {e}")
    cfg = expect["logs"]
    scenarios = expect["scenarios"]
    quiet = expect["quiet"]
    missing = [
        os.path.join(args.logdir, f"{s}.{ext}")
        for s in scenarios
        for ext in ("jsonl", "log")
        if not os.path.isfile(os.path.join(args.logdir, f"{s}.{ext}"))
    ]
    if missing:
        usage_error("missing log files: " + ", ".join(missing))

    mm = Mismatches()
    print(f"logs: {os.path.abspath(args.logdir)}")

    # Sigma.
    if not args.no_sigma_check:
        run_sigma_check(args.sigma_dir, mm)
    rules = sigma_rules(args.sigma_dir)
    if not os.path.isfile(args.catalogue):
        usage_error(f"{args.catalogue}: no event catalogue")
    cat = load_catalogue(args.catalogue)
    bad = check_sigma_names(args.sigma_dir, cat, ["host"], mm)
    print(f"catalogue: {len(cat)} events; {bad} names in the Sigma rules not in it")
    if args.show_sql:
        for name, (_, sql) in rules.items():
            print(f"-- {name}\n{sql}\n")
    numeric = set(cfg["numeric_fields"])
    records = {}
    sigma_hits = {name: {} for name in rules}
    for s in scenarios:
        rows = qkdpfd_records(load_jsonl(os.path.join(args.logdir, f"{s}.jsonl"), cfg), cfg)
        records[s] = rows
        events = sum(1 for r in rows if "event" in r)
        if events == 0:
            mm.add(f"{s}.jsonl: no qkdpfd event")
        db, _ = make_db(rows, numeric)
        for name, (_, sql) in rules.items():
            try:
                n = len(db.execute(sql).fetchall())
            except sqlite3.Error as e:
                # A column no record of this scenario has: the rule cannot
                # match here. Any other error is the rule's or the backend's.
                if "no such column" in str(e):
                    n = 0
                else:
                    mm.add(f"sigma {name} on {s}: {e}")
                    n = 0
            sigma_hits[name][s] = n
        db.close()
        print(f"{s}: {len(rows)} qkdpfd records, {events} events")
    print_table("Sigma rule", sigma_hits, scenarios)
    sigma_untested = check_expectations("sigma", sigma_hits, expect["sigma"], scenarios, quiet, mm)

    # Wazuh.
    decoders = Decoders(os.path.join(args.wazuh_dir, "qkdpfd_decoders.xml"), mm)
    wrules = WazuhRules(os.path.join(args.wazuh_dir, "qkdpfd_rules.xml"), mm)
    # The decoder must take every field of the catalogue (a field it drops
    # is one no Wazuh rule can test) and no other; the rules may test only
    # decoded fields, and name only events of the catalogue.
    decoded = {o for kids in decoders.children.values() for d in kids for o in d["order"]}
    decoded |= {o for d in decoders.roots for o in d["order"]}
    want = set().union(*cat.values()) | {"event", "proc", "engine_event", "engine_proc"}
    for f in sorted(want - decoded):
        mm.add(f"wazuh decoder: catalogue field {f} is not decoded")
    for f in sorted(decoded - want):
        mm.add(f"wazuh decoder: field {f} is not in the catalogue")
    for rid, rule in wrules.rules.items():
        for name, _, text in rule["fields"]:
            if name not in decoded:
                mm.add(f"wazuh rule {rid}: field {name} is not decoded")
            if name == "event":
                for e in re.findall(r"[a-z][a-z0-9_]*", text):
                    if e not in cat:
                        mm.add(f"wazuh rule {rid}: event {e} is not in the catalogue")
        for f in rule["same_field"]:
            if f not in decoded:
                mm.add(f"wazuh rule {rid}: same_field {f} is not decoded")
    print(
        f"\nwazuh: {decoders.patterns} decoder patterns, {wrules.patterns} rule field patterns, all PCRE2"
    )
    wazuh_hits = {rid: {} for rid in wrules.order}
    for s in scenarios:
        hits, decoded, bad = wazuh_scenario(
            decoders, wrules, s, os.path.join(args.logdir, f"{s}.log"), records[s], cfg, mm
        )
        print(f"{s}: {decoded} event lines decoded, {bad} with wrong or missing fields")
        for rid, n in hits.items():
            wazuh_hits[rid][s] = n
    labels = {
        rid: f"{rid} L{r['level']:<2} {(r['description'] or '')[:40]}"
        for rid, r in wrules.rules.items()
    }
    print_table("Wazuh rule", wazuh_hits, scenarios, labels)
    high = lambda rid: wrules.rules[rid]["level"] >= 10  # noqa: E731
    wexpect = {str(k): v for k, v in expect["wazuh"].items()}
    # Rules below level 10 may fire anywhere (the record-only levels); the
    # rest must follow expect.yml like the Sigma rules.
    wazuh_untested = check_expectations(
        "wazuh", wazuh_hits, wexpect, scenarios, quiet, mm, min_level=high
    )

    print()
    for kind, lst in (("sigma", sigma_untested), ("wazuh", wazuh_untested)):
        for rule, why in lst:
            print(f"UNTESTED: {kind} rule {rule}: {why}")
    if mm.items:
        print(f"\n{len(mm.items)} mismatches")
        return EXIT_MISMATCH
    print("\nall rules matched their expectations")
    return 0


if __name__ == "__main__":
    sys.exit(main())
