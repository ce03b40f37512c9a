#!/usr/bin/env python3
"""Turns the raw measurements bench/run.sh collected into <out>.json, <out>.md and <out>.png.

  analyze.py --raw DIR --out bench/results/2025-01-01   write the three files
  analyze.py --raw DIR --max-rate                       print the highest payment rate the run
                                                        found every stage able to carry (x0.8)

Every figure sits beside a reference measured in the same run; ratios are ours / reference.
"""
import argparse
import json
import os
import re
import sys


def pct(values, p):
    """Nearest-rank percentile of a list (None when empty)."""
    if not values:
        return None
    v = sorted(values)
    k = max(0, min(len(v) - 1, int(round(p / 100.0 * len(v) + 0.5)) - 1))
    return v[k]


def read(raw, name, default=None):
    path = os.path.join(raw, name)
    if not os.path.exists(path):
        return default
    with open(path) as f:
        return f.read().strip()


def lines(raw, name):
    text = read(raw, name, "")
    return [l.split() for l in text.splitlines() if l.strip()]


def ratio(a, b):
    return round(a / b, 3) if a and b else None


# ---------------------------------------------------------------- 1. PayConcert
def ghz_summary(path):
    with open(path) as f:
        d = json.load(f)
    dist = {int(x["percentage"]): x["latency"] / 1e6 for x in d.get("latencyDistribution") or []}
    codes = d.get("statusCodeDistribution") or {}
    ok = codes.get("OK", 0)
    lat = [x["latency"] / 1e6 for x in d.get("details") or [] if x.get("status") == "OK"]
    return {
        "rps": round(ok / (d["total"] / 1e9), 1) if d.get("total") else None,
        "calls": d.get("count"),
        "ok": ok,
        "errors": d.get("count", 0) - ok,
        "error_kinds": d.get("errorDistribution") or {},
        "p50_ms": round(dist.get(50, 0), 2),
        "p95_ms": round(dist.get(95, 0), 2),
        "p99_ms": round(dist.get(99, 0), 2),
    }, lat


def pgbench_summary(raw, name):
    out = read(raw, f"{name}.out", "")
    tps = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", out)
    failed = re.search(r"number of failed transactions: (\d+)", out)
    lat = [int(l[2]) / 1000.0 for l in lines(raw, f"{name}.txt") if len(l) >= 3]
    return {
        "tps": round(float(tps.group(1)), 1) if tps else None,
        "transactions": len(lat),
        "failed": int(failed.group(1)) if failed else 0,
        "p50_ms": round(pct(lat, 50) or 0, 2),
        "p95_ms": round(pct(lat, 95) or 0, 2),
        "p99_ms": round(pct(lat, 99) or 0, 2),
    }, lat


def cpu_per_call(raw, name, calls):
    """CPU milliseconds per call of the load generator, Postgres and payment-server (run.sh's
    `measured`), or None where not measured."""
    fields = (read(raw, f"{name}.cpu", "") or "").split()
    if len(fields) != 4 or not calls:
        return None
    own, postgres, server, hz = (int(f) for f in fields)
    ms = lambda ticks: round(ticks * 1000.0 / hz / calls, 3)
    return {"client": ms(own), "postgres": ms(postgres), "server": ms(server),
            "total": ms(own + postgres + server)}


def pay_stage(raw, dists):
    rows = []
    for c, _phase in lines(raw, "pay-levels.txt"):
        ours, lat = ghz_summary(os.path.join(raw, f"pay-ghz-c{c}.json"))
        ref, ref_lat = pgbench_summary(raw, f"pgbench-c{c}")
        one, one_lat = pgbench_summary(raw, f"pgbench-one-c{c}")
        dists[f"PayConcert c={c} (ghz)"] = ("pay", lat)
        dists[f"pgbench 7 statements c={c}"] = ("pay", ref_lat)
        dists[f"pgbench 1 statement c={c}"] = ("pay", one_lat)
        ours["cpu_ms"] = cpu_per_call(raw, f"pay-ghz-c{c}", ours["ok"])
        ref["cpu_ms"] = cpu_per_call(raw, f"pgbench-c{c}", ref["transactions"])
        one["cpu_ms"] = cpu_per_call(raw, f"pgbench-one-c{c}", one["transactions"])
        rows.append({"concurrency": int(c), "ours": ours, "pgbench": ref, "pgbench_one": one,
                     "ratio": ratio(ours["rps"], ref["tps"]),
                     "ratio_one": ratio(ours["rps"], one["tps"])})
    return rows


# ---------------------------------------------------------------- 2. Relay
def parse_records(raw, name):
    """Console consumer lines: '<Type>:<ms>\\t<headers>\\t<key>' -> (ts_ms, bench_ts_ms, key)."""
    recs = []
    for line in (read(raw, name, "") or "").splitlines():
        parts = line.split("\t")
        if len(parts) < 3 or ":" not in parts[0]:
            continue
        ts = int(parts[0].split(":", 1)[1])
        m = re.search(r"bench-ts:(\d+)", parts[1])
        recs.append((ts, int(m.group(1)) / 1000.0 if m else None, parts[-1]))
    return recs


def producer_perf(raw, name):
    """The summary line of ProducerPerformance."""
    text = read(raw, name, "") or ""
    m = None
    for line in text.splitlines():
        mm = re.search(r"(\d+) records sent, ([0-9.]+) records/sec .*?([0-9.]+) ms avg latency, "
                       r"([0-9.]+) ms max latency, (\d+) ms 50th, (\d+) ms 95th, (\d+) ms 99th", line)
        if mm:
            m = mm
    if not m:
        return None
    return {"records": int(m.group(1)), "rps": float(m.group(2)), "avg_ms": float(m.group(3)),
            "max_ms": float(m.group(4)), "p50_ms": float(m.group(5)), "p95_ms": float(m.group(6)),
            "p99_ms": float(m.group(7))}


