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
    """(phase start µs on CLOCK_MONOTONIC, sorted [(arrival µs, latency µs)]), or None."""
    start_us = None
    rows = []
    try:
        with open(path) as f:
            for number, line in enumerate(f, 1):
                line = line.strip()
                if line.startswith("# phase_start_monotonic_us"):
                    start_us = int(line.split()[-1])
                elif line and not line.startswith("#"):
                    fields = line.split()
                    if len(fields) != 2 or not all(x.isdigit() for x in fields):
                        print(f"{path}:{number}: not 'arrival_us<TAB>latency_us': {line!r}",
                              file=sys.stderr)
                        return None
                    rows.append((int(fields[0]), int(fields[1])))
    except OSError as e:
        print(f"{path}: {e}", file=sys.stderr)
        return None
    if start_us is None:
        print(f"{path}: no '# phase_start_monotonic_us' line: not a loadgen latency trace",
              file=sys.stderr)
        return None
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
    failed = False
    for path in a.trace:
        trace = read_trace(path)
        if trace is None:
            failed = True
            continue
        start_us, rows = trace
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
            worst = 0
            for t, l in rows[i:]:
                if t > after + 50_000:
                    break
                worst = max(worst, l)
            t0 = (start_us + before) / 1e6
            t1 = (start_us + after) / 1e6
            print(f"  no delivery for {(after - before) / 1000:7.2f} ms at {before / 1000:8.1f} ms "
                  f"(worst latency in the next 50 ms: {worst / 1000:.2f} ms)  --time {t0:.6f},{t1:.6f}")
        print(f"  {gaps} gaps of {a.gap_ms} ms or more")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
