#!/usr/bin/env python3
"""Draws dashboard.json from a Prometheus, without Grafana: every panel's queries are run over a
time range with /api/v1/query_range and drawn where the dashboard puts the panel (gridPos),
with the fault windows of an alert drill shaded and numbered.

  plot_dashboard.py --prometheus http://127.0.0.1:19390 --windows windows.json --out dash.png

windows.json is what tests/e2e/alert_drill.cc writes: {"start", "end", "faults": [{"fault",
"start", "end"}]} in Unix seconds. scripts/alert-drill.sh runs this at the end of a drill.
Grafana's $__rate_interval becomes 1m (four 5 s scrapes and then some, as Grafana would pick)
and stat panels are drawn as the series they summarise, their last value in the title.
"""
import argparse
import json
import os
import re
import urllib.parse
import urllib.request

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)

HERE = os.path.dirname(os.path.abspath(__file__))
STEP_S = 15
RATE_INTERVAL = "1m"
UNIT_LABELS = {"reqps": "req/s", "ops": "/s", "s": "s", "bytes": "bytes",
               "percentunit": "ratio", "short": ""}


def query_range(base, expr, start, end):
    """The result matrix of `expr`, or [] when Prometheus refuses it (printed)."""
    qs = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": STEP_S})
    try:
        with urllib.request.urlopen(f"{base}/api/v1/query_range?{qs}", timeout=30) as r:
            body = json.load(r)
    except OSError as e:
        print(f"plot_dashboard: {expr!r}: {e}")
        return []
    return body.get("data", {}).get("result", [])


def legend(fmt, metric):
    if not fmt:
        return ", ".join(f"{k}={v}" for k, v in metric.items() if k != "__name__") or "value"
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: metric.get(m.group(1), ""), fmt)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prometheus", required=True)
    ap.add_argument("--windows", required=True)
    ap.add_argument("--dashboard", default=os.path.join(HERE, "dashboard.json"))
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    with open(args.dashboard) as f:
        dashboard = json.load(f)
    with open(args.windows) as f:
        windows = json.load(f)
    start, end = windows["start"], windows["end"]
    faults = windows.get("faults", [])

    panels = dashboard["panels"]
    height = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    fig = plt.figure(figsize=(22, height * 0.42 + 2), dpi=55)
    grid = fig.add_gridspec(height, 24, hspace=6.0, wspace=1.6, top=0.95, bottom=0.02,
                            left=0.03, right=0.99)
    keys = "; ".join(f"{i + 1}: {w['fault']}" for i, w in enumerate(faults))
    fig.suptitle(f"{dashboard['title']}: an alert drill, x in minutes, faults shaded\n{keys}",
                 fontsize=13, wrap=True)
    to_min = lambda t: (t - start) / 60  # noqa: E731

    for panel in panels:
        g = panel["gridPos"]
        if panel["type"] == "row":
            ax = fig.add_subplot(grid[g["y"]:g["y"] + 1, :])
            ax.axis("off")
            ax.text(0, 0, panel["title"], fontsize=13, weight="bold", va="bottom")
            continue
        ax = fig.add_subplot(grid[g["y"]:g["y"] + g["h"], g["x"]:g["x"] + g["w"]])
        last = None
        for target in panel.get("targets", []):
            expr = target["expr"].replace("$__rate_interval", RATE_INTERVAL)
            for series in query_range(args.prometheus, expr, start, end):
                xs = [to_min(float(t)) for t, _ in series["values"]]
                ys = [float(v) for _, v in series["values"]]
                # A series of a few points (an alert firing for one evaluation) as dots.
                ax.plot(xs, ys, linewidth=1.2, marker="." if len(xs) < 8 else None,
                        label=legend(target.get("legendFormat", ""), series["metric"]))
                last = ys[-1] if ys else last
        for i, w in enumerate(faults):
            ax.axvspan(to_min(w["start"]), to_min(w["end"]), color="tab:red", alpha=0.12)
            ax.text(to_min(w["start"]), 1.0, str(i + 1), transform=ax.get_xaxis_transform(),
                    fontsize=8, va="top", color="tab:red")
        unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "short")
        title = panel["title"]
        if panel["type"] == "stat" and last is not None:
            title += f" (now {last:.3g})"
        ax.set_title(title, fontsize=10)
        ax.set_xlim(0, to_min(end))
        ax.tick_params(labelsize=7)
        if UNIT_LABELS.get(unit, unit):
            ax.set_ylabel(UNIT_LABELS.get(unit, unit), fontsize=8)
        if g["y"] + g["h"] == height:
            ax.set_xlabel("minutes into the drill", fontsize=9)
        if ax.get_legend_handles_labels()[0] and panel["type"] != "stat":
            ax.legend(fontsize=6, loc="upper left", ncol=2 if g["w"] > 8 else 1,
                      framealpha=0.6)
    fig.savefig(args.out)
    print(f"plot_dashboard: {args.out}, {os.path.getsize(args.out) // 1024} KB")


if __name__ == "__main__":
    main()
