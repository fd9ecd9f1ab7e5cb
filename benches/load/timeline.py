#!/usr/bin/env python3
"""Which waits for a core make the slowest requests of a load-bench cell slow.

Reads a system-wide scheduler trace of one cell and the cell's request timeline, both written
by `benches/load.sh` (docs/performance.md, "What sets the p99"):

    LOAD_ONLY=veil LOAD_CONNS=1 LOAD_TIMELINE=/tmp/tl \
    LOAD_PERF="-a -k CLOCK_MONOTONIC -e sched:sched_switch --exclude-perf \
               -e sched:sched_wakeup --exclude-perf" benches/load.sh
    perf script -i target/perf-1-veil-best-effort.data -F comm,tid,cpu,time,event,trace \
        | benches/load/timeline.py /tmp/tl/timeline-1-veil-best-effort.txt

A wait is the time from a request-path thread's wake-up, or its preemption while runnable
(the load generator's, the proxy's forwarding threads and the upstream's, all named
`tokio-rt-worker`), to when it runs again; it is
charged to whatever ran on the core it was queued on meanwhile, in categories: veil's
recording threads (`veil-*`), an idle core (`idle-cpu`: the core had to wake up, on a virtual
machine the host had to run it), other request-path threads, perf itself, kernel threads.
Each request is charged the waits that began during it. Printed: p50/p99 of the cell, then
the same with each category's waits taken out, and what the slowest 1 % waited behind.

The trace costs CPU (perf writes it on the same two cores), so the figures are for finding
causes, not for the README. Standard library only.
"""

import bisect
import collections
import re
import sys

LINE = re.compile(r"^\s*(.+?)\s+(\d+)\s+\[(\d+)\]\s+([\d.]+):\s+(\S+):\s*(.*)$")
SWITCH = re.compile(
    r"prev_comm=(.*?) prev_pid=(\d+) prev_prio=(\d+) prev_state=(\S+) ==> "
    r"next_comm=(.*?) next_pid=(\d+)"
)
WAKEUP = re.compile(r"comm=(.*?) pid=(\d+) prio=(\d+) target_cpu=(\d+)")
# Shorter waits are the cost of any wake-up, not a queue.
MIN_WAIT_NS = 20_000


def category(comm):
    if comm.startswith("veil-"):
        return "veil-recording"
    if comm.startswith("swapper"):
        return "idle-cpu"
    if comm.startswith("perf"):
        return "perf"
    if on_request_path(comm):
        return "request-path"
    return "other:" + comm.split("/")[0]


def on_request_path(comm):
    # The upstream runs the bench binary, which can show as `memfd:...` when exec'd that way.
    return comm.startswith("tokio-rt") or comm.startswith("memfd")


def read_trace(lines):
    switches, wakeups = [], []
    for line in lines:
        m = LINE.match(line)
        if not m:
            continue
        _comm, _tid, cpu, t, event, rest = m.groups()
        t, cpu = int(round(float(t) * 1e9)), int(cpu)
        if event == "sched:sched_switch":
            s = SWITCH.search(rest)
            if s:
                switches.append((t, cpu, s.group(5), int(s.group(6))))
                # Preempted while runnable: a wait for a core as much as a wake-up's.
                if s.group(4).startswith("R"):
                    wakeups.append((t, cpu, s.group(1), int(s.group(2))))
        elif event == "sched:sched_wakeup":
            w = WAKEUP.search(rest)
            if w:
                wakeups.append((t, int(w.group(4)), w.group(1), int(w.group(2))))
    switches.sort()
    wakeups.sort()
    return switches, wakeups


def waits(switches, wakeups):
    """(start, end, {category: ns}) for each request-path wait of MIN_WAIT_NS or more."""
    times = [s[0] for s in switches]
    runs = collections.defaultdict(list)
    for t, _cpu, _comm, pid in switches:
        runs[pid].append(t)
    out = []
    for t, cpu, comm, pid in wakeups:
        if not on_request_path(comm):
            continue
        starts = runs[pid]
        i = bisect.bisect_left(starts, t)
        if i >= len(starts) or starts[i] - t < MIN_WAIT_NS:
            continue
        end = starts[i]
        a, b = bisect.bisect_left(times, t), bisect.bisect_right(times, end)
        k = a - 1
        while k >= 0 and switches[k][1] != cpu:
            k -= 1
        running, since = (switches[k][2] if k >= 0 else "?"), t
        ran = collections.Counter()
        for st, c, nxt, _ in switches[a:b]:
            if c == cpu:
                ran[category(running)] += st - since
                running, since = nxt, st
        ran[category(running)] += end - since
        out.append((t, end, ran))
    return out


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: perf script ... | timeline.py TIMELINE_FILE")
    requests = [tuple(map(int, l.split())) for l in open(sys.argv[1]) if l.strip()]
    switches, wakeups = read_trace(sys.stdin)
    if not switches:
        sys.exit("no sched_switch events on stdin (see the usage in this file's docstring)")
    lo, hi = switches[0][0], switches[-1][0]
    requests = [r for r in requests if r[0] >= lo and r[0] + r[1] <= hi]
    if len(requests) < 100:
        sys.exit(f"only {len(requests)} requests inside the trace: was it the same cell?")
    ws = waits(switches, wakeups)
    wstarts = [w[0] for w in ws]
    per = []
    for start, lat in requests:
        i, j = bisect.bisect_left(wstarts, start), bisect.bisect_right(wstarts, start + lat)
        charged = collections.Counter()
        for _, _, ran in ws[i:j]:
            charged.update(ran)
        per.append((lat, charged))
    n = len(per)

    def p(values, q):
        values = sorted(values)
        return values[min(int(n * q), n - 1)] / 1e3

    lats = [lat for lat, _ in per]
    print(f"{n} requests: p50 {p(lats, 0.5):.0f} us, p99 {p(lats, 0.99):.0f} us")
    for cat in sorted({c for _, ch in per for c in ch}):
        rest = [max(0, lat - ch.get(cat, 0)) for lat, ch in per]
        total = sum(ch.get(cat, 0) for _, ch in per) / 1e6
        print(
            f"  without waits behind {cat:<22} p50 {p(rest, 0.5):5.0f}  "
            f"p99 {p(rest, 0.99):5.0f} us  ({total:.1f} ms in all)"
        )
    rest = [max(0, lat - sum(ch.values())) for lat, ch in per]
    print(f"  without any wait             p50 {p(rest, 0.5):5.0f}  p99 {p(rest, 0.99):5.0f} us")
    slowest = sorted(per, key=lambda x: -x[0])[: max(1, n // 100)]
    behind = collections.Counter()
    for _, ch in slowest:
        behind.update(ch)
    total = sum(lat for lat, _ in slowest) / 1e6
    print(
        f"the slowest 1 % ({len(slowest)} requests, {total:.1f} ms) waited behind: "
        + ", ".join(f"{k} {v / 1e6:.1f} ms" for k, v in behind.most_common())
    )


if __name__ == "__main__":
    main()
