"""The Wazuh half of check.py: Wazuh's syslog pre-decoder, the decoders and
rules of wazuh/*.xml run with PCRE2, and their fields compared with the
JSON records of the same messages. An emulation, not Wazuh: see README.md
(wazuh-logtest itself is not run here).
"""

import re
import xml.etree.ElementTree as ET

import pcre2

from records import parse_time


# Wazuh's syslog pre-decoder, for the line formats rsyslog writes: the
# traditional "Mmm dd hh:mm:ss host program[pid]: message" and an RFC 3339
# time stamp in its place. What is left after ": " is the message that the
# decoders and rules see (Wazuh's `log`); program_name and hostname are
# separate fields.
SYSLOG_HEADER = pcre2.compile(
    r"^(?:(?<time>[A-Z][a-z]{2} [ 0-9][0-9] [0-9]{2}:[0-9]{2}:[0-9]{2})"
    r"|(?<time3339>[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:.]+(?:Z|[+-][0-9]{2}:[0-9]{2})))"
    r" (?<host>\S+) (?<program>[^\[\]: ]+)(?:\[(?<pid>[0-9]+)\])?: (?<log>.*)$"
)


def predecode(line):
    m = SYSLOG_HEADER.match(line)
    if not m:
        return None
    t = m.group("time") or m.group("time3339")
    return {
        "time": parse_time(t),
        "hostname": m.group("host"),
        "program_name": m.group("program"),
        "pid": m.group("pid"),
        "log": m.group("log"),
    }


def xml_items(path):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    # A Wazuh file holds several top-level elements: wrap them.
    return ET.fromstring("<root>" + text + "</root>")


def compile_pcre2(el, where, mm):
    if el is None:
        return None
    if el.get("type") != "pcre2":
        mm.add(f"{where}: <{el.tag}> is not type=\"pcre2\"")
        return None
    try:
        return pcre2.compile(el.text or "")
    except Exception as e:  # the binding raises its own error types
        mm.add(f"{where}: PCRE2 refused <{el.tag}>{el.text}</{el.tag}>: {e}")
        return None


class Decoders:
    def __init__(self, path, mm):
        root = xml_items(path)
        self.roots = []
        self.children = {}
        self.patterns = 0
        for i, d in enumerate(root.findall("decoder")):
            name = d.get("name")
            where = f"decoder #{i + 1} {name}"
            dec = {
                "name": name,
                "program_name": compile_pcre2(d.find("program_name"), where, mm),
                "prematch": compile_pcre2(d.find("prematch"), where, mm),
                "regex": compile_pcre2(d.find("regex"), where, mm),
                "order": [
                    o.strip()
                    for o in (d.findtext("order") or "").split(",")
                    if o.strip()
                ],
            }
            self.patterns += sum(
                1 for k in ("program_name", "prematch", "regex") if d.find(k) is not None
            )
            if dec["regex"] is not None and dec["regex"].groups != len(dec["order"]):
                mm.add(f"{where}: {dec['regex'].groups} groups but order {dec['order']}")
            parent = d.findtext("parent")
            if parent:
                self.children.setdefault(parent, []).append(dec)
            else:
                self.roots.append(dec)

    @staticmethod
    def _matches(dec, pre):
        if dec["program_name"] is not None and not dec["program_name"].search(
            pre["program_name"] or ""
        ):
            return False
        if dec["prematch"] is not None and not dec["prematch"].search(pre["log"]):
            return False
        return True

    def decode(self, pre):
        """(decoder name, fields) as Wazuh would decode it: the first root
        decoder whose program_name and prematch match; then among its
        children the first that matches, and every sibling of the same name
        (Wazuh's sibling decoders) adding the fields its regex captures."""
        for root in self.roots:
            if not self._matches(root, pre):
                continue
            fields = {}
            if root["regex"] is not None:
                m = root["regex"].search(pre["log"])
                if not m:
                    continue
                fields.update(zip(root["order"], m.groups()))
            kids = self.children.get(root["name"], [])
            first = next((k for k in kids if self._matches(k, pre)), None)
            if first is not None:
                for k in kids:
                    if k["name"] != first["name"] or not self._matches(k, pre):
                        continue
                    if k["regex"] is None:
                        continue
                    m = k["regex"].search(pre["log"])
                    if m:
                        for name, value in zip(k["order"], m.groups()):
                            if value is not None:
                                fields.setdefault(name, value)
            return root["name"], fields
        return None, {}


