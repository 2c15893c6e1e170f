"""Start-up time of `retl validate` on the demo project (the repository root), next to the
physical limit: a bare `python -c pass` of the same interpreter, measured in the same run.

    python bench/startup.py [--runs 10]

Runs each command N times (sequentially) and prints min/median wall seconds and the ratio, then
the 15 slowest imports (cumulative) of one `python -X importtime` run of `retl validate`.
Writes bench/results/startup-<commit>.json. Other processes on the machine skew both rows
alike; compare the ratio, and run it twice.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
RETL = [sys.executable, "-c", "from reverse_etl.entry import main; main()"]


def wall(cmd: list[str], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        done = subprocess.run(cmd, cwd=REPO, capture_output=True)
        times.append(time.perf_counter() - start)
        if done.returncode != 0:
            sys.exit(f"{cmd} failed ({done.returncode}): {done.stderr.decode()[-2000:]}")
    return times


def import_top(count: int) -> list[tuple[int, int, str]]:
    done = subprocess.run(
        [sys.executable, "-X", "importtime", *RETL[1:], "validate"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    rows = []
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        self_us, cumulative_us, name = line.removeprefix("import time:").split("|")
        rows.append((int(cumulative_us), int(self_us), name.rstrip()))
    rows.sort(reverse=True)
    return rows[:count]


def commit() -> str:
    done = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    )
    return done.stdout.strip() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()

    retl = wall([*RETL, "validate"], args.runs)
    limit = wall([sys.executable, "-c", "pass"], args.runs)
    print(f"{'command':<28} {'min s':>7} {'median s':>9}")
    for name, times in (("retl validate (demo)", retl), ("python -c pass (limit)", limit)):
        print(f"{name:<28} {min(times):>7.3f} {statistics.median(times):>9.3f}")
    ratio = statistics.median(retl) / statistics.median(limit)
    print(f"ratio (median): {ratio:.1f}x   runs: {args.runs}")

    top = import_top(15)
    print("\nslowest imports of `retl validate` (cumulative ms, self ms):")
    for cumulative, own, name in top:
        print(f"  {cumulative / 1000:>7.1f} {own / 1000:>7.1f}  {name}")

    results = BENCH / "results"
    results.mkdir(exist_ok=True)
    out = results / f"startup-{commit()}.json"
    out.write_text(
        json.dumps(
            {
                "runs": args.runs,
                "retl_validate": retl,
                "python_pass": limit,
                "imports": [
                    {"name": n.strip(), "cumulative_us": c, "self_us": s} for c, s, n in top
                ],
            },
            indent=2,
        )
    )
    print(f"\nwrote {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
