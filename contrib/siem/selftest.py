#!/usr/bin/env python3
"""Self-test of check.py on synthetic logs (no daemon needed).

Writes one <scenario>.jsonl and <scenario>.log per scenario of expect.yml,
made from lines in the format of qkdpfd.8's LOGGING table, runs check.py on
them and expects exit 0; then spoils them in ways check.py must catch, and
expects exit 1 for each:
  - a QBER lockdown in the clean run (a rule fires on clean)
  - the eavesdropper's lockdown removed (a rule stays silent on its scenario)
  - a vacuous Sigma rule (matches every line) added
  - a .log line whose field differs from its .jsonl record
  - the peer flood's suppressed count below the threshold
and exit 2 for a missing scenario file.

The flapping correlation is also held to its threshold, its window and
its group-by (three lockdowns, five spread out, four links), and to
lockdowns of a link's own (four holds by another link of its interface).

These are fixtures, not the real daemon's logs: the real test is check.py
on the logs of the syslog scenario test (README.md).

Usage: selftest.py [WORKDIR]
"""

import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
CHECK = os.path.join(HERE, "check.py")

T0 = datetime.datetime(2026, 12, 3, 11, 0, 0, tzinfo=datetime.timezone.utc)


sys.path.insert(0, HERE)
from check import unescape  # noqa: E402


def kv_fields(msg):
    """key=value pairs of a qkdpfd line: values unquoted and unescaped, as
    contrib/siem/rsyslog/qkdpfd.conf writes them."""
    out = {}
    i = 0
    while i < len(msg):
        j = msg.index("=", i)
        key = msg[i:j]
        j += 1
        if j < len(msg) and msg[j] == '"':
            k = j + 1
            while msg[k] != '"':
                k += 2 if msg[k] == "\\" else 1
            out[key] = unescape(msg[j + 1 : k])
            i = k + 2
        else:
            k = msg.find(" ", j)
            k = len(msg) if k < 0 else k
            out[key] = unescape(msg[j:k])
            i = k + 1
    return out


def boot(link="dr"):
    return [
        (0, "notice", 'event=startup proc=parent version=0.1.0 links=1 policy=7 firewall=nftables'),
        (0, "notice", 'event=policy_loaded proc=parent serial=7 signer=RWQf6LRCGA9i53ml source=startup'),
        (1, "alert", f'event=lockdown proc=parent link={link} reason=no-key'),
        (3, "info", f'event=key_rotated proc=engine link={link} epoch=1 key_id=7c1e5a4e-1b9c-4f1e-9d61-2a7bb0c0e001'),
        (3, "notice", f'event=unlock proc=parent link={link} by=auto'),
    ]


def rotations(start, count, link="dr", every=10):
    return [
        (start + i * every, "info", f"event=key_rotated proc=engine link={link} epoch={i + 2} key_id=7c1e5a4e-1b9c-4f1e-9d61-2a7bb0c0e{i:03d}")
        for i in range(count)
    ]