class WazuhRules:
    def __init__(self, path, mm):
        root = xml_items(path)
        self.rules = {}
        self.order = []
        self.patterns = 0
        for g in root.findall("group"):
            gname = [x for x in (g.get("name") or "").split(",") if x]
            for r in g.findall("rule"):
                rid = r.get("id")
                where = f"rule {rid}"
                if rid in self.rules:
                    mm.add(f"{where}: duplicate id")
                if not (100000 <= int(rid) <= 120000):
                    mm.add(f"{where}: id outside 100000-120000")
                fields = []
                for fe in r.findall("field"):
                    fields.append((fe.get("name"), compile_pcre2(fe, where, mm), fe.text or ""))
                    self.patterns += 1
                for tag in ("match", "regex"):
                    if r.find(tag) is not None:
                        compile_pcre2(r.find(tag), where, mm)
                        mm.add(f"{where}: <{tag}> not emulated by check.py")
                groups = list(gname)
                for ge in r.findall("group"):
                    groups += [x for x in (ge.text or "").split(",") if x.strip()]
                rule = {
                    "id": rid,
                    "level": int(r.get("level")),
                    "frequency": int(r.get("frequency")) if r.get("frequency") else None,
                    "timeframe": int(r.get("timeframe")) if r.get("timeframe") else None,
                    "decoded_as": r.findtext("decoded_as"),
                    "if_sid": [s.strip() for s in (r.findtext("if_sid") or "").split(",") if s.strip()],
                    "if_matched_sid": r.findtext("if_matched_sid"),
                    "if_matched_group": r.findtext("if_matched_group"),
                    "same_field": [e.text for e in r.findall("same_field")],
                    "fields": fields,
                    "groups": [x.strip() for x in groups],
                    "description": r.findtext("description"),
                }
                if rule["frequency"] and not (
                    rule["timeframe"] and (rule["if_matched_sid"] or rule["if_matched_group"])
                ):
                    mm.add(f"{where}: frequency without timeframe and if_matched_*")
                self.rules[rid] = rule
                self.order.append(rid)
        for rid, rule in self.rules.items():
            for s in rule["if_sid"] + ([rule["if_matched_sid"]] if rule["if_matched_sid"] else []):
                if s not in self.rules:
                    mm.add(f"rule {rid}: parent {s} is not defined here")

    def run(self, events):
        """events: [(time, decoder, fields)] in order. Returns {rule id:
        hits}. Each rule is evaluated on its own (not only the one alert
        Wazuh would pick per event: a conservative count for the clean run).
        Frequency rules (if_matched_sid / if_matched_group + frequency +
        timeframe + same_field), simply: the rule fires on an event that
        matched the sid or a rule of the group when, counting that event,
        at least `frequency` such events with equal same_field values fall
        within the `timeframe` seconds up to it (Wazuh's own count keeps
        more state: `ignore`, the alert that wins per event)."""
        hits = {rid: 0 for rid in self.rules}
        matched = []  # per event: set of rule ids (non-frequency)
        for t, dec, fields in events:
            got = set()
            # Parents are defined before children in the file; iterate to a
            # fixed point anyway.
            changed = True
            while changed:
                changed = False
                for rid in self.order:
                    rule = self.rules[rid]
                    if rid in got or rule["frequency"]:
                        continue
                    if rule["decoded_as"] and rule["decoded_as"] != dec:
                        continue
                    if rule["if_sid"] and not any(s in got for s in rule["if_sid"]):
                        continue
                    ok = True
                    for name, pat, _ in rule["fields"]:
                        v = fields.get(name)
                        if pat is None or v is None or not pat.search(v):
                            ok = False
                            break
                    if ok and not rule["decoded_as"] and not rule["if_sid"]:
                        ok = False  # a rule with no anchor: never emulated as "everything"
                    if ok:
                        got.add(rid)
                        changed = True
            matched.append(got)
            for rid in got:
                hits[rid] += 1
        groups_of = {rid: set(r["groups"]) for rid, r in self.rules.items()}
        for rid in self.order:
            rule = self.rules[rid]
            if not rule["frequency"]:
                continue

            def counts(i):
                if rule["if_matched_sid"]:
                    return rule["if_matched_sid"] in matched[i]
                return any(rule["if_matched_group"] in groups_of[x] for x in matched[i])

            for i, (t, dec, fields) in enumerate(events):
                if not counts(i):
                    continue
                if any(fields.get(f) is None for f in rule["same_field"]):
                    continue
                key = [fields.get(f) for f in rule["same_field"]]
                n = 0
                for j in range(i, -1, -1):
                    tj, _, fj = events[j]
                    if (t - tj).total_seconds() > rule["timeframe"]:
                        break
                    if counts(j) and [fj.get(f) for f in rule["same_field"]] == key:
                        n += 1
                if n >= rule["frequency"]:
                    hits[rid] += 1
        return hits


