#!/usr/bin/env python3
"""Writes qkdpfd_decoders.xml (next to this file) from the event catalogue,
src/log/catalogue.rs: one sibling decoder per field of any qkdpfd event.
Run it when the catalogue gains a field; contrib/siem/check.py fails while
the decoder misses one. Usage: make_decoders.py [catalogue.rs]"""

import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
CATALOGUE = os.path.join(HERE, "..", "..", "..", "src", "log", "catalogue.rs")

HEADER = """<!--
  Wazuh 4.x (4.3 or later) decoders for qkdpfd's syslog lines
  (contrib/siem/README.md). Written by make_decoders.py from the event
  catalogue (src/log/catalogue.rs); do not edit by hand.

  A line, once Wazuh's syslog pre-decoder has taken off the header
  ("Dec  3 11:00:00 gw1 qkdpfd[123]: ", program_name qkdpfd), is
    event=NAME proc=parent|engine|guardian key=value ... [msg=...]
  values quoted ("...") when they hold a space, = or ", with \\" and \\\\
  escaped inside; msg= is always last. Fields come out unquoted, escapes
  kept as written.

  The parent decoder "qkdpfd" recognises the line; its children, all named
  "qkdpfd-fields" (sibling decoders: every one of them is tried), each take
  one key. A key is found only where a key can start: the regex walks the
  key=value tokens from the start of the line, so a " link=" inside a
  quoted msg is never taken for the link field.

  Every pattern is PCRE2 (type="pcre2"); contrib/siem/check.py runs each of
  them with PCRE2 against the lines a real qkdpfd sent through rsyslog.

  Install: /var/ossec/etc/decoders/qkdpfd_decoders.xml
-->

<decoder name="qkdpfd">
  <program_name type="pcre2">^qkdpfd$</program_name>
  <prematch type="pcre2">^event=[a-z0-9_]+ proc=(?:parent|engine|guardian)(?: |$)</prematch>
</decoder>

<decoder name="qkdpfd-fields">
  <parent>qkdpfd</parent>
  <regex type="pcre2">^event=([a-z0-9_]+) proc=(parent|engine|guardian)(?: |$)</regex>
  <order>event,proc</order>
</decoder>
"""

# Tokens before the key: ` key=value`, the value quoted (escapes inside) or bare.
TOK = r'(?: [A-Za-z0-9_]+=(?:"(?:[^"\\]|\\.)*"|[^ "]*))*?'
# The value, unquoted: one capture group either way (PCRE2 branch reset).
VAL = r'(?|"((?:[^"\\]|\\.)*)"|([^ "]*))'


def fields(path):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    body = text[text.index("catalogue! {") :]
    out = []
    for _, names, qkdsim in re.findall(
        r'\b[A-Z]\w*\s+"([a-z0-9_]+)"\s+[A-Z]\w*(?:\s*\[[^\]]*\])?\s*\(((?:\s*"[^"]*"\s*,?)*)\)\s*(qkdsim)?',
        body,
    ):
        if qkdsim:
            continue
        for n in re.findall(r'"([^"]*)"', names):
            n = n.strip("[]")
            if n not in out:
                out.append(n)
    # What the parent renames in an engine's line (src/log).
    return out + ["engine_event", "engine_proc"]


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else CATALOGUE
    parts = [HEADER]
    for f in fields(path):
        parts.append(
            f"""
<decoder name="qkdpfd-fields">
  <parent>qkdpfd</parent>
  <regex type="pcre2">^event=[a-z0-9_]+{TOK} {f}={VAL}</regex>
  <order>{f}</order>
</decoder>
"""
        )
    with open(os.path.join(HERE, "qkdpfd_decoders.xml"), "w", encoding="utf-8") as f:
        f.write("".join(parts))


if __name__ == "__main__":
    main()
