#!/usr/bin/env python3
"""Summarises a bench/scripts/w2-profile.sh run: CPU 0's samples per 1,000 W2 messages.

    bench/scripts/w2-profile.py bench/results/<stamp>-w2profile [TOP]

For every <server>-r<round> in the directory: the probe's max msgs/s (from the load
generator's JSON), and the samples `perf record -C 0` took in its 3 s window, per 1,000
messages sent in that window (rate x 3 s), split into the kernel, libc, the server's own
code (its binary, or Bun's JIT and runtime) and idle; then which tasks on CPU 0 they were
in, `/proc/stat`'s split of CPU 0 over the window, and the TOP symbols (default 15) of
each server over all its rounds. Medians are over rounds.
"""

import json
import pathlib
import re
import statistics
import subprocess
import sys
from collections import Counter, defaultdict

WINDOW_S = 3.0
ROW = re.compile(r"\s*[\d.]+%\s+(\d+)\s+(\S+)\s+(\S+)\s+\[(.)\]\s+(.*)")
STAT_FIELDS = "user nice system idle iowait irq softirq steal".split()


def samples(perf_data):
    """(comm, dso, sym) -> samples, from `perf report`."""
    out = subprocess.run(
        ["perf", "report", "-i", str(perf_data), "-n", "--sort", "comm,dso,sym", "--stdio"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    counts = Counter()
    for line in out.splitlines():
        m = ROW.match(line)
        if m:
            counts[(m.group(2), m.group(3), m.group(5).strip())] += int(m.group(1))
    return counts


def group_of(comm, dso):
    if comm.startswith("swapper"):
        return "idle"
    if dso == "[kernel.kallsyms]":
        return "kernel"
    if dso.startswith("libc"):
        return "libc"
    return "own code"


def cpu0_split(stat_file):
    lines = [l.split() for l in stat_file.read_text().splitlines() if l.startswith("cpu0 ")]
    if len(lines) < 2:
        return {}
    delta = [int(b) - int(a) for a, b in zip(lines[0][1:9], lines[1][1:9])]
    total = sum(delta) or 1
    return {name: d / total for name, d in zip(STAT_FIELDS, delta)}


def main():
    out = pathlib.Path(sys.argv[1])
    top = int(sys.argv[2]) if len(sys.argv) > 2 else 15
    runs = defaultdict(list)  # server -> [(round, rate, per-1000 counters)]
    for js in sorted(out.glob("*-r*.json")):
        tag = js.name[: -len(".json")]
        server, rnd = tag.rsplit("-r", 1)
        perf_data = out / f"{tag}.perf.data"
        try:
            rate = json.loads(js.read_text())["max_msgs_per_s"]
        except (ValueError, KeyError):
            print(f"- {tag}: no result (see {tag}.loadgen.log)")
            continue
        if not perf_data.exists():
            continue
        per_k = WINDOW_S * rate / 1000.0
        counts = samples(perf_data)
        runs[server].append((int(rnd), rate, {k: v / per_k for k, v in counts.items()}, cpu0_split(out / f"{tag}.stat")))

    groups = ["kernel", "libc", "own code", "idle"]
    print("CPU 0 during W2's max-rate probe: samples per 1,000 messages (perf record -C 0, medians of rounds)\n")
    print("| server | rounds | max msgs/s | all | " + " | ".join(groups) + " | /proc/stat cpu0: user / system / softirq / idle |")
    print("|---|---:|---:|---:|" + "---:|" * len(groups) + "---|")
    for server, rs in runs.items():
        med = lambda f: statistics.median(f(r) for r in rs)
        by_group = {
            g: med(lambda r, g=g: sum(v for (c, d, _), v in r[2].items() if group_of(c, d) == g))
            for g in groups
        }
        split = " / ".join(
            "%.2f" % med(lambda r, f=f: r[3].get(f, 0.0)) for f in ["user", "system", "softirq", "idle"]
        )
        print(
            f"| {server} | {len(rs)} | {med(lambda r: r[1]) / 1000:.1f}k | {med(lambda r: sum(r[2].values())):.1f} | "
            + " | ".join(f"{by_group[g]:.1f}" for g in groups)
            + f" | {split} |"
        )
    for server, rs in runs.items():
        per_round = ", ".join(f"r{r[0]} {r[1] / 1000:.1f}k: {sum(r[2].values()):.1f}" for r in sorted(rs))
        tasks = Counter()
        syms = Counter()
        for r in rs:
            for (comm, dso, sym), v in r[2].items():
                tasks[comm] += v / len(rs)
                syms[(group_of(comm, dso), sym)] += v / len(rs)
        print(f"\n**{server}**: rounds (max, samples per 1,000 messages) {per_round}")
        print("- tasks on CPU 0: " + ", ".join(f"{c} {v:.1f}" for c, v in tasks.most_common(5)))
        print(f"- top {top} symbols (mean of rounds):")
        for (g, sym), v in syms.most_common(top):
            print(f"  - {v:5.2f} {g}: {sym[:90]}")


if __name__ == "__main__":
    main()