def unescape(raw):
    """A value as written in the line (qkdpfd's escapes: \\" \\\\ \\xNN) as
    the JSON holds it when the rsyslog set-up decodes the escapes
    (expect.yml logs.json_values: unescaped): \\xNN for 0x01-0x7f becomes
    the byte, NUL and bytes above 0x7f stay as the text \\xNN."""
    out = []
    i = 0
    while i < len(raw):
        c = raw[i]
        if c == "\\" and i + 1 < len(raw):
            n = raw[i + 1]
            if n in "\\\"":
                out.append(n)
                i += 2
                continue
            if n == "x" and re.fullmatch(r"[0-9a-fA-F]{2}", raw[i + 2 : i + 4]):
                b = int(raw[i + 2 : i + 4], 16)
                if 0 < b < 0x80:
                    out.append(chr(b))
                    i += 4
                    continue
        out.append(c)
        i += 1
    return "".join(out)


def wazuh_scenario(decoders, rules, scenario, log_path, records, cfg, mm):
    """Decodes the scenario's .log lines, compares the fields with the
    .jsonl records of the same messages, runs the rules."""
    with open(log_path, encoding="utf-8", errors="surrogateescape") as f:
        lines = [l.rstrip("\n") for l in f if l.strip()]
    events = []
    pre_ok = []
    for n, line in enumerate(lines, 1):
        pre = predecode(line)
        if pre is None:
            mm.add(f"{scenario}.log:{n}: no syslog header Wazuh's pre-decoder would take: {line[:120]}")
            continue
        if pre["program_name"] != "qkdpfd":
            continue
        pre_ok.append((n, line, pre))
    if len(pre_ok) != len(records):
        mm.add(
            f"{scenario}: {len(pre_ok)} qkdpfd lines in .log but {len(records)} records in .jsonl"
        )
    meta = set(cfg["meta_keys"])
    bad = 0
    decoded = 0
    for (n, line, pre), rec in zip(pre_ok, records):
        name, raw_fields = decoders.decode(pre)
        # Wazuh keeps the escapes as written; compare what they stand for
        # when the JSON holds the decoded value.
        if cfg.get("json_values") == "unescaped":
            fields = {k: unescape(v) for k, v in raw_fields.items()}
        else:
            fields = raw_fields
        want = {
            k: str(v)
            for k, v in rec.items()
            if k not in meta and v is not None
        }
        if "event" not in want:
            # Not an event line (e.g. "engine: ..."): it must not decode as one.
            if name is not None:
                mm.add(f"{scenario}.log:{n}: decoded as {name} but the JSON has no event: {line[:160]}")
            continue
        if name is None:
            mm.add(f"{scenario}.log:{n}: qkdpfd event line not decoded: {line[:160]}")
            bad += 1
            continue
        decoded += 1
        if fields != want:
            diff = {
                k: (fields.get(k), want.get(k))
                for k in sorted(set(fields) | set(want))
                if fields.get(k) != want.get(k)
            }
            mm.add(f"{scenario}.log:{n}: decoded fields differ from the JSON (decoder, json): {diff}")
            bad += 1
        t = pre["time"] or parse_time(rec.get("timestamp"))
        # The .log's traditional stamp has whole seconds; the JSON's is finer.
        rt = parse_time(rec.get("timestamp"))
        events.append((rt or t, name, raw_fields))
    return rules.run(events), decoded, bad
