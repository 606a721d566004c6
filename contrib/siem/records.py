"""Reading rsyslog's records, shared by check.py and wazuh_emulation.py:
time stamps as rsyslog writes them, and its nested $! tree flattened."""

import datetime
import json


def parse_time(value):
    """An rsyslog timestamp (RFC 3339, or the traditional 'Mmm dd hh:mm:ss')
    as an aware datetime, or None."""
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return datetime.datetime.fromtimestamp(value, datetime.timezone.utc)
    s = str(value).strip()
    try:
        t = datetime.datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError:
        try:
            t = datetime.datetime.strptime(
                f"{datetime.date.today().year} {s}", "%Y %b %d %H:%M:%S"
            )
        except ValueError:
            return None
    if t.tzinfo is None:
        t = t.replace(tzinfo=datetime.timezone.utc)
    return t


def flatten(obj, out=None):
    """Nested JSON objects (rsyslog's $! tree) flattened: inner keys win
    over nothing, never over a key of the outer level."""
    if out is None:
        out = {}
    nested = []
    for k, v in obj.items():
        if isinstance(v, dict):
            nested.append(v)
        elif isinstance(v, list):
            out.setdefault(k, json.dumps(v))
        else:
            out.setdefault(k, v)
    for v in nested:
        flatten(v, out)
    return out