def relay_stage(raw, dists):
    out = {}
    recs = parse_records(raw, "relay-backlog.txt")
    start = int(read(raw, "relay-backlog-start-ms", "0"))
    backlog = [r for r in recs if r[2].startswith("r")]
    if backlog and start:
        first = min(r[0] for r in backlog)
        last = max(r[0] for r in backlog)
        out["backlog"] = {
            "rows": len(backlog),
            "seconds_from_start": round((last - start) / 1000.0, 2),
            "rps_from_start": round(len(backlog) / max(0.001, (last - start) / 1000.0), 1),
            "rps_first_to_last": round(len(backlog) / max(0.001, (last - first) / 1000.0), 1),
        }
    ref = producer_perf(raw, "ref-max.txt")
    out["backlog_reference"] = ref
    if ref and "backlog" in out:
        out["backlog_ratio"] = ratio(out["backlog"]["rps_from_start"], ref["rps"])
    allrecs = parse_records(raw, "relay-all.txt")
    steady = []
    for rate, before, after in lines(raw, "relay-rates.txt"):
        lo, hi = int(before), int(after)
        mine = [r for r in allrecs if r[2].startswith("s") and lo < int(r[2][1:]) <= hi]
        lat = [r[0] - r[1] for r in mine if r[1] is not None]
        span = (max(r[0] for r in mine) - min(r[0] for r in mine)) / 1000.0 if mine else 0
        dists[f"relay {rate}/s"] = ("relay", lat)
        refr = producer_perf(raw, f"ref-rate{rate}.txt")
        steady.append({
            "target_rps": int(rate), "records": len(mine), "expected": hi - lo,
            "rps": round(len(mine) / span, 1) if span else None,
            "p50_ms": round(pct(lat, 50) or 0, 1), "p99_ms": round(pct(lat, 99) or 0, 1),
            "max_ms": round(max(lat), 1) if lat else None,
            "reference": refr,
            "ratio_rps": ratio(len(mine) / span if span else None, refr and refr["rps"]),
        })
    out["steady"] = steady
    return out