def scenarios():
    s = {}
    s["clean"] = boot() + rotations(10, 20) + [
        (200, "info", "event=ctl_command proc=engine uid=0 command=rotate"),
        (205, "info", "event=band proc=engine link=dr from=green to=yellow qber=0.0412"),
        (215, "info", "event=band proc=engine link=dr from=yellow to=green qber=0.0210"),
    ]
    s["eavesdropper"] = boot() + rotations(10, 3) + [
        (40, "notice", "event=sim_control proc=engine link=dr eve=0.5"),
        (42, "info", "event=band proc=engine link=dr from=green to=red qber=0.1300"),
        (42, "alert", "event=lockdown proc=parent link=dr reason=qber qber=0.1300 threshold=0.08"),
    ]
    flap = []
    for i in range(5):
        t = 20 + i * 24
        flap += [
            (t, "alert", "event=lockdown proc=parent link=dr reason=qber qber=0.1250 threshold=0.08"),
            (t + 12, "notice", "event=unlock proc=parent link=dr by=auto"),
        ]
    s["flapping"] = boot() + flap
    s["key_stale"] = boot() + [
        (40, "warning", 'event=key_rotation_failed proc=engine link=dr reason=kme msg="kme: HTTP 503: \\"busy\\"\\x0a link=evil reason=qber"'),
        (70, "alert", "event=key_stale proc=parent link=dr"),
        (70, "alert", "event=lockdown proc=parent link=dr reason=key-stale"),
    ]
    s["psk_drift"] = boot() + [
        (40, "alert", "event=psk_drift proc=parent link=dr"),
        (40, "alert", "event=lockdown proc=parent link=dr reason=psk-drift"),
    ]
    s["peer_auth_flood"] = boot() + [
        (20 + i * 0.05, "warning", f"event=peer_auth_failed proc=engine from=198.51.100.{i}:4500 reason=wrong-source")
        for i in range(12)
    ] + [
        (20, "warning", "event=peer_auth_failed proc=engine from=10.0.0.9:4500 reason=bad-signature link=dr"),
        (81, "warning", "event=peer_auth_failed proc=engine from=10.0.0.9:4500 reason=bad-signature link=dr suppressed=5999"),
    ]
    s["policy_tampered"] = boot() + [
        (30, "err", 'event=policy_rejected proc=parent reason=digest-mismatch source=qkdctl msg="digest: policy.toml: SHA256 differs"'),
    ]
    s["policy_rollback"] = boot() + [
        (30, "err", 'event=policy_rejected proc=parent reason=rollback source=qkdctl msg="rollback: serial 6 is below the active serial 7"'),
    ]
    s["firewall_tampered"] = boot() + [
        (30, "alert", 'event=firewall_lost proc=parent firewall=nftables msg="table inet qkdpfd gone"'),
    ]
    s["engine_failure"] = boot() + [
        (30, "crit", 'event=engine_lost proc=parent msg="the engine exited: signal 9"'),
        (30, "alert", "event=lockdown proc=parent link=dr reason=process-failure"),
        (30, "crit", "event=shutdown proc=parent reason=process-failure"),
        # pf: the guardian's own line after a parent that died unclean.
        (31, "alert", 'event=guardian_lockdown proc=guardian msg="the parent ended without a clean stop"'),
    ]
    s["ctl_denied"] = boot() + [
        (30, "warning", "event=ctl_denied proc=engine uid=1001 command=lockdown"),
        (31, "warning", 'event=ctl_denied proc=parent uid=1001 command=unlock msg="not allowed for socket_group members"'),
    ]
    s["policy_expiring"] = boot() + [
        (5, "warning", "event=policy_expiring proc=parent serial=7 not_after=1796000000 days_left=6"),
    ]
    s["policy_expired"] = boot() + [
        (5, "notice", "event=reload proc=parent config=/etc/qkdpfd.conf"),
        (6, "alert", "event=policy_expired proc=parent serial=7 not_after=1796000000"),
    ]
    s["policy_damaged"] = [
        (0, "notice", "event=startup proc=parent version=0.1.0 links=1 policy=none firewall=nftables"),
        (0, "alert", 'event=policy_rejected proc=parent reason=digest-mismatch serial=7 source=startup msg="digest: policy.toml: SHA256 differs"'),
        (1, "alert", "event=lockdown proc=parent link=dr reason=no-policy"),
    ]
    s["kme_keys_low"] = boot() + rotations(10, 2) + [
        (31, "warning", "event=kme_keys_low proc=engine link=dr kme=site stored_key_count=12 threshold=20"),
    ]
    return s


SEV = {"alert": 1, "crit": 2, "err": 3, "warning": 4, "notice": 5, "info": 6, "debug": 7}


def write(dirname, data):
    os.makedirs(dirname, exist_ok=True)
    for name, lines in data.items():
        with open(os.path.join(dirname, f"{name}.jsonl"), "w") as j, open(
            os.path.join(dirname, f"{name}.log"), "w"
        ) as l:
            for off, sev, msg in lines:
                t = T0 + datetime.timedelta(seconds=off, milliseconds=17)
                rec = {
                    "timestamp": t.isoformat(timespec="microseconds"),
                    "host": "gw-a",
                    "program": "qkdpfd",
                    "pid": "4242",
                    "severity": sev,
                    "facility": "daemon",
                    "message": msg,
                }
                rec.update(kv_fields(msg))
                j.write(json.dumps(rec) + "\n")
                stamp = t.strftime("%b %e %H:%M:%S")
                l.write(f"{stamp} gw-a qkdpfd[4242]: {msg}\n")
            # Another program's line: skipped by both halves.
            t = T0 + datetime.timedelta(seconds=1)
            l.write(f"{t.strftime('%b %e %H:%M:%S')} gw-a kernel: wg0: peer 1 handshake\n")


def run(dirname, *extra, sigma_dir=None):
    cmd = [sys.executable, CHECK, "--no-sigma-check", dirname]
    if sigma_dir:
        cmd[2:2] = ["--sigma-dir", sigma_dir]
    p = subprocess.run(cmd + list(extra), capture_output=True, text=True)
    return p.returncode, p.stdout + p.stderr


