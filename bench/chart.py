#!/usr/bin/env python3
"""Draws bench/results.png from a `bench/run` output (default bench/last-run.txt): events/s and
CPU seconds per million events by contestant, and p50/p99 added latency at half of peak.
Needs matplotlib (`pip install matplotlib`). Every bar is a number from that output."""
import sys
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

src = sys.argv[1] if len(sys.argv) > 1 else "bench/last-run.txt"
out = sys.argv[2] if len(sys.argv) > 2 else "bench/results.png"
rows = []
for line in open(src):
    if line.startswith("| ") and not line.startswith("| contestant"):
        c = [x.strip() for x in line.strip().strip("|").split("|")]
        name = c[0].split(" (")[0].split(":")[0]
        if "unbatched" in c[0] or "batched (" in c[0]:
            name = c[0].split(" (max_events")[0].split(" (100")[0]
        rows.append((name, float(c[1]), float(c[3]), c[6], c[7]))
names = [r[0] for r in rows]
fig, ax = plt.subplots(1, 3, figsize=(16, 5))
ax[0].barh(names, [r[1] for r in rows], color="tab:blue")
ax[0].set_xlabel("events/s end to end (higher is better)")
ax[1].barh(names, [r[2] for r in rows], color="tab:orange")
ax[1].set_xlabel("contestant CPU s per million events (lower is better)")
lat = [(r[0], float(r[3]), float(r[4])) for r in rows if r[3] != "n/a"]
y = range(len(lat))
ax[2].barh([i + 0.2 for i in y], [l[2] for l in lat], height=0.4, label="p99", color="tab:red")
ax[2].barh([i - 0.2 for i in y], [l[1] for l in lat], height=0.4, label="p50", color="tab:green")
ax[2].set_yticks(list(y), [l[0] for l in lat])
ax[2].axvline(1.0, color="black", linestyle="--", linewidth=1, label="1 ms target")
ax[2].set_xlabel("added latency at 50% of own peak, ms")
ax[2].legend()
for a in ax[:2]:
    a.invert_yaxis()
ax[2].invert_yaxis()
fig.suptitle(open(src).readline().strip() + " | " + src)
fig.tight_layout()
fig.savefig(out, dpi=90)
print(out)
