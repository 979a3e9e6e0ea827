#!/usr/bin/env python3
"""The Slurm executor's overhead per instance, from a store a Slurm run filled.

For each instance that ran as a job: the driver's time (submit → it saw the
committed artifact, from the lock file) minus the job's own time (babelflow
exec's start → its result, from jobs/<fingerprint>/result.json). What is
left is the queue wait, Slurm's launch, exec's recipe load and plan, and the
driver's polling latency.

  babelflow run pipelines/examples/commands-13.yaml --executor slurm --store /tmp/s
  python3 scripts/slurm_overhead.py /tmp/s
"""
import json
import statistics
import sys
from pathlib import Path

import yaml  # PyYAML: the lock file is YAML


def main():
    store = Path(sys.argv[1])
    rows = []
    for lock in (store / "recipes").glob("*.lock.yaml"):
        doc = yaml.safe_load(lock.read_text())
        for name, entry in (doc.get("instances") or {}).items():
            if not entry.get("job") or entry.get("status") != "ok":
                continue
            result = store / "jobs" / entry["fingerprint"] / "result.json"
            if not result.exists():
                continue
            inside = json.loads(result.read_text())["seconds"]
            rows.append((name, entry["duration_s"], inside))
    if not rows:
        sys.exit(f"no Slurm-run instances with results in {store}")
    over = sorted(d - i for _, d, i in rows)
    q = lambda p: over[min(len(over) - 1, int(p * len(over)))]
    print(f"{len(rows)} instances; driver-seen seconds minus the job's own: "
          f"median {statistics.median(over):.2f} s, p10 {q(0.1):.2f}, p90 {q(0.9):.2f}, max {over[-1]:.2f}; "
          f"the jobs' own time: median {statistics.median(i for _, _, i in rows):.2f} s")


if __name__ == "__main__":
    main()
