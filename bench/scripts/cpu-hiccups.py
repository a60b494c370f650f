#!/usr/bin/env python3
"""Times each CPU lost: one spinning process per CPU reads CLOCK_MONOTONIC in a loop and
records every gap between two reads longer than a threshold.

    bench/scripts/cpu-hiccups.py                    # CPUs 0 and 1, 10 s, gaps >= 2 ms
    bench/scripts/cpu-hiccups.py --cpus 0 --seconds 5 --min-ms 1

Run it on an otherwise idle box: a gap then means the CPU ran something else (a kernel
thread, an interrupt) or, on a VM, that the host did not run the virtual CPU at all,
which the guest's steal counters may not show. Prints, per CPU, each gap (start in
seconds from the probe's start, length in ms), then how many there were and the median
time between consecutive events (gaps within 100 ms of each other count as one; a
periodic source shows a steady period).
Every probe stops by itself after --seconds.
"""

import argparse
import multiprocessing
import os
import statistics
import time


def probe(cpu, seconds, min_gap, out):
    os.sched_setaffinity(0, {cpu})
    clock = time.clock_gettime
    mono = time.CLOCK_MONOTONIC
    start = last = clock(mono)
    end = start + seconds
    gaps = []
    while last < end:
        now = clock(mono)
        if now - last >= min_gap:
            gaps.append((last - start, (now - last) * 1000))
        last = now
    out.put((cpu, gaps))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cpus", default="0,1", help="comma-separated CPU numbers")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--min-ms", type=float, default=2.0, help="shortest gap reported")
    args = ap.parse_args()
    cpus = [int(c) for c in args.cpus.split(",")]
    allowed = os.sched_getaffinity(0)
    if not set(cpus) <= allowed:
        ap.error(f"--cpus {args.cpus}: this process may run on CPUs {sorted(allowed)} only")
    out = multiprocessing.Queue()
    procs = [
        multiprocessing.Process(target=probe, args=(c, args.seconds, args.min_ms / 1000, out))
        for c in cpus
    ]
    for p in procs:
        p.start()
    results = dict(out.get(timeout=args.seconds + 30) for _ in procs)
    for p in procs:
        p.join(timeout=5)
    for cpu in cpus:
        gaps = results[cpu]
        print(f"cpu{cpu}: {len(gaps)} gaps of {args.min_ms:g} ms or more in {args.seconds:g} s")
        for at, ms in gaps:
            print(f"  at {at:7.3f} s: {ms:6.2f} ms")
        # Gaps within 100 ms of each other count as one event.
        events, prev = [], None
        for at, _ in gaps:
            if prev is None or at - prev > 0.1:
                events.append(at)
            prev = at
        if len(events) >= 3:
            period = statistics.median(b - a for a, b in zip(events, events[1:]))
            print(f"  {len(events)} events; median time between them: {period:.3f} s")


if __name__ == "__main__":
    main()
