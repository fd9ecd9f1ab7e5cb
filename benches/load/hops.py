#!/usr/bin/env python3
"""Where each proxy spends the time to first chunk, hop by hop, from stamps taken inside it.

The time-to-first-chunk step (docs/performance.md, "Stop 65's round") stops its clock at the
first content chunk, which the bench upstream sends 5 ms after the response head and the role
chunk. So what a proxy adds is its request path (the app's request read → written upstream)
plus its relay of that one chunk (read from upstream → written to the app); the response
head is handled inside the 5 ms and is not on the path.

`hops.patch` (a throwaway diagnostic patch, never built by CI; made against the commit that
last changed it) stamps both veil and the bench's no-op proxy: each stamp is an `Instant` pushed to a
global vector and printed by a side thread every 50 ms as `VEILS <pid> <label> <µs>`, so no
write sits on the path being timed. Labels:

    rd  a read of the app's decrypted bytes*       f0  the proxy's forward function begins
    f3  the request is handed to hyper's client    uw  a write to the upstream's TCP socket
    ur  a read from the upstream's TCP socket      ck  a response data frame out of hyper
    wr/wv  a write into the app's TLS stream*
    veil only: sv (service entered), g0-g3 (admitted, request headers recorded, path
    recorded, recording started), h0/h1 (around a credential header's fingerprint, inside
    the header copy), r0/r2 (response head arrived / handled)

*In veil these stamps sit in `conn::Watched`, which wraps both the app's TLS stream and the
TCP stream under it, so veil also logs a TCP-level read before each decrypted read and a
TCP-level write after each write into the TLS. Taking the last read before `f0` and the
first write after the frame picks the TLS-level ones, as in the no-op. The two warm-up
rounds are included (the first request's upstream write comes after a TCP and TLS connect).

Usage (veil's stderr and the no-op's reach the bench's stderr; a target directory of its
own, so the stamped veil does not stay behind in `target/release`):

    git apply benches/load/hops.patch
    CARGO_TARGET_DIR=target/hops LOAD_ONLY=ttfc benches/load.sh 2> stamps.txt
    benches/load/hops.py stamps.txt
    git apply -R benches/load/hops.patch

Each process writes a batch of stamps with one `write`, so with stderr sent to a file the
two processes' lines do not cut into each other; lines that do not parse are counted and
reported.

For each process and each request it takes the app's read before `f0`, then `f3`, the first
upstream write after it, the second data frame (the first content chunk), the upstream read
before that frame and the first write to the app after it, and prints the median, p10 and
p90 of each hop in microseconds. Standard library only.
"""

import collections
import statistics
import sys

HOPS = [
    ("rd>f0", "app's request read -> forward begins (hyper's server, the service)"),
    ("f0>f3", "forward begins -> handed to hyper's client (the proxy's own steps)"),
    ("f3>uw", "handed to the client -> written to the upstream socket"),
    ("rd>uw", "request path"),
    ("ur>ck", "first content chunk read off the upstream socket -> out of hyper's body"),
    ("ck>w", "frame out of the body -> written into the app's TLS stream"),
    ("ur>w", "chunk relay"),
    ("path", "request path + chunk relay"),
]
STEPS = [
    ("f0", "g0"),
    ("g0", "h0"),
    ("h0", "h1"),
    ("h1", "g1"),
    ("g0", "g1"),
    ("g1", "g2"),
    ("g2", "g3"),
    ("g3", "f3"),
    ("r0", "r2"),
]


def quantiles(values):
    v = sorted(values)
    n = len(v)
    return f"n {n:3d}  median {statistics.median(v):6.1f}  p10 {v[n // 10]:5d}  p90 {v[n * 9 // 10]:5d}"


def hops(events):
    """Per-request hops of one process: {hop: [µs, ...]}."""
    out = collections.defaultdict(list)
    for i, (label, t) in enumerate(events):
        if label != "f0":
            continue
        rd = next((u for l, u in reversed(events[max(0, i - 20) : i]) if l == "rd"), None)
        f3 = uw = last_ur = ur = w = None
        frames = []
        seen = {"f0": t}
        for l, u in events[i + 1 : i + 120]:
            if l == "f0":
                break
            seen.setdefault(l, u)
            if l == "f3" and f3 is None:
                f3 = u
            elif l == "uw" and f3 is not None and uw is None:
                uw = u
            elif l == "ur":
                last_ur = u
            elif l == "ck":
                frames.append(u)
                if len(frames) == 2:
                    ur = last_ur
            elif l in ("wr", "wv") and len(frames) == 2:
                w = u
                break
        if None in (rd, f3, uw, ur, w):
            continue
        ck = frames[1]
        for hop, value in (
            ("rd>f0", t - rd),
            ("f0>f3", f3 - t),
            ("f3>uw", uw - f3),
            ("rd>uw", uw - rd),
            ("ur>ck", ck - ur),
            ("ck>w", w - ck),
            ("ur>w", w - ur),
            ("path", uw - rd + w - ur),
        ):
            out[hop].append(value)
        for a, b in STEPS:
            if a in seen and b in seen:
                out[f"{a}>{b}"].append(seen[b] - seen[a])
    return out


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: hops.py STAMPS (the bench's stderr with hops.patch applied)")
    by_pid = collections.defaultdict(list)
    bad = 0
    with open(sys.argv[1], encoding="utf-8", errors="replace") as f:
        for line in f:
            if "VEILS" not in line:
                continue
            parts = line.split()
            if len(parts) == 4 and parts[0] == "VEILS" and parts[3].isdigit():
                by_pid[parts[1]].append((parts[2], int(parts[3])))
            else:
                bad += 1
    if bad:
        print(f"{bad} stamp lines did not parse and were left out", file=sys.stderr)
    if not by_pid:
        sys.exit("no VEILS lines: was hops.patch applied and the bench's stderr kept?")
    for pid, events in by_pid.items():
        is_veil = any(l == "g0" for l, _ in events)
        found = hops(events)
        print(f"pid {pid} ({'veil' if is_veil else 'no-op'}), {len(found['path'])} requests (µs)")
        for hop, what in HOPS:
            if found[hop]:
                print(f"  {hop:6} {quantiles(found[hop])}  {what}")
        for a, b in STEPS:
            if found[f"{a}>{b}"]:
                print(f"  {a}>{b:3} {quantiles(found[f'{a}>{b}'])}")


if __name__ == "__main__":
    main()
