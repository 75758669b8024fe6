#!/usr/bin/env python3
"""Draws bench/results.png from a `bench/run` output (default bench/last-run.txt): events/s and
CPU seconds per million events by contestant (medians of the peak rounds), and the distribution
of added latency at half of each contestant's peak (from the `latency-cdf` lines: 1001 quantiles
per contestant). Needs matplotlib (`pip install matplotlib`). Every mark is a number from that
output."""
import sys
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

src = sys.argv[1] if len(sys.argv) > 1 else "bench/last-run.txt"
out = sys.argv[2] if len(sys.argv) > 2 else "bench/results.png"
rows, cdfs = [], []
in_table = False
for line in open(src):
    if line.startswith("| contestant"):
        in_table = True
        continue
    if in_table and line.startswith("|---"):
        continue
    if in_table and line.startswith("| "):
        c = [x.strip() for x in line.strip().strip("|").split("|")]
        rows.append((c[0].replace(" inflate + scan only (no HTTP)", " (no HTTP)"), float(c[1]), float(c[3])))
        continue
    in_table = False
    if line.startswith("latency-cdf "):
        name, values = line[len("latency-cdf "):].split(" | ", 1)
        cdfs.append((name, [float(v) for v in values.split()]))

names = [r[0] for r in rows]
fig, ax = plt.subplots(1, 3, figsize=(21, 7), gridspec_kw={"width_ratios": [1, 1, 1.2]})
ax[0].barh(names, [r[1] / 1000 for r in rows], color="tab:blue")
ax[0].set_xlabel("thousand events/s end to end (higher is better)")
ax[1].barh(names, [r[2] for r in rows], color="tab:orange")
ax[1].set_xlabel("contestant CPU s per million events (lower is better)")
for a in ax[:2]:
    a.invert_yaxis()
    a.tick_params(axis="y", labelsize=8)
for name, values in cdfs:
    n = len(values)
    # Fraction of events slower than each quantile, so the tail is visible on a log scale.
    above = [1.0 - i / (n - 1) for i in range(n)]
    ax[2].plot(values, [max(a, 1e-4) for a in above], label=name.replace(" (default)", "").replace(" events / ", "/"))
ax[2].set_xscale("log")
ax[2].set_yscale("log")
ax[2].axvline(1.0, color="black", linestyle="--", linewidth=1, label="1 ms target")
ax[2].axhline(0.01, color="grey", linestyle=":", linewidth=1, label="p99")
ax[2].set_xlabel("added latency at 50% of own peak, ms (source write to sink arrival)")
ax[2].set_ylabel("fraction of events slower")
ax[2].legend(fontsize=8, loc="lower left")
fig.suptitle(open(src).readline().strip() + " | " + src)
fig.tight_layout()
fig.savefig(out, dpi=90)
print(out)
