#!/usr/bin/env python3
"""How long a node takes to answer a SCRAM client-first message (its server-first challenge)
for an account that exists and for one that does not: if the two differ, names can be probed
by timing (issue 11). Plain TCP, no TLS, so the figure is the server's work and one loopback
round trip.

    python3 bench/scram_timing.py HOST:PORT EXISTING_USER [ROUNDS [UNKNOWN_NAME]]

Alternates the two names, a new connection per attempt (the exchange is never finished, so
no failed login is counted), and prints the median and the 90th percentile of each.
"""

import base64
import os
import socket
import statistics
import sys
import time

HEADER = (
    "<?xml version='1.0'?><stream:stream to='localhost' version='1.0' "
    "xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>"
)


def read_until(sock, needle, buf=b""):
    while needle not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise RuntimeError(f"closed before {needle!r}: {buf!r}")
        buf += chunk
    return buf


def challenge_time(addr, user):
    with socket.create_connection(addr) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(HEADER.encode())
        read_until(s, b"</stream:features>")
        first = f"n,,n={user},r={base64.b64encode(os.urandom(18)).decode()}"
        auth = (
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-256'>"
            + base64.b64encode(first.encode()).decode()
            + "</auth>"
        )
        started = time.perf_counter()
        s.sendall(auth.encode())
        got = read_until(s, b"</challenge>")
        took = time.perf_counter() - started
        if b"<challenge" not in got:
            raise RuntimeError(got)
        return took


def main():
    host, port = sys.argv[1].rsplit(":", 1)
    addr = (host, int(port))
    known = sys.argv[2]
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 500
    unknown = sys.argv[4] if len(sys.argv) > 4 else "nobody-" + base64.b32encode(os.urandom(5)).decode().lower()
    times = {known: [], unknown: []}
    for _ in range(20):  # warm up both paths
        challenge_time(addr, known)
        challenge_time(addr, unknown)
    for _ in range(rounds):
        for user in (known, unknown):
            times[user].append(challenge_time(addr, user))
    for label, user in (("existing account", known), ("unknown name", unknown)):
        t = sorted(times[user])
        p90 = t[int(len(t) * 0.9)]
        print(
            f"{label:17} median {statistics.median(t) * 1e6:7.1f} µs   "
            f"p90 {p90 * 1e6:7.1f} µs   ({len(t)} attempts)"
        )


if __name__ == "__main__":
    main()