def main():
    work = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="siem-selftest-")
    failures = 0
    runs = 0
    os.makedirs(work, exist_ok=True)

    def expect(label, rc_want, data, sigma_dir=None, why=None):
        nonlocal failures, runs
        runs += 1
        d = os.path.join(work, label)
        shutil.rmtree(d, ignore_errors=True)
        write(d, data)
        rc, out = run(d, sigma_dir=sigma_dir)
        # A failing run must fail for the reason the case is about.
        ok = rc == rc_want and (why is None or why in out)
        print(f"{'ok  ' if ok else 'FAIL'} {label}: exit {rc} (want {rc_want}{', ' + repr(why) if why else ''})")
        if not ok:
            failures += 1
            print(out[-4000:])
        return out

    out = expect("fixtures", 0, scenarios())
    print(out)

    d = scenarios()
    d["clean"].append((220, "alert", "event=lockdown proc=parent link=dr reason=qber qber=0.1300 threshold=0.08"))
    expect("qber-on-clean", 1, d, why="sigma rule qkdpfd_qber_lockdown fired 1x on clean")

    d = scenarios()
    d["eavesdropper"] = [x for x in d["eavesdropper"] if "reason=qber" not in x[2]]
    expect("eavesdropper-silent", 1, d, why="sigma rule qkdpfd_qber_lockdown did not fire on eavesdropper")

    d = scenarios()
    d["peer_auth_flood"][-1] = (81, "warning", "event=peer_auth_failed proc=engine from=10.0.0.9:4500 reason=bad-signature link=dr suppressed=9")
    expect("flood-below-threshold", 1, d, why="sigma rule qkdpfd_peer_auth_burst did not fire on peer_auth_flood")

    # Flapping: three lockdowns in five minutes are not four...
    lock = "event=lockdown proc=parent link=dr reason=qber qber=0.1250 threshold=0.08"
    d = scenarios()
    d["flapping"] = [(t, "alert", lock) for t in (0, 20, 40)]
    expect("flapping-three-lockdowns", 1, d, why="sigma rule qkdpfd_link_flapping did not fire on flapping")
    # ...and five lockdowns 110 s apart never put four in one window.
    d = scenarios()
    d["flapping"] = [(t, "alert", lock) for t in (0, 110, 220, 330, 440)]
    expect("flapping-spread-out", 1, d, why="sigma rule qkdpfd_link_flapping did not fire on flapping")
    # Four lockdowns of four different links are no flapping link.
    d = scenarios()
    d["flapping"] = [(t, "alert", lock.replace("link=dr", f"link=l{t}")) for t in (0, 20, 40, 60)]
    expect("flapping-four-links", 1, d, why="sigma rule qkdpfd_link_flapping did not fire on flapping")
    # Four holds of one link by another link of its interface are that
    # link's lockdowns, not this one's.
    d = scenarios()
    held = "event=lockdown proc=parent link=dr reason=interface"
    d["flapping"] = [(t, "alert", held) for t in (0, 20, 40, 60)]
    expect("flapping-held-by-another", 1, d, why="sigma rule qkdpfd_link_flapping did not fire on flapping")

    vac = os.path.join(work, "sigma-vacuous")
    shutil.rmtree(vac, ignore_errors=True)
    shutil.copytree(os.path.join(HERE, "sigma"), vac)
    with open(os.path.join(vac, "qkdpfd_policy_expiring.yml")) as f:
        text = f.read()
    with open(os.path.join(vac, "qkdpfd_policy_expiring.yml"), "w") as f:
        f.write(text.replace("event: policy_expiring", "event|contains: '_'"))
    expect("vacuous-sigma-rule", 1, scenarios(), sigma_dir=vac, why="sigma rule qkdpfd_policy_expiring fired 23x on clean, which must stay quiet")

    bad = os.path.join(work, "sigma-misspelt")
    shutil.rmtree(bad, ignore_errors=True)
    shutil.copytree(os.path.join(HERE, "sigma"), bad)
    with open(os.path.join(bad, "qkdpfd_psk_drift.yml")) as f:
        text = f.read()
    with open(os.path.join(bad, "qkdpfd_psk_drift.yml"), "w") as f:
        f.write(text.replace("    event: psk_drift", "    event: psk_drift\n    lnk|contains: ''"))
    expect("misspelt-field", 1, scenarios(), sigma_dir=bad, why="field lnk")

    # A .log line that says something else than its JSON record.
    d = os.path.join(work, "field-differs")
    shutil.rmtree(d, ignore_errors=True)
    write(d, scenarios())
    p = os.path.join(d, "eavesdropper.log")
    text = open(p).read().replace("threshold=0.08", "threshold=0.09")
    open(p, "w").write(text)
    rc, out = run(d)
    runs += 1
    print(f"{'ok  ' if rc == 1 else 'FAIL'} field-differs: exit {rc} (want 1)")
    failures += rc != 1

    d = os.path.join(work, "missing-file")
    shutil.rmtree(d, ignore_errors=True)
    write(d, scenarios())
    os.remove(os.path.join(d, "ctl_denied.log"))
    rc, out = run(d)
    runs += 1
    print(f"{'ok  ' if rc == 2 else 'FAIL'} missing-file: exit {rc} (want 2)")
    failures += rc != 2

    print(f"{runs - failures} passed, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
