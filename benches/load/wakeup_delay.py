#!/usr/bin/env python3
"""How long a nice-0 thread woken from the other core waits behind a nice-10 CPU burst.

The reproduction behind `os::Courtesy` (docs/performance.md, the round of stop 40), outside
veil: a reader pinned to core 0 is woken through a pipe by a writer on core 1 every 0.7 ms and
reports how long each byte took to be read. Beside it on core 0, for each mode:

- `none`: nothing (the figure is then an idle core's wake-up);
- `hog`: a nice-10 process that sleeps 3 ms and computes 3 ms, over and over (a recording
  thread inserting a group of rows);
- `yield`: the same process calling `sched_yield` every 100 us of its bursts.

    benches/load/wakeup_delay.py none hog yield

On the 2-core machine of stop 40 (Linux 6.18, EEVDF, HZ=250): p99 0.7 ms, 3.0 ms, 0.3-0.5 ms.
Needs two cores; standard library only; about 10 s per mode.
"""

import multiprocessing as mp
import os
import struct
import sys
import time


def hog(mode, stop):
    os.sched_setaffinity(0, {0})
    os.nice(10)
    while not stop.is_set():
        time.sleep(0.003)
        end = time.perf_counter() + 0.003
        last = time.perf_counter()
        while time.perf_counter() < end:
            sum(range(100))
            if mode == "yield" and time.perf_counter() - last >= 0.0001:
                os.sched_yield()
                last = time.perf_counter()


def reader(fd, out):
    os.sched_setaffinity(0, {0})
    delays = []
    while True:
        b = os.read(fd, 8)
        if len(b) < 8:
            break
        (sent,) = struct.unpack("d", b)
        if sent < 0:
            break
        delays.append(time.perf_counter() - sent)
    delays.sort()
    n = len(delays)
    out.put([delays[min(int(n * q), n - 1)] for q in (0.5, 0.99, 0.999)] + [delays[-1]])


def run(mode):
    stop, out = mp.Event(), mp.Queue()
    r, w = os.pipe()
    h = mp.Process(target=hog, args=(mode, stop)) if mode != "none" else None
    if h:
        h.start()
    rd = mp.Process(target=reader, args=(r, out))
    rd.start()
    os.sched_setaffinity(0, {1})
    time.sleep(0.2)
    for _ in range(3000):
        os.write(w, struct.pack("d", time.perf_counter()))
        time.sleep(0.0007)
    os.write(w, struct.pack("d", -1.0))
    p50, p99, p999, worst = out.get()
    rd.join()
    stop.set()
    if h:
        h.join()
    print(
        f"{mode:<6} wake-up to read: p50 {p50 * 1e6:.0f} us, p99 {p99 * 1e6:.0f} us, "
        f"p99.9 {p999 * 1e6:.0f} us, max {worst * 1e6:.0f} us"
    )


if __name__ == "__main__":
    if os.cpu_count() < 2:
        sys.exit("needs two cores")
    for mode in sys.argv[1:] or ["none", "hog", "yield"]:
        if mode not in ("none", "hog", "yield"):
            sys.exit(f"unknown mode {mode!r}: none, hog or yield")
        run(mode)
