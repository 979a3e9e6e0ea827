#!/usr/bin/env python3
"""Estimated vs measured time and peak memory of every instance a run made.

Reads the manifests in a babelflow store (each keeps `plan --estimate`'s
figures from when the run began beside its duration and peak RSS) and
prints a Markdown table of the instances with a work estimate, with the
ratio measured / estimated, and where the estimated time came from.
Usage: estimate_vs_measured.py STORE [RECIPE_NAME [FROM_UNIX [UNTIL_UNIX [FIRST_DIR RUNS [CONTROL]]]]]
(FROM/UNTIL: only instances that finished in that window; FIRST_DIR: the
manifests of each instance's first run, by fingerprint, whose estimate is
the one made before it ever ran; RUNS: JSON lines of every run's
`fingerprint`, `duration_s` and `peak_rss_bytes`, measured by their median,
and `control_s`, the control's time around them; CONTROL: a JSON object
whose `control_s` is the control's time around the calibration).

With a control, two more columns: the control's time when the instance
ran over its time when the estimate's source ran (the calibration, or the
latest earlier run the estimate names), and the ratio divided by that: what
the estimate missed besides the machine's drift.
"""
import json
import pathlib
import re
import statistics
import sys

# The run an estimate from history names, in history.rs's words
# ("… (latest `exam@pretrain` of quickstart: 0.03 s …)"); without them the
# control columns say "-".
LATEST = re.compile(r"latest `([^`]+)` of ([^:]+):")


def measured_peak(m):
    """The peak where an instance's work lived, as babelflow reads it
    (`memory::measured_peak`): a GPU's own (`notes.device_peak_bytes`), else
    the process's resident peak; None for a GPU instance without one (its
    host memory is not its device's)."""
    notes = m.get("notes") or {}
    if notes.get("device_peak_bytes"):
        return notes["device_peak_bytes"], " on the device"
    if str(notes.get("backend", "cpu")).startswith("cpu"):
        return m.get("peak_rss_bytes"), ""
    return None, ""


def main():
    store = pathlib.Path(sys.argv[1])
    recipe = sys.argv[2] if len(sys.argv) > 2 else None
    since = int(sys.argv[3]) if len(sys.argv) > 3 and sys.argv[3] else 0
    until = int(sys.argv[4]) if len(sys.argv) > 4 and sys.argv[4] else None
    first = pathlib.Path(sys.argv[5]) if len(sys.argv) > 5 else None
    runs = {}
    if len(sys.argv) > 6:
        for line in open(sys.argv[6]):
            run = json.loads(line)
            runs.setdefault(run["fingerprint"], []).append(run)
    at_calibration = json.load(open(sys.argv[7]))["control_s"] if len(sys.argv) > 7 else None
    every = []
    for manifest in sorted(store.glob("artifacts/*/manifest.json")):
        fingerprint = manifest.parent.name
        if first and (first / f"{fingerprint}.json").exists():
            manifest = first / f"{fingerprint}.json"
        m = json.loads(manifest.read_text())
        if m.get("estimate"):
            every.append((m["finished_at"], m["instance"], m["kind"], m["estimate"], m, runs.get(fingerprint, [])))
    every.sort(key=lambda r: r[:2])
    rows = [
        r for r in every
        if (not recipe or r[4].get("recipe") == recipe)
        and r[0] >= since and (until is None or r[0] < until)
    ]

    def control_of(of_this):
        controls = [r["control_s"] for r in of_this if r.get("control_s")]
        return statistics.median(controls) if controls else None

    def control_then(m, e):
        """The control's time when the estimate's source was measured."""
        source = e.get("source") or ""
        if "calibrate" in source:
            return at_calibration
        latest = LATEST.search(source)
        if not latest:
            return None
        earlier = [
            r for r in every
            if r[1] == latest.group(1) and r[4].get("recipe") == latest.group(2)
            and r[0] <= m["finished_at"] and r[4]["fingerprint"] != m["fingerprint"]
        ]
        return control_of(earlier[-1][5]) if earlier else None

    controlled = at_calibration is not None
    print(
        "| instance | kind | estimated time | from | measured time | ratio |"
        + (" control | ratio / control |" if controlled else "")
        + " estimated peak | measured peak | ratio |"
    )
    print("|---|---|---|---|---|---|" + ("---|---|" if controlled else "") + "---|---|---|")
    for _, name, kind, e, m, of_this in rows:
        took = statistics.median(r["duration_s"] for r in of_this) if of_this else m["duration_s"]
        peaks = [r["peak_rss_bytes"] for r in of_this if r.get("peak_rss_bytes")]
        rss, where = (statistics.median(peaks), "") if peaks else measured_peak(m)
        runs_note = f" (median of {len(of_this)})" if len(of_this) > 1 else ""
        seconds, peak = e.get("seconds"), e["peak_bytes"]
        own = "" if m.get("peak_rss_own") else " (shared)"
        time_ratio = f"{took / seconds:.2f}" if seconds else "-"
        est_time = f"{seconds:.2f} s" if seconds is not None else "?"
        source = e.get("source") or ""
        origin = "earlier runs" if "same shape" in source else "calibrate" if "calibrate" in source else source[:20]
        drift = ""
        if controlled:
            now, then = control_of(of_this), control_then(m, e)
            if now and then and seconds:
                drift = f"| {now / then:.2f} | {took / seconds / (now / then):.2f} "
            else:
                drift = "| - | - "
        print(
            f"| {name} | {kind} | {est_time} | {origin} | {took:.3f} s{runs_note} | {time_ratio} {drift}"
            + (f"| {peak / 2**20:.0f} MiB | {rss / 2**20:.0f} MiB{where}{own} | {rss / peak:.2f} |"
               if rss else f"| {peak / 2**20:.0f} MiB | ? (not measured on the device) | - |")
        )


if __name__ == "__main__":
    main()