# ---------------------------------------------------------------- 3. End to end
def recorded_lines(path):
    """(reservation id or None, message) for each line of a fake-telegram --record file."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        for line in f:
            try:
                m = json.loads(line)
            except ValueError:
                continue
            rid = re.search(r"(?:Reservation|예약 번호): #(\d+)", m.get("text", ""))
            yield (int(rid.group(1)) if rid else None), m


def recorded_messages(path):
    """(reservation id, message) for each recorded message that names one."""
    return ((rid, m) for rid, m in recorded_lines(path) if rid is not None)


def telegram(raw):
    return [(rid, int(m["received_at_ms"]))
            for rid, m in recorded_messages(os.path.join(raw, "telegram.jsonl"))]


def e2e_stage(raw, dists):
    msgs = telegram(raw)
    paid = {int(a): int(b) for a, b in (l[0].split("|") for l in lines(raw, "e2e-paid.txt"))}
    out = {}
    n = int(read(raw, "notify-backlog-count", "0") or 0)
    start = int(read(raw, "notify-backlog-start-ms", "0") or 0)
    backlog = [t for rid, t in msgs if rid // 100000000 == 50]
    if backlog and start:
        out["notifier_backlog"] = {
            "events": n, "delivered": len(backlog),
            "duplicates_delivered": len(backlog) - len(set(r for r, _ in msgs if r // 100000000 == 50)),
            "rps": round(len(backlog) / max(0.001, (max(backlog) - start) / 1000.0), 1),
        }
    rs = int(read(raw, "notify-replay-start-ms", "0") or 0)
    re_ = int(read(raw, "notify-replay-end-ms", "0") or 0)
    if rs and re_:
        out["notifier_replay_dedup"] = {
            "events": n, "resent": int(read(raw, "notify-replay-resent", "0")),
            "rps": round(n / max(0.001, (re_ - rs) / 1000.0), 1),
        }
    rows = []
    for rate, phase, ok in lines(raw, "e2e-rates.txt"):
        phase = int(phase)
        got = [(rid, t) for rid, t in msgs if rid // 100000000 == phase]
        lat = [t - paid[rid] for rid, t in got if rid in paid]
        ours, _ = ghz_summary(os.path.join(raw, f"e2e-rate{rate}-ghz.json"))
        span = (max(t for _, t in got) - min(t for _, t in got)) / 1000.0 if len(got) > 1 else 0
        dists[f"end to end {rate}/s"] = ("e2e", lat)
        rows.append({
            "target_rps": int(rate), "payments_ok": int(ok), "payment_rps": ours["rps"],
            "payment_errors": ours["errors"], "notified": len(got),
            "notified_distinct": len(set(r for r, _ in got)),
            "notifier_rps": round(len(got) / span, 1) if span else None,
            "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99), "max_ms": max(lat) if lat else None,
        })
    out["steady"] = rows
    sustained = [x["target_rps"] for x in rows if x["payment_errors"] == 0 and x["notified"] >= x["payments_ok"]
                 and x["p99_ms"] is not None and x["p99_ms"] < 1000]
    out["highest_sustained_rps"] = max(sustained) if sustained else None
    return out


# ---------------------------------------------------------------- 5. Telegram limits
CASES = {  # name: (what it is, how its goal reads)
    "a": ("a. 30/s over many chats", "≥ 95% of 30/s, 429s ≤ 1% of requests, 0 parked"),
    "b": ("b. paid broadcast 1,000/s", "≥ 90% of 1,000/s"),
    "c": ("c. no latency, no limits (= 3a)", "≥ 5,000/s, dedup re-sends nothing"),
    "d": ("d. payment spike, drain at 30/s", "no payment error, DLQ 0, 0 parked, drain ≥ 90% of 30/s"),
    "e": ("e. every message to one chat", "≥ 90% of 1/s, 429s ≤ 1"),
}


def case_messages(raw, name, phase):
    """Accepted messages of the case's own reservations: (reservation, chat, accepted ms)."""
    return [(rid, str(m.get("chat_id")), int(m.get("accepted_at_ms") or m["received_at_ms"]))
            for rid, m in recorded_messages(os.path.join(raw, f"limits-{name}.jsonl"))
            if rid // 100000000 == phase]


def pacing_waits(raw, name):
    """notifier_pacing_wait_seconds_total by scope, seconds."""
    waits = {}
    for line in (read(raw, f"limits-{name}-metrics.txt", "") or "").splitlines():
        m = re.match(r'notifier_pacing_wait_seconds_total\{scope="(\w+)"\}\s+([0-9.eE+-]+)', line)
        if m:
            waits[m.group(1)] = round(float(m.group(2)), 1)
    return waits


def limits_case(raw, name):
    info = {k: v for k, v in lines(raw, f"limits-{name}.txt")} if read(raw, f"limits-{name}.txt") else None
    if not info or "limit" not in info:
        return None
    limit, payments, phase = float(info["limit"]), int(info["payments"]), int(info["phase"])
    msgs = case_messages(raw, name, phase)
    times = sorted(t for _, _, t in msgs)
    stats = json.loads(read(raw, f"limits-{name}-stats.json", "{}") or "{}")
    requests = stats.get("requests")
    r429 = (stats.get("rate_limited") or {}).get("total")
    row = {
        "case": name, "limit_per_s": limit, "payments": payments, "delivered": len(msgs),
        "delivered_distinct": len(set(r for r, _, _ in msgs)), "chats": len(set(c for _, c, _ in msgs)),
        "requests": requests, "rate_limited": r429, "rate_limited_by": stats.get("rate_limited"),
        "slow_answers": stats.get("slow_answers"), "peak_in_flight": stats.get("peak_in_flight"),
        "dlq": int(info.get("dlq", 0)), "parked": int(info.get("parked", 0)),
        "dead_lettered": int(info.get("dead_lettered", 0)), "pacing_wait_s": pacing_waits(raw, name),
    }
    start = int(info.get("start_ms", 0))
    if name == "d":
        ours, _ = ghz_summary(os.path.join(raw, "limits-d-ghz-0.json"))
        paid = int(info.get("paid_ms", 0))
        row.update({"payment_rps": ours["rps"], "payment_errors": ours["errors"],
                    "payment_error_kinds": ours["error_kinds"]})
        if times:
            drain = (times[-1] - start) / 1000.0
            row.update({"drain_s": round(drain, 1), "ideal_drain_s": round(payments / limit, 1),
                        "after_payments_s": round((times[-1] - paid) / 1000.0, 1) if paid else None,
                        "rate": round(len(msgs) / drain, 2) if drain > 0 else None})
    elif len(times) > 1:
        span = (times[-1] - times[0]) / 1000.0
        row.update({"rate": round((len(times) - 1) / span, 2) if span > 0 else None,
                    "span_s": round(span, 1),
                    "rate_from_start": round(len(times) / ((times[-1] - start) / 1000.0), 2)
                    if start and times[-1] > start else None})
    row["ratio"] = round(row["rate"] / limit, 3) if row.get("rate") else None
    share = r429 / requests if requests else None
    all_in = row["delivered_distinct"] >= payments
    ratio = row["ratio"] or 0
    if name == "a":
        met = ratio >= 0.95 and share is not None and share <= 0.01 and row["parked"] == 0 and all_in
    elif name == "b":
        met = ratio >= 0.90 and all_in
    elif name == "d":
        met = (row.get("payment_errors") == 0 and row["dlq"] == 0 and row["parked"] == 0
               and all_in and ratio >= 0.90)
    else:
        met = ratio >= 0.90 and r429 is not None and r429 <= 1 and all_in
    row["goal_met"] = met
    return row


def limits_stage(raw, e2e):
    rows = []
    for name in "abcde":
        if name == "c":
            nb, nr = e2e.get("notifier_backlog"), e2e.get("notifier_replay_dedup")
            if nb:
                rows.append({"case": "c", "limit_per_s": None, "payments": nb["events"],
                             "delivered": nb["delivered"], "rate": nb["rps"], "ratio": None,
                             "rate_limited": 0, "parked": None,
                             "resent_on_replay": nr and nr["resent"],
                             "goal_met": nb["rps"] >= 5000 and nb["duplicates_delivered"] == 0
                             and bool(nr) and nr["resent"] == 0})
            continue
        row = limits_case(raw, name)
        if row:
            rows.append(row)
    return rows


# ---------------------------------------------------------------- 7. Fleet
FLEET_CASES = {  # name prefix: (what it is, how its goal reads)
    "a": ("a. one busy group + private chats, 1 replica",
          "private chats ≥ 95% of 30/s − 20/min, all delivered"),
    "b": ("b. backlog at 30/s, {n} replica(s)", "≥ 95% of 30/s, 429s ≤ 1% of requests, all delivered"),
    "c": ("c. 3 replicas, one killed, one added", "≥ 90% of 30/s, 0 lost, duplicates ≤ uncertain"),
    "d": ("d. paid broadcast 1,000/s, 3 replicas", "≥ 90% of 1,000/s, all delivered"),
    "e": ("e. bot answers while 3 replicas drain", "every /start answered within 2 s"),
}


def replica_metrics(raw, name):
    """Every series of the case's replicas' /metrics, summed over the replicas."""
    totals, prefix = {}, f"fleet-{name}-metrics-"
    for f in sorted(os.listdir(raw)):
        if not (f.startswith(prefix) and f.endswith(".txt")):
            continue
        for line in (read(raw, f, "") or "").splitlines():
            if not line.strip() or line.startswith("#"):
                continue
            parts = line.rsplit(None, 1)
            try:
                totals[parts[0]] = totals.get(parts[0], 0.0) + float(parts[1])
            except (IndexError, ValueError):
                continue
    return totals


def metric_total(metrics, name):
    return sum(v for k, v in metrics.items() if k == name or k.startswith(name + "{"))


def metric_by(metrics, name, label):
    out = {}
    for k, v in metrics.items():
        m = re.match(re.escape(name) + r"\{.*" + label + r'="([^"]*)"', k)
        if m:
            out[m.group(1)] = out.get(m.group(1), 0.0) + v
    return out


def fleet_messages(raw, name):
    """Every accepted message of the case: (reservation or None, chat, accepted ms)."""
    return [(rid, str(m.get("chat_id")), int(m.get("accepted_at_ms") or m["received_at_ms"]))
            for rid, m in recorded_lines(os.path.join(raw, f"fleet-{name}.jsonl"))]


def peak_per_second(times):
    """The most messages accepted within any one second."""
    best, lo = 0, 0
    for hi in range(len(times)):
        while times[hi] - times[lo] >= 1000:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def drain_rate(times):
    """Messages per second from the first to the last (n - 1 intervals)."""
    if len(times) < 2 or times[-1] <= times[0]:
        return None
    return round((len(times) - 1) / ((times[-1] - times[0]) / 1000.0), 2)


def fleet_case(raw, name):
    info = {k: v for k, v in lines(raw, f"fleet-{name}.txt")} if read(raw, f"fleet-{name}.txt") else None
    if not info or "limit" not in info:
        return None
    limit, payments, phase = float(info["limit"]), int(info["payments"]), int(info["phase"])
    start = int(info.get("start_ms", 0))
    msgs = [x for x in fleet_messages(raw, name) if x[0] is not None and x[0] // 100000000 == phase]
    stats = json.loads(read(raw, f"fleet-{name}-stats.json", "{}") or "{}")
    requests = stats.get("requests")
    r429 = (stats.get("rate_limited") or {}).get("total")
    metrics = replica_metrics(raw, name)
    row = {
        "case": name, "replicas": int(info.get("replicas", 1)), "limit_per_s": limit,
        "payments": payments, "delivered": len(msgs), "delivered_distinct": len(set(r for r, _, _ in msgs)),
        "chats": len(set(c for _, c, _ in msgs)), "requests": requests, "rate_limited": r429,
        "rate_limited_by": stats.get("rate_limited"),
        "rate_limited_share": round(r429 / requests, 4) if requests and r429 is not None else None,
        "peak_in_flight": stats.get("peak_in_flight"),
        "pacing_wait_s": {k: round(v, 1) for k, v in
                          metric_by(metrics, "notifier_pacing_wait_seconds_total", "scope").items()},
        "budget_errors": int(metric_total(metrics, "notifier_budget_errors_total")),
        "uncertain": int(metric_total(metrics, "notifier_uncertain_total")),
        "duplicates_skipped": int(metric_total(metrics, "notifier_duplicates_total")),
        "stale": int(metric_total(metrics, "notifier_stale_total")),
        "dlq": int(metric_total(metrics, "notifier_dlq_total")),
        "notifier_429s": int(metric_total(metrics, "notifier_rate_limited_total")),
    }
    kind = name[0]
    if kind == "a":
        operator = info.get("operator_chat")
        private = sorted(t for _, c, t in msgs if c != operator)
        row.update({
            "private_expected": int(info.get("private", 0)), "private_delivered": len(private),
            "group_delivered": sum(1 for _, c, _ in msgs if c == operator),
            "rate": drain_rate(private),
            "last_private_wait_s": round((private[-1] - start) / 1000.0, 1) if private and start else None,
            "ideal_wait_s": round(len(private) / limit, 1) if private else None,
            "peak_1s": peak_per_second(sorted(t for _, _, t in msgs)),
        })
    else:
        times = sorted(t for _, _, t in msgs)
        row.update({"rate": drain_rate(times), "peak_1s": peak_per_second(times),
                    "span_s": round((times[-1] - times[0]) / 1000.0, 1) if len(times) > 1 else None,
                    "rate_from_start": round(len(times) / ((times[-1] - start) / 1000.0), 2)
                    if times and start and times[-1] > start else None})
        if kind == "c" and times:
            kill, add = int(info.get("kill_ms", 0)), int(info.get("add_ms", 0))
            row.update({
                "kill_at_s": round((kill - times[0]) / 1000.0, 1) if kill else None,
                "add_at_s": round((add - times[0]) / 1000.0, 1) if add else None,
                "lost": payments - row["delivered_distinct"],
                "duplicates": row["delivered"] - row["delivered_distinct"],
                "rate_before_kill": drain_rate([t for t in times if t < kill]) if kill else None,
                "rate_kill_to_add": drain_rate([t for t in times if kill <= t < add]) if kill and add else None,
                "rate_after_add": drain_rate([t for t in times if t >= add]) if add else None,
            })
        if kind == "e":
            answers = []
            all_msgs = fleet_messages(raw, name)
            for chat, injected in lines(raw, "fleet-e-answers.txt"):
                got = sorted(t for r, c, t in all_msgs if r is None and c == chat)
                answers.append(round((got[0] - int(injected)) / 1000.0, 2) if got else None)
            row["answers_s"] = answers
    row["ratio"] = round(row["rate"] / limit, 3) if row.get("rate") else None
    ratio_ = row["ratio"] or 0
    share = row["rate_limited_share"]
    all_in = row["delivered_distinct"] >= payments
    if kind == "a":
        met = ratio_ >= 0.95 and row["private_delivered"] >= row["private_expected"]
    elif kind == "b":
        met = ratio_ >= 0.95 and share is not None and share <= 0.01 and all_in
    elif kind == "c":
        met = ratio_ >= 0.90 and row.get("lost") == 0 and row.get("duplicates", 0) <= row["uncertain"]
    elif kind == "d":
        met = ratio_ >= 0.90 and all_in
    else:
        a = row.get("answers_s") or []
        row["answer_max_s"] = max(a) if a and None not in a else None
        met = bool(a) and None not in a and max(a) <= 2.0
    row["goal_met"] = met
    return row


def fleet_stage(raw):
    return [row for row in (fleet_case(raw, name) for (name,) in lines(raw, "fleet-cases.txt")) if row]


def fleet_markdown(rows, partitions):
    m = ["", "## 7. Fleet: notifier replicas sharing one Telegram budget (fake-telegram --profile=telegram, slow answers off)", "",
         "Ours is the delivery rate at the fake Telegram, first to last message of the case's backlog "
         "(a: the private chats' messages only), the limit the rate the fleet is held to in the same "
         f"run; payment-completed-topic has {partitions} partitions. e: ours is the slowest answer "
         "to a \"/start\", the limit the goal (2 s).", "",
         "| case | replicas | ours | limit | ours/limit | 429s / requests | goal met | detail |",
         "|---|---:|---:|---:|---:|---:|---|---|"]
    for x in rows:
        kind = x["case"][0]
        what, goal = FLEET_CASES[kind]
        what = what.format(n=x["replicas"])
        r429 = (f"{x['rate_limited']} / {x['requests']:,} ({100.0 * (x['rate_limited_share'] or 0):.2f}%)"
                if x.get("requests") else fmt(x.get("rate_limited")))
        waits = ", ".join(f"{k} {v:,.0f}" for k, v in sorted(x["pacing_wait_s"].items())) or "–"
        if kind == "a":
            detail = (f"{x['private_delivered']:,} of {x['private_expected']:,} private messages; the last "
                      f"after {fmt(x['last_private_wait_s'])} s (ideal {fmt(x['ideal_wait_s'])} s); "
                      f"{x['group_delivered']} to the group meanwhile")
        else:
            detail = f"{x['delivered_distinct']:,} of {x['payments']:,} to {x['chats']:,} chats"
            if kind == "c":
                detail += (f"; lost {x.get('lost')}, duplicates {x.get('duplicates')} (uncertain "
                           f"{x['uncertain']}); killed at {fmt(x.get('kill_at_s'))} s, added at "
                           f"{fmt(x.get('add_at_s'))} s; msgs/s before the kill "
                           f"{fmt(x.get('rate_before_kill'))}, until the addition "
                           f"{fmt(x.get('rate_kill_to_add'))}, after {fmt(x.get('rate_after_add'))}")
            if kind == "e":
                detail += ("; answers after " + ", ".join(fmt(a) for a in x.get("answers_s") or []) +
                           f" s; drain {fmt(x.get('rate'))} msgs/s")
        detail += (f"; busiest second {x['peak_1s']}; pacing waits (s, summed over sends): {waits}; "
                   f"budget errors {x['budget_errors']}; DLQ {x['dlq']}")
        if kind == "e":
            ours, limit, ratio_ = x.get("answer_max_s"), 2.0, None
            if ours is not None:
                ratio_ = round(ours / limit, 3)
            ours_s, limit_s = f"{fmt(ours)} s", "2 s"
        else:
            ours_s, limit_s, ratio_ = f"{fmt(x.get('rate'))}/s", f"{fmt(x['limit_per_s'])}/s", x.get("ratio")
        m.append(f"| {what} | {x['replicas']} | {ours_s} | {limit_s} | {fmt(ratio_)} | {r429} | "
                 f"{'yes' if x['goal_met'] else 'no'} ({goal}) | {detail} |")
    return m

# ---------------------------------------------------------------- 6. Opening
def opening_stage(raw):
    """Each concurrency of the race (spike-client's report, run.sh's opening_sold) and pgbench
    running the same two statements; ratios are users served per second, ours / pgbench's."""
    ref = None
    level = lines(raw, "opening-pgbench-level.txt")
    if level:
        clients, _phase, sold, twice, negative = level[0]
        ref, _ = pgbench_summary(raw, "opening-pgbench")
        # A transaction is one user: a hold, and a payment when held.
        ref.update({"concurrency": int(clients), "sold": int(sold), "paid_twice": int(twice),
                    "negative_balances": int(negative),
                    "cpu_ms": cpu_per_call(raw, "opening-pgbench", ref["transactions"])})
    rows = []
    for c, _phase, sold, twice, negative in lines(raw, "opening-levels.txt"):
        with open(os.path.join(raw, f"opening-c{c}.json")) as f:
            d = json.load(f)
        refused = {}
        for method, m in d["methods"].items():
            for code, n in m["codes"].items():
                if code not in ("OK", "ALREADY_EXISTS"):
                    refused[f"{method} {code}"] = n
        users = d["users"]
        rows.append({
            "concurrency": int(c), "users": users, "calls": d["calls"],
            "calls_per_s": round(d["calls"] / d["seconds"], 1) if d["seconds"] else None,
            "users_per_s": round(users / d["seconds"], 1) if d["seconds"] else None,
            "methods": d["methods"], "sold": int(sold), "paid_twice": int(twice),
            "negative_balances": int(negative), "refused": refused,
            "cpu_ms": cpu_per_call(raw, f"opening-c{c}", users),
            "ratio": ratio(users / d["seconds"] if d["seconds"] else None,
                           ref["tps"] if ref else None),
        })
    return {"levels": rows, "pgbench": ref, "seats": int(read(raw, "opening-seats", "0") or 0),
            "pay": opening_pay(raw)}


# Goals of issue 30 for PayConcert alone.
PAY_CPU_GOAL_MS = 0.10          # payment-server's CPU per PayConcert
PAY_SERVER_SIDE_GOAL = 1.2      # (payment-server + Postgres) / pgbench's Postgres, per payment
PAY_THOUSAND_GOAL = 0.9         # throughput at 1,000 callers / at the first (reference) level


def opening_pay(raw):
    """PayConcert alone at each level (spike-client --payments): payments/s, its ratio to the
    first level's, payment-server's CPU per payment, and the server side's CPU per payment
    (payment-server + Postgres) against Postgres's CPU per transaction when pgbench runs
    PayConcert's one statement in the same run."""
    ref = None
    level = lines(raw, "opening-pay-pgbench-level.txt")
    if level:
        ref, _ = pgbench_summary(raw, "opening-pay-pgbench")
        ref.update({"concurrency": int(level[0][0]),
                    "cpu_ms": cpu_per_call(raw, "opening-pay-pgbench", ref["transactions"])})
    ref_pg = ((ref or {}).get("cpu_ms") or {}).get("postgres")
    rows = []
    for c, _phase in lines(raw, "opening-pay-levels.txt"):
        with open(os.path.join(raw, f"opening-pay-c{c}.json")) as f:
            d = json.load(f)
        pc = d["methods"].get("PayConcert", {})
        cpu = cpu_per_call(raw, f"opening-pay-c{c}", d["sold"]) or {}
        server_side = (cpu["server"] + cpu["postgres"]) if cpu else None
        rows.append({
            "concurrency": int(c), "calls": d["calls"], "paid": d["sold"],
            "codes": pc.get("codes", {}), "p50_ms": pc.get("p50_ms"), "p99_ms": pc.get("p99_ms"),
            "rps": round(d["sold"] / d["seconds"], 1) if d["seconds"] else None,
            "cpu_ms": cpu or None,
            "server_side_ms": round(server_side, 3) if server_side is not None else None,
            "server_side_ratio": ratio(server_side, ref_pg),
        })
    if rows:
        for x in rows:
            x["ratio_to_first"] = ratio(x["rps"], rows[0]["rps"])
    return {"levels": rows, "pgbench": ref}


def memory(raw):
    out = {}
    for name, phase, rss, hwm in lines(raw, "memory.txt"):
        svc = out.setdefault(name, {"idle_rss_mb": None, "peak_hwm_mb": 0.0})
        if "idle" in phase and svc["idle_rss_mb"] is None:
            svc["idle_rss_mb"] = round(int(rss) / 1024.0, 1)
        svc["peak_hwm_mb"] = max(svc["peak_hwm_mb"], round(int(hwm) / 1024.0, 1))
    return out


def max_rate(raw):
    rates = [ghz_summary(os.path.join(raw, f"pay-ghz-c{c}.json"))[0]["rps"] or 0
             for c, _ in lines(raw, "pay-levels.txt")]
    r = relay_stage(raw, {})
    limits = [max(rates) if rates else 0]
    if "backlog" in r:
        limits.append(r["backlog"]["rps_first_to_last"])
    e = e2e_stage(raw, {})
    if "notifier_backlog" in e:
        limits.append(e["notifier_backlog"]["rps"])
    return max(10, int(min(limits) * 0.8 / 10) * 10)


# ---------------------------------------------------------------- output
def fmt(v, unit=""):
    if v is None:
        return "–"
    if isinstance(v, float):
        v = f"{v:,.1f}" if abs(v) >= 10 else f"{v:.2f}"
    return f"{v}{unit}"


def markdown(r):
    m = [f"# Benchmark {r['started_at']}", "",
         f"Machine: {r['machine']}. Build: {r['build']}. Mode: {'quick' if r['quick'] else 'full'} "
         f"({r['config']}). Ratios are ours / reference in the same run.", "",
         "## 1. PayConcert (ghz) vs pgbench: the seven-statement transaction, and PayConcert's one statement", "",
         "| concurrency | ours rps | p50 ms | p99 ms | errors | 7 statements tps | p50 ms | p99 ms | ours/7 | 1 statement tps | p50 ms | p99 ms | ours/1 |",
         "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for x in r["payconcert"]:
        o, p, q = x["ours"], x["pgbench"], x["pgbench_one"]
        m.append(f"| {x['concurrency']} | {fmt(o['rps'])} | {fmt(o['p50_ms'])} | {fmt(o['p99_ms'])} | "
                 f"{o['errors']} | {fmt(p['tps'])} | {fmt(p['p50_ms'])} | {fmt(p['p99_ms'])} | "
                 f"{fmt(x['ratio'])} | {fmt(q['tps'])} | {fmt(q['p50_ms'])} | {fmt(q['p99_ms'])} | "
                 f"{fmt(x['ratio_one'])} |")
    m += ["", "CPU per call, ms (user + system; the two cores give 2,000 ms per second):", "",
          "| concurrency | ours: ghz | payment-server | Postgres | total | 7 statements: pgbench | Postgres | total | 1 statement: pgbench | Postgres | total |",
          "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for x in r["payconcert"]:
        o, p, q = (x[k].get("cpu_ms") or {} for k in ("ours", "pgbench", "pgbench_one"))
        m.append(f"| {x['concurrency']} | {fmt(o.get('client'))} | {fmt(o.get('server'))} | "
                 f"{fmt(o.get('postgres'))} | {fmt(o.get('total'))} | {fmt(p.get('client'))} | "
                 f"{fmt(p.get('postgres'))} | {fmt(p.get('total'))} | {fmt(q.get('client'))} | "
                 f"{fmt(q.get('postgres'))} | {fmt(q.get('total'))} |")
    if r.get("profile_payment_server"):
        m += ["", "PayConcert profile at concurrency 8 (bench/profile.sh payment-server, perf; top entries):", "",
              "```", r["profile_payment_server"], "```"]
    rl = r["relay"]
    m += ["", "## 2. Relay (outbox row -> acknowledged Kafka record) vs ProducerPerformance", "",
          "| load | ours rps | commit->Kafka p50 ms | p99 ms | max ms | reference rps | ref p50 ms | ref p99 ms | ours/reference |",
          "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    b, br = rl.get("backlog"), rl.get("backlog_reference")
    if b:
        m.append(f"| backlog {b['rows']:,} rows (from relay start; first->last {fmt(b['rps_first_to_last'])}/s) | "
                 f"{fmt(b['rps_from_start'])} | – | – | – | {fmt(br and br['rps'])} | "
                 f"{fmt(br and br['p50_ms'])} | {fmt(br and br['p99_ms'])} | {fmt(rl.get('backlog_ratio'))} |")
    for s in rl["steady"]:
        ref = s["reference"] or {}
        m.append(f"| steady {s['target_rps']}/s ({s['records']:,} of {s['expected']:,}) | {fmt(s['rps'])} | "
                 f"{fmt(s['p50_ms'])} | {fmt(s['p99_ms'])} | {fmt(s['max_ms'])} | {fmt(ref.get('rps'))} | "
                 f"{fmt(ref.get('p50_ms'))} | {fmt(ref.get('p99_ms'))} | {fmt(s['ratio_rps'])} |")
    e = r["end_to_end"]
    m += ["", "## 3. End to end: payment commit -> message at the fake Telegram", "",
          "| target payments/s | achieved | errors | notified (distinct) | notifier msgs/s | p50 ms | p99 ms | max ms |",
          "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for s in e["steady"]:
        m.append(f"| {s['target_rps']} | {fmt(s['payment_rps'])} | {s['payment_errors']} | "
                 f"{s['notified']:,} ({s['notified_distinct']:,}) | {fmt(s['notifier_rps'])} | "
                 f"{fmt(s['p50_ms'])} | {fmt(s['p99_ms'])} | {fmt(s['max_ms'])} |")
    nb, nr = e.get("notifier_backlog"), e.get("notifier_replay_dedup")
    m += ["", f"Highest rate sustained (no errors, every payment notified, p99 < 1 s): "
              f"**{fmt(e.get('highest_sustained_rps'))} payments/s**.", ""]
    if nb:
        m.append(f"Notifier over a backlog of {nb['events']:,} events (dedup row + send each): "
                 f"**{fmt(nb['rps'])} msgs/s** from start, {nb['delivered']:,} delivered.")
    if nr:
        m.append(f"Notifier replaying the same {nr['events']:,} events (dedup skips all): "
                 f"**{fmt(nr['rps'])} events/s**, {nr['resent']} re-sent.")
    m += ["", "## 4. Memory (resident, MiB)", "", "| service | idle RSS | peak (VmHWM) under load |",
          "|---|---:|---:|"]
    for name, v in sorted(r["memory"].items()):
        m.append(f"| {name} | {fmt(v['idle_rss_mb'])} | {fmt(v['peak_hwm_mb'])} |")
    if r.get("telegram_limits"):
        m += ["", "## 5. Telegram limits (fake-telegram --profile=telegram, slow answers off)", "",
              "Ours is the delivery rate at the fake Telegram (first to last message of a backlog; "
              "for d, from the first payment to the last message), the limit the rate the notifier "
              "is held to.", "",
              "| case | ours msgs/s | limit /s | ours/limit | 429s (of requests) | parked | goal met | detail |",
              "|---|---:|---:|---:|---:|---:|---|---|"]
        for x in r["telegram_limits"]:
            what, goal = CASES[x["case"]]
            r429 = f"{x['rate_limited']} ({x['requests']:,})" if x.get("requests") else fmt(x.get("rate_limited"))
            if x["case"] == "c":
                detail = f"{x['delivered']:,} of {x['payments']:,}; replay re-sent {fmt(x.get('resent_on_replay'))}"
            else:
                detail = (f"{x['delivered_distinct']:,} of {x['payments']:,} to {x['chats']:,} chats; "
                          f"DLQ {x['dlq']}; pacing waits (s, summed over sends): "
                          + (", ".join(f"{k} {v:,.0f}" for k, v in sorted(x["pacing_wait_s"].items())) or "–"))
                if x["case"] == "d":
                    detail += (f"; payments {fmt(x.get('payment_rps'))}/s, {x.get('payment_errors')} errors "
                               f"{x.get('payment_error_kinds') or ''}; "
                               f"drain {fmt(x.get('drain_s'))} s vs ideal {fmt(x.get('ideal_drain_s'))} s "
                               f"({fmt(x.get('after_payments_s'))} s after the last payment)")
            m.append(f"| {what} | {fmt(x.get('rate'))} | {fmt(x['limit_per_s'])} | {fmt(x.get('ratio'))} | "
                     f"{r429} | {fmt(x.get('parked'))} | {'yes' if x['goal_met'] else 'no'} ({goal}) | {detail} |")
        if r.get("profile_notifier"):
            m += ["", "Notifier profile at its highest unlimited rate (bench/profile.sh notifier, perf; top entries):", "", "```",
                  r["profile_notifier"], "```"]
    o = r.get("opening") or {}
    if o.get("levels"):
        p = o.get("pgbench") or {}
        m += ["", f"## 6. The opening: {o['levels'][0]['users']:,} users race for {o['seats']:,} seats (ReserveSeat, then PayConcert; deadline 10 s)", "",
              "A user is one ReserveSeat and, when it got the seat, one PayConcert; pgbench runs the same two "
              f"statements per user at {p.get('concurrency', '–')} connections (the most Postgres allows). "
              "CPU per user, ms (client, payment-server, Postgres).", "",
              "| concurrent callers | users/s | calls/s | ReserveSeat p50 / p99 ms | PayConcert p50 / p99 ms | seats sold | paid twice / negative balances | refused (code: calls) | CPU client / server / Postgres | pgbench users/s | ours/pgbench |",
              "|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|"]
        for x in o["levels"]:
            rs, pc = x["methods"].get("ReserveSeat", {}), x["methods"].get("PayConcert", {})
            cpu = x.get("cpu_ms") or {}
            refused = ", ".join(f"{k}: {v}" for k, v in sorted(x["refused"].items())) or "none"
            m.append(f"| {x['concurrency']} | {fmt(x['users_per_s'])} | {fmt(x['calls_per_s'])} | "
                     f"{fmt(rs.get('p50_ms'))} / {fmt(rs.get('p99_ms'))} | {fmt(pc.get('p50_ms'))} / {fmt(pc.get('p99_ms'))} | "
                     f"{x['sold']:,} | {x['paid_twice']} / {x['negative_balances']} | {refused} | "
                     f"{fmt(cpu.get('client'))} / {fmt(cpu.get('server'))} / {fmt(cpu.get('postgres'))} | "
                     f"{fmt(p.get('tps'))} | {fmt(x['ratio'])} |")
        if p:
            pcpu = p.get("cpu_ms") or {}
            m += ["", f"pgbench: {p['transactions']:,} users at {p['concurrency']} connections, {fmt(p.get('tps'))} users/s, "
                  f"p50 {fmt(p['p50_ms'])} ms, p99 {fmt(p['p99_ms'])} ms, {p['sold']:,} seats sold, "
                  f"paid twice / negative balances {p['paid_twice']} / {p['negative_balances']}, "
                  f"CPU per user: pgbench {fmt(pcpu.get('client'))}, Postgres {fmt(pcpu.get('postgres'))} ms."]
        m += opening_pay_markdown(o.get("pay") or {})
    if r.get("fleet"):
        m += fleet_markdown(r["fleet"], r.get("fleet_partitions"))
    return "\n".join(m) + "\n"


def opening_pay_markdown(pay):
    if not pay.get("levels"):
        return []
    p = pay.get("pgbench") or {}
    pcpu = p.get("cpu_ms") or {}
    first = pay["levels"][0]["concurrency"]
    m = ["", f"PayConcert alone ({pay['levels'][0]['calls']:,} held reservations paid per level, "
         "spike-client --payments): throughput against its own at the first level, and CPU per payment, ms, "
         f"against pgbench running PayConcert's one statement at {p.get('concurrency', '–')} connections "
         f"({fmt(p.get('tps'))} tps, Postgres {fmt(pcpu.get('postgres'))} ms per transaction). Goals: "
         f"payment-server ≤ {PAY_CPU_GOAL_MS} ms, server side ≤ {PAY_SERVER_SIDE_GOAL}× pgbench's Postgres, "
         f"1,000 callers ≥ {PAY_THOUSAND_GOAL}× the first level.", "",
         f"| concurrent callers | payments/s | ÷ at {first} | p50 / p99 ms | codes | CPU client / payment-server / Postgres | server side (payment-server + Postgres) | ÷ pgbench's Postgres |",
         "|---:|---:|---:|---:|---|---:|---:|---:|"]
    for x in pay["levels"]:
        cpu = x.get("cpu_ms") or {}
        codes = ", ".join(f"{k}: {v:,}" for k, v in sorted(x["codes"].items()))
        m.append(f"| {x['concurrency']} | {fmt(x['rps'])} | {fmt(x.get('ratio_to_first'))} | "
                 f"{fmt(x['p50_ms'])} / {fmt(x['p99_ms'])} | {codes} | "
                 f"{fmt(cpu.get('client'))} / {fmt(cpu.get('server'))} / {fmt(cpu.get('postgres'))} | "
                 f"{fmt(x.get('server_side_ms'))} | {fmt(x.get('server_side_ratio'))} |")
    return m


def fleet_timelines(raw, rows):
    """Per fleet case: its limit, its messages accepted in each second from the case's start (a:
    the private chats' only), and case c's kill and addition (seconds from the start)."""
    out = {}
    for x in rows:
        name = x["case"]
        info = {k: v for k, v in lines(raw, f"fleet-{name}.txt")}
        start, phase = int(info.get("start_ms", 0)), int(info["phase"])
        operator = info.get("operator_chat")
        counts = {}
        for rid, chat, t in fleet_messages(raw, name):
            if rid is None or rid // 100000000 != phase or chat == operator:
                continue
            counts[(t - start) // 1000] = counts.get((t - start) // 1000, 0) + 1
        if not counts:
            continue
        marks = [(k, (int(info[k + "_ms"]) - start) / 1000.0) for k in ("kill", "add") if k + "_ms" in info]
        out[name] = (x["limit_per_s"], [(sec, counts.get(sec, 0)) for sec in range(0, max(counts) + 1)],
                     marks)
    return out


def plot_fleet(ax, timelines):
    for name, (limit, series, marks) in timelines.items():
        line, = ax.plot([sec for sec, _ in series], [n / limit for _, n in series],
                        label=f"{name} (limit {limit:g}/s)", drawstyle="steps-post")
        for what, at in marks:
            ax.axvline(at, color=line.get_color(), linestyle=":", alpha=0.7)
            ax.annotate(what, (at, 0.05), color=line.get_color(), fontsize=8)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xlabel("seconds from the backlog's publication")
    ax.set_ylabel("messages accepted in the second / limit")
    ax.set_title("Fleet: delivery per second against the limit (c: kill, add)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)


def plot(dists, path, title, fleet=None):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    groups = [("pay", "PayConcert latency (ghz vs pgbench)"),
              ("relay", "Relay: outbox insert -> Kafka append"),
              ("e2e", "End to end: commit -> Telegram")]
    if fleet and not any(vals for _, vals in dists.values()):
        # A run of the fleet section alone: its timeline is the figure.
        fig, ax = plt.subplots(1, 1, figsize=(14, 6))
        plot_fleet(ax, fleet)
        fig.suptitle(title)
        fig.tight_layout()
        fig.savefig(path, dpi=90)
        return
    fig, axes = plt.subplots(2 if fleet else 1, 3, figsize=(18, 10 if fleet else 5), squeeze=False)
    if fleet:
        for ax in axes[1][1:]:
            ax.remove()
        plot_fleet(axes[1][0], fleet)
    for ax, (g, name) in zip(axes[0], groups):
        for label, (gg, vals) in dists.items():
            if gg != g or not vals:
                continue
            v = sorted(max(x, 0.01) for x in vals)
            ax.plot(v, [(i + 1) / len(v) for i in range(len(v))],
                    label=f"{label} (n={len(v)})", linestyle="--" if label.startswith("pgbench") else "-")
        ax.set_xscale("log")
        ax.set_xlabel("latency, ms (log)")
        ax.set_ylabel("fraction of calls / events")
        ax.set_title(name)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--raw", required=True)
    ap.add_argument("--out")
    ap.add_argument("--max-rate", action="store_true")
    a = ap.parse_args()
    if a.max_rate:
        print(max_rate(a.raw))
        return
    dists = {}
    r = {
        "started_at": read(a.raw, "started_at"),
        "machine": ", ".join(l.strip() for l in (read(a.raw, "machine.txt", "") or "").splitlines()),
        "build": read(a.raw, "build.txt", "CMake"),
        "quick": "quick=1" in (read(a.raw, "config.txt", "") or ""),
        "config": read(a.raw, "config.txt", ""),
        "payload_bytes": int(read(a.raw, "payload_bytes", "0") or 0),
    }
    r["payconcert"] = pay_stage(a.raw, dists)
    r["relay"] = relay_stage(a.raw, dists)
    r["end_to_end"] = e2e_stage(a.raw, dists)
    r["telegram_limits"] = limits_stage(a.raw, r["end_to_end"])
    r["profile_notifier"] = read(a.raw, "profile-notifier.txt")
    r["profile_payment_server"] = read(a.raw, "profile-payment-server.txt")
    r["opening"] = opening_stage(a.raw)
    r["fleet"] = fleet_stage(a.raw)
    r["fleet_partitions"] = dict(lines(a.raw, "fleet-config.txt")).get("partitions")
    r["memory"] = memory(a.raw)
    with open(a.out + ".json", "w") as f:
        json.dump(r, f, indent=2)
    with open(a.out + ".md", "w") as f:
        f.write(markdown(r))
    plot(dists, a.out + ".png", f"concert benchmark {r['started_at']} ({r['machine']})",
         fleet_timelines(a.raw, r["fleet"]))
    sys.stdout.write(markdown(r))


if __name__ == "__main__":
    main()
