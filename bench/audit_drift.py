"""How fast audits catch a student whose quality drifted, and how often they demote a good one.

A serving student is judged at every look on its newest `AUDIT_WINDOW` audited answers
(flywheel/gate.py `decide_audit`): demoted once the anytime 95% upper bound on their mean
score is below `min_teacher_ratio`. This simulates right/wrong answers (the tool-calling
metric is 0 or 1) and looks after every audit (the watcher looks less often, so this is
the worst case for false demotions), for several window sizes side by side (`all`: every
audit since the student took over):

- drift: a student right `--good` of the time, audited `--before` times, then right
  `--drifted` of the time; audits after the drift until it is demoted (median, 90th
  percentile over `--runs` runs), and the requests that is at `--percent`% audits;
- false demotions: students that stay right `--good` of the time, or just above the
  ratio (+0.005), for `--audits` audits; the share of runs ever demoted.

Every window waits for `gate.audit_min_pairs` audits before a verdict. A second table
compares that floor with none (1) and a higher one (30), on the chosen window: false
demotions of students at and just above the ratio, and how many audits it takes to demote
a student that is wrong half the time from its first answer.

    python bench/audit_drift.py [--runs 400] [--good 0.97] [--drifted 0.85] [--ratio 0.95]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flywheel.config import GateConfig
from flywheel.gate import AUDIT_WINDOW
from flywheel.stats import upper_bound

WINDOWS = (100, AUDIT_WINDOW, 500, None)  # None: every audit since the student took over
MIN_PAIRS = GateConfig().audit_min_pairs
FLOORS = (1, MIN_PAIRS, 30)


def first_demotion(right: numpy.ndarray, ratio: float, window: int | None, min_pairs: int = MIN_PAIRS
                   ) -> numpy.ndarray:
    """Per run (row of 0/1 scores), the audit at which it is first demoted (-1: never)."""
    sums = numpy.cumsum(right, axis=1, dtype=float)
    audits = numpy.arange(1, right.shape[1] + 1)
    looks = audits
    before = numpy.zeros_like(sums)
    if window is not None:
        before[:, window:] = sums[:, :-window]
        looks = numpy.minimum(looks, window)
    demoted = (upper_bound((sums - before) / looks, looks, anytime=True) < ratio) & (audits >= min_pairs)
    return numpy.where(demoted.any(axis=1), demoted.argmax(axis=1), -1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=400)
    parser.add_argument("--good", type=float, default=0.97)
    parser.add_argument("--drifted", type=float, default=0.85)
    parser.add_argument("--ratio", type=float, default=0.95)
    parser.add_argument("--before", type=int, default=1000, help="audits before the drift")
    parser.add_argument("--after", type=int, default=3000, help="audits simulated after it")
    parser.add_argument("--audits", type=int, default=20_000, help="audits of a student that does not drift")
    parser.add_argument("--percent", type=float, default=5.0, help="audit share that turns audits into requests")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = numpy.random.default_rng(args.seed)
    share = numpy.where(numpy.arange(args.before + args.after) < args.before, args.good, args.drifted)
    drifting = rng.random((args.runs, len(share))) < share
    steady = {good: rng.random((args.runs, args.audits)) < good for good in (args.good, args.ratio + 0.005)}
    near = {good: rng.random((args.runs, args.audits)) < good for good in (args.ratio + 0.005, args.ratio)}
    awful = rng.random((args.runs, 200)) < 0.5

    rows = {}
    for window in WINDOWS:
        at = first_demotion(drifting, args.ratio, window)
        caught = at[at >= args.before] - args.before + 1
        rows["all" if window is None else str(window)] = {
            "median_audits": float(numpy.median(caught)) if caught.size else None,
            "p90_audits": float(numpy.percentile(caught, 90)) if caught.size else None,
            "demoted_before_drift": int(((at >= 0) & (at < args.before)).sum()), "never_caught": int((at < 0).sum()),
            "false_demotion": {f"{good:g}": float((first_demotion(right, args.ratio, window) >= 0).mean())
                               for good, right in steady.items()}}

    goods = [f"{good:g}" for good in steady]
    print(f"right {args.good:g} of the time, then {args.drifted:g} (ratio {args.ratio:g}, {args.runs} runs): "
          f"audits after the drift until demoted; runs demoted anyway while right {' / '.join(goods)} of the time "
          f"for {args.audits:,} audits")
    print(f"{'window':>7} {'median':>8} {'p90':>6} {f'requests at {args.percent:g}%':>17} {'early':>6} "
          f"{'missed':>7} {'false demotions':>16}")
    for name, row in rows.items():
        median, p90 = row["median_audits"], row["p90_audits"]
        print(f"{name:>7} {median or 0:>8.0f} {p90 or 0:>6.0f} {(median or 0) * 100 / args.percent:>17,.0f} "
              f"{row['demoted_before_drift']:>6} {row['never_caught']:>7} "
              f"{' / '.join(f'{v:.1%}' for v in row['false_demotion'].values()):>16}")
    floors = {}
    for floor in FLOORS:
        at = first_demotion(awful, args.ratio, AUDIT_WINDOW, floor)
        floors[str(floor)] = {
            "false_demotion": {f"{good:g}": float((first_demotion(right, args.ratio, AUDIT_WINDOW, floor) >= 0).mean())
                               for good, right in near.items()},
            "awful_median_audits": float(numpy.median(at[at >= 0] + 1)) if (at >= 0).any() else None}
    nears = [f"{good:g}" for good in near]
    print(f"\nwindow {AUDIT_WINDOW}, fewest audits before a verdict: runs demoted while right {' / '.join(nears)} of "
          f"the time; audits to demote a student right half the time from the start")
    print(f"{'floor':>7} {'false demotions':>16} {'to demote a 0.5':>16}")
    for floor, row in floors.items():
        mark = " (chosen)" if floor == str(MIN_PAIRS) else ""
        print(f"{floor:>7} {' / '.join(f'{v:.2%}' for v in row['false_demotion'].values()):>16} "
              f"{row['awful_median_audits'] or 0:>16.0f}{mark}")
    print(json.dumps({"benchmark": "audit_drift", "good": args.good, "drifted": args.drifted, "ratio": args.ratio,
                      "runs": args.runs, "audits": args.audits, "chosen_window": AUDIT_WINDOW, "windows": rows,
                      "chosen_min_pairs": MIN_PAIRS, "min_pairs": floors}))


if __name__ == "__main__":
    main()
