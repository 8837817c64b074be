#!/usr/bin/env python3
"""The side-by-side table of bench/compare.sh: reads OUT/{prosody,ejabberd,farm}-*.json (the
runs' --json) and prints one Markdown table, every server in a column, and the ratios
jabberfarm vs each (> 1 means jabberfarm is better: more per second, or less CPU, memory,
latency)."""
import json
import os
import sys

out = sys.argv[1]
SERVERS = [("prosody", "Prosody"), ("ejabberd", "ejabberd"), ("farm", "jabberfarm")]


def load(server, name):
    path = os.path.join(out, f"{server}-{name}.json")
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def rate(r):
    return r["rate_per_s"] if r and r["completed"] else None


def cpu_us(r):
    s = r and r.get("server")
    return s["cpu_us_per_op"] if s and r["completed"] else None


def lat(key):
    return lambda r: r["latency_us"][key] if r and r["completed"] else None


def kib(r):
    return r["idle"]["kib_per_session"] if r and r.get("idle") else None


def rss_with(r):
    return r["idle"]["rss_after_kib"] / 1024 if r and r.get("idle") else None


def lost(r):
    return r["chat"]["lost"] if r and r.get("chat") else None


def others(r):
    if not r or r.get("other_cpu_s") is None or not r["duration_s"]:
        return None
    return r["other_cpu_s"] / r["duration_s"]


def fmt_rate(v):
    return f"{v:,.0f}"


def fmt_us(v):
    return f"{v / 1000:.2f} ms" if v >= 1000 else f"{v:.1f} µs"


def fmt_kib(v):
    return f"{v:.1f} KiB"


def fmt_mib(v):
    return f"{v:.0f} MiB"


def fmt_int(v):
    return f"{v:,}"


def fmt_cores(v):
    return f"{v:.2f}"


def mech(server, name):
    r = load(server, name)
    return r["mechanism"] if r else "–"


# (label, run name, extractor, formatter, higher_is_better or None for no ratio)
ROWS = [
    ("logins/s, PLAIN", "login-plain", rate, fmt_rate, True),
    ("server CPU per login, PLAIN", "login-plain", cpu_us, fmt_us, False),
    ("logins/s, SCRAM", "login-scram", rate, fmt_rate, True),
    ("server CPU per login, SCRAM", "login-scram", cpu_us, fmt_us, False),
    ("memory per idle session", "idle", kib, fmt_kib, False),
    ("server RSS with the idle sessions", "idle", rss_with, fmt_mib, False),
    ("chat closed loop: messages/s", "chat-closed", rate, fmt_rate, True),
    ("chat closed loop: server CPU per message", "chat-closed", cpu_us, fmt_us, False),
    ("chat closed loop: p50 / p99", "chat-closed", None, None, None),
    ("chat 1,000 msg/s: delivered/s", "chat-1000", rate, fmt_rate, True),
    ("chat 1,000 msg/s: server CPU per message", "chat-1000", cpu_us, fmt_us, False),
    ("chat 1,000 msg/s: p50", "chat-1000", lat("p50_us"), fmt_us, False),
    ("chat 1,000 msg/s: p99", "chat-1000", lat("p99_us"), fmt_us, False),
    ("chat 4,000 msg/s: delivered/s", "chat-4000", rate, fmt_rate, True),
    ("chat 4,000 msg/s: server CPU per message", "chat-4000", cpu_us, fmt_us, False),
    ("chat 4,000 msg/s: p50", "chat-4000", lat("p50_us"), fmt_us, False),
    ("chat 4,000 msg/s: p99", "chat-4000", lat("p99_us"), fmt_us, False),
    ("chat 4,000 msg/s: messages not delivered", "chat-4000", lost, fmt_int, None),
    ("redirects/s (master)", "redirect", rate, fmt_rate, None),
    ("server CPU per redirect (master)", "redirect", cpu_us, fmt_us, None),
]


def ratio(ours, theirs, higher_is_better):
    if higher_is_better is None or ours is None or theirs is None or ours <= 0 or theirs <= 0:
        return "–"
    x = ours / theirs if higher_is_better else theirs / ours
    if x >= 100:
        return ">100×"
    return f"{x:.1f}×" if x < 10 else f"{x:.0f}×"


print("| | " + " | ".join(n for _, n in SERVERS) + " | jabberfarm vs Prosody | jabberfarm vs ejabberd |")
print("|---|" + "---:|" * (len(SERVERS) + 2))
print("| SCRAM mechanism in the SCRAM rows | "
      + " | ".join(mech(s, "login-scram") for s, _ in SERVERS) + " | | |")
for label, run, get, fmt, hib in ROWS:
    if get is None:  # p50 / p99 in one cell
        cells = []
        for s, _ in SERVERS:
            r = load(s, run)
            cells.append(f"{fmt_us(r['latency_us']['p50_us'])} / {fmt_us(r['latency_us']['p99_us'])}"
                         if r and r["completed"] else "–")
        print(f"| {label} | " + " | ".join(cells) + " | – | – |")
        continue
    vals = {s: get(load(s, run)) for s, _ in SERVERS}
    cells = [fmt(vals[s]) if vals[s] is not None else "–" for s, _ in SERVERS]
    print(f"| {label} | " + " | ".join(cells) + " | "
          + ratio(vals["farm"], vals["prosody"], hib) + " | "
          + ratio(vals["farm"], vals["ejabberd"], hib) + " |")

# How busy the rest of the machine was while each server was measured.
worst = {}
for s, _ in SERVERS:
    vals = []
    for f in sorted(os.listdir(out)):
        if f.startswith(s + "-") and f.endswith(".json"):
            with open(os.path.join(out, f)) as fh:
                v = others(json.load(fh))
            if v is not None:
                vals.append(v)
    worst[s] = max(vals) if vals else None
print("| other processes' CPU, worst run (cores) | "
      + " | ".join(fmt_cores(worst[s]) if worst[s] is not None else "–" for s, _ in SERVERS)
      + " | – | – |")
