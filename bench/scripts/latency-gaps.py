#!/usr/bin/env python3
"""Where a latency tail comes from: gaps in a loadgen latency trace.

    loadgen ... --workload w2 --latency-trace /tmp/lt      # writes /tmp/lt.at80.tsv, ...
    bench/scripts/latency-gaps.py /tmp/lt.at80.tsv [--gap-ms 3]

Prints the phase's latency percentiles, then every stretch of at least --gap-ms with no
delivery at all (the server, or the load generator, did not send or read), with the
worst latency in the 50 ms after it and the stretch's time on CLOCK_MONOTONIC in
seconds, ready for `perf script -i perf.data --time START,END` of a server profile
recorded with `perf record -k CLOCK_MONOTONIC`. A tail made of a few such gaps is a
stall; a tail without them is queueing. Standard library only.
"""

import argparse
import sys


def read_trace(path):
    start_us = None
    rows = []
    with open(path) as f:
        for line in f:
            if line.startswith("# phase_start_monotonic_us"):
                start_us = int(line.split()[-1])
            elif line and not line.startswith("#"):
                arrival, latency = line.split()
                rows.append((int(arrival), int(latency)))
    if start_us is None:
        sys.exit(f"{path}: no '# phase_start_monotonic_us' line: not a loadgen latency trace")
    rows.sort()
    return start_us, rows


def percentile(sorted_values, q):
    if not sorted_values:
        return 0
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * q))]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("trace", nargs="+")
    ap.add_argument("--gap-ms", type=float, default=3.0, help="shortest stretch without deliveries to list")
    a = ap.parse_args()
    for path in a.trace:
        start_us, rows = read_trace(path)
        lat = sorted(l for _, l in rows)
        print(f"{path}: {len(rows)} deliveries; latency µs p50 {percentile(lat, 0.5)}, "
              f"p99 {percentile(lat, 0.99)}, p99.9 {percentile(lat, 0.999)}, max {lat[-1] if lat else 0}")
        gap_us = int(a.gap_ms * 1000)
        gaps = 0
        for i in range(1, len(rows)):
            before, after = rows[i - 1][0], rows[i][0]
            if after - before < gap_us:
                continue
            gaps += 1
            worst = max(l for t, l in rows[i:] if t <= after + 50_000) if i < len(rows) else 0
            t0 = (start_us + before) / 1e6
            t1 = (start_us + after) / 1e6
            print(f"  no delivery for {(after - before) / 1000:7.2f} ms at {before / 1000:8.1f} ms "
                  f"(worst latency in the next 50 ms: {worst / 1000:.2f} ms)  --time {t0:.6f},{t1:.6f}")
        print(f"  {gaps} gaps of {a.gap_ms} ms or more")


if __name__ == "__main__":
    main()
