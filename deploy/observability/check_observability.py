#!/usr/bin/env python3
"""Checks of deploy/observability/ against the services' sources (no Prometheus needed).

1. metrics   every metric the C++ sources register (registry.GetCounter/GetGauge/GetHistogram
             with a literal name or a kName constant), with its labels; counters must end in
             _total, since prometheus-cpp exports a counter under the name it is given;
2. rules     every alert in alerts.yaml has a severity, a summary, a description and a
             runbook_url whose section exists in RUNBOOK.md, and at least one case in
             alerts_test.yaml where it fires and one where it does not;
3. queries   every metric an alert or a dashboard panel queries is one a service exports
             (histograms as name_bucket/_sum/_count), label matchers name labels it has, and
             rate()/increase()/irate() are applied to counters only;
4. operator  prometheusrule.yaml is alerts.yaml wrapped in a PrometheusRule, byte for byte
             (--write regenerates it);
5. dashboard dashboard.json parses, its panels have unique ids and titles, use the datasource
             variable, and their queries pass (3).

A self-test first proves that (3) catches a misspelt metric, a label the metric lacks, a
histogram queried by its bare name and rate() over a gauge.

With --live or --targets, instead, against running services:

6. fresh    every series an alert or a panel selects is exported (at 0 or more) right after
            the services start, before any traffic: for each selector some series matches it,
            and each alternative of a regex matcher such as code=~"UNAVAILABLE|INTERNAL"; a
            series that appears only with its first event hides that event from increase().
            --live CMD starts the system with CMD (tests/observability/fresh_system.cc: it
            prints "target <service> <host:port>" lines, then "ready", and stops when its
            standard input closes); --targets scrapes a system already up (`make up`:
            127.0.0.1:9101,127.0.0.1:9102,127.0.0.1:9103,127.0.0.1:9104), fresh only if it
            has served nothing yet.

    deploy/observability/check_observability.py [--root DIR] [--write]
    deploy/observability/check_observability.py --live CMD | --targets HOST:PORT,...

Prints PASS/FAIL lines and "check_observability: N passed, M failed"; exits 1 on a failure.
"""
import argparse
import json
import pathlib
import re
import subprocess
import sys
import urllib.request

import yaml

HERE = pathlib.Path(__file__).resolve().parent
SOURCE_DIRS = ("common", "payment-server", "outbox-relay", "notifier", "retry-worker")

# Labels a scrape adds (the target's address and job) and those common Kubernetes relabelings
# add; `le` belongs to every histogram bucket. A query may match on these whatever the metric.
TARGET_LABELS = {"instance", "job", "namespace", "pod", "service", "container", "endpoint", "node"}
# Series Prometheus makes itself that a query may use.
PROMETHEUS_SERIES = {"up", "ALERTS"}

KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left",
            "group_right", "bool", "offset", "inf", "nan", "atan2", "start", "end"}
GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
COUNTER_FUNCTIONS = {"rate", "irate", "increase"}
AGGREGATIONS = {"sum", "avg", "min", "max", "count", "stddev", "stdvar", "topk", "bottomk",
                "quantile", "count_values", "group", "limitk", "limit_ratio"}

PROMETHEUSRULE_HEADER = """\
# Generated from alerts.yaml by `scripts/check-observability.sh --write`: edit alerts.yaml, then
# regenerate (the check fails when the two differ). For clusters with the Prometheus Operator:
#   kubectl apply -f deploy/observability/prometheusrule.yaml
# The operator loads PrometheusRules its Prometheus' ruleSelector matches: kube-prometheus-stack
# selects `release: <its Helm release>` by default, so add that label if yours does.
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: concert-alerts
  namespace: concert
  labels:
    app.kubernetes.io/part-of: concert
spec:
"""


# --- 1. what the services export --------------------------------------------------------------

def call_arguments(text, open_paren):
    """The text between the parenthesis at open_paren and its match (strings respected)."""
    depth, i, quote = 0, open_paren, None
    while i < len(text):
        c = text[i]
        if quote:
            if c == "\\":
                i += 1
            elif c == quote:
                quote = None
        elif c in "\"'":
            quote = c
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                return text[open_paren + 1:i]
        i += 1
    raise ValueError("unbalanced parentheses")


def registered_metrics(root):
    """name -> {"type": counter|gauge|histogram, "labels": set, "where": [file:line]}."""
    sources = []
    for d in SOURCE_DIRS:
        for p in sorted((root / d).rglob("*")):
            if p.suffix in (".cc", ".h") and not p.name.endswith("_test.cc"):
                sources.append(p)
    constants = {}
    for p in sources:
        for m in re.finditer(r'constexpr\s+char\s+(k\w+)\[\]\s*=\s*"([^"]*)"', p.read_text()):
            constants[m.group(1)] = m.group(2)
    metrics = {}
    for p in sources:
        text = p.read_text()
        for m in re.finditer(r"\bGet(Counter|Gauge|Histogram)\s*\(", text):
            if p.name == "metrics.h" or (p.name == "metrics.cc" and "Registry::Get" in
                                         text[max(0, m.start() - 10):m.end()]):
                continue  # the registry's own declarations and definitions
            args = call_arguments(text, m.end() - 1)
            first = re.match(r'\s*(?:"([^"]+)"|(k\w+))', args)
            line = text.count("\n", 0, m.start()) + 1
            where = f"{p.relative_to(root)}:{line}"
            if not first:
                raise SystemExit(f"{where}: metric name is neither a literal nor a kName constant")
            name = first.group(1) or constants.get(first.group(2))
            if name is None:
                raise SystemExit(f"{where}: constant {first.group(2)} not found")
            kind = m.group(1).lower()
            labels = set(re.findall(r'\{\s*"([A-Za-z_]\w*)"\s*,', args))
            entry = metrics.setdefault(name, {"type": kind, "labels": set(), "where": []})
            if entry["type"] != kind:
                raise SystemExit(f"{where}: {name} registered as {kind} and {entry['type']}")
            entry["labels"] |= labels
            entry["where"].append(where)
    return metrics


def exported_series(metrics):
    """Series name -> (metric name, type, labels) as a scrape of the services shows them."""
    series = {}
    for name, m in metrics.items():
        if m["type"] == "histogram":
            series[name + "_bucket"] = (name, "histogram_bucket", m["labels"] | {"le"})
            series[name + "_sum"] = (name, "histogram_sum", m["labels"])
            series[name + "_count"] = (name, "histogram_count", m["labels"])
        else:
            series[name] = (name, m["type"], m["labels"])
    return series


# --- 3. what a query uses ---------------------------------------------------------------------

TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<string>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
  | (?P<variable>\$\{[^}]*\}|\$\w+)
  | (?P<number>0x[0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?(?:ms|[smhdwy])?)
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<op>=~|!~|!=|==|<=|>=|[-+*/%^<>=(){}\[\],@])
""", re.VERBOSE)


def tokens(expr):
    pos, out = 0, []
    while pos < len(expr):
        m = TOKEN.match(expr, pos)
        if not m:
            raise ValueError(f"cannot read {expr[pos:pos + 20]!r}")
        if m.lastgroup != "space":
            out.append((m.lastgroup, m.group()))
        pos = m.end()
    return out


def selectors(toks):
    """(metric, [(label, op, value)], innermost function around it) for each selector."""
    calls = []  # the function each open '(' belongs to (None: grouping)
    i = 0
    while i < len(toks):
        kind, text = toks[i]
        nxt = toks[i + 1][1] if i + 1 < len(toks) else None
        if kind == "op" and text == "[":  # a range or subquery: durations, variables
            while i < len(toks) and toks[i][1] != "]":
                i += 1
        elif kind == "op" and text == "(":
            calls.append(None)
        elif kind == "op" and text == ")":
            if calls:
                calls.pop()
        elif kind == "ident" and text in AGGREGATIONS and nxt in ("by", "without"):
            pass  # its grouping clause, then its parenthesis, come next
        elif kind == "ident" and text.lower() in GROUPING and nxt == "(":
            i += 2
            while i < len(toks) and toks[i][1] != ")":
                i += 1
        elif kind == "ident" and nxt == "(":
            calls.append(text)
            i += 1
        elif kind == "ident" and text.lower() not in KEYWORDS:
            matchers = []
            if nxt == "{":
                i += 2
                while i < len(toks) and toks[i][1] != "}":
                    if toks[i][0] == "ident" and i + 2 < len(toks) and \
                            toks[i + 1][1] in ("=", "!=", "=~", "!~"):
                        value = toks[i + 2][1][1:-1].encode().decode("unicode_escape")
                        matchers.append((toks[i][1], toks[i + 1][1], value))
                    i += 1
            yield text, matchers, calls[-1] if calls else None
        i += 1


def query_problems(expr, series):
    """Problems with the metrics, labels and functions of one PromQL expression."""
    try:
        toks = tokens(expr)
    except ValueError as e:
        return [str(e)]
    problems = []
    for name, matchers, call in selectors(toks):
        if name in PROMETHEUS_SERIES:
            continue
        if name not in series:
            problems.append(f"{name}: no service exports it")
            continue
        base, kind_of, labels = series[name]
        for label, _, _ in matchers:
            if label not in labels and label not in TARGET_LABELS:
                problems.append(f"{name}{{{label}=...}}: {base} has no label {label} "
                                f"(it has {', '.join(sorted(labels)) or 'none'})")
        if call in COUNTER_FUNCTIONS and \
                kind_of not in ("counter", "histogram_bucket", "histogram_sum", "histogram_count"):
            problems.append(f"{call}({name}): {name} is a {kind_of}, not a counter")
    return problems


# --- the checks -------------------------------------------------------------------------------

class Report:
    def __init__(self):
        self.passed = self.failed = 0

    def check(self, ok, what, details=()):
        if ok:
            self.passed += 1
            print(f"PASS  {what}")
        else:
            self.failed += 1
            print(f"FAIL  {what}")
            for d in details:
                print(f"      {d}")


def anchors(markdown):
    """GitHub's anchors for the headings of a Markdown file."""
    out = set()
    for line in markdown.splitlines():
        m = re.match(r"#{1,6}\s+(.*)", line)
        if m:
            slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
            out.add(slug)
    return out


def self_test(report, series):
    cases = {
        "sum(rate(notifier_sent_totl[5m]))": "no service exports it",
        'notifier_dlq_total{status="x"}': "has no label status",
        "histogram_quantile(0.99, rate(notifier_send_seconds[5m]))": "no service exports it",
        "rate(notifier_pending[5m])": "not a counter",
    }
    for expr, want in cases.items():
        problems = query_problems(expr, series)
        report.check(any(want in p for p in problems), f"self-test catches: {expr}",
                     problems or ["no problem found"])
    good = ('sum by (le) (rate(notifier_send_seconds_bucket{instance=~"$instance"}'
            '[$__rate_interval])) / on() group_left sum(up) > 1e3 and notifier_pending offset 5m')
    problems = query_problems(good, series)
    report.check(not problems, "self-test passes a correct query", problems)


def check_rules(report, root, series):
    rules_doc = yaml.safe_load((HERE / "alerts.yaml").read_text())
    tests_doc = yaml.safe_load((HERE / "alerts_test.yaml").read_text())
    runbook = anchors((HERE / "RUNBOOK.md").read_text())
    fires, quiet = {}, {}
    for group in tests_doc["tests"]:
        for case in group.get("alert_rule_test", []):
            target = fires if case.get("exp_alerts") else quiet
            target[case["alertname"]] = target.get(case["alertname"], 0) + 1
    names = []
    for group in rules_doc["groups"]:
        for rule in group["rules"]:
            name = rule.get("alert") or rule.get("record")
            names.append(name)
            problems = []
            labels, notes = rule.get("labels", {}), rule.get("annotations", {})
            if labels.get("severity") not in ("critical", "warning"):
                problems.append(f"severity {labels.get('severity')!r}: want critical or warning")
            for key in ("summary", "description", "runbook_url"):
                if not notes.get(key):
                    problems.append(f"no {key} annotation")
            url = notes.get("runbook_url", "")
            if "#" not in url or url.split("#", 1)[1] not in runbook:
                problems.append(f"runbook_url {url!r}: no such section in RUNBOOK.md")
            if not fires.get(name):
                problems.append("no case in alerts_test.yaml where it fires")
            if not quiet.get(name):
                problems.append("no case in alerts_test.yaml where it does not fire")
            report.check(not problems, f"alert {name}: severity, annotations, runbook, tests",
                         problems)
            problems = query_problems(rule["expr"], series)
            report.check(not problems, f"alert {name}: queries exported metrics", problems)
    dupes = sorted({n for n in names if names.count(n) > 1})
    report.check(not dupes, f"{len(names)} alert names, each once", dupes)
    return rules_doc


def prometheusrule_text():
    text = (HERE / "alerts.yaml").read_text()
    body = text[text.index("groups:"):]
    indented = "".join(("  " + line if line.strip() else line)
                       for line in body.splitlines(keepends=True))
    return PROMETHEUSRULE_HEADER + indented


def check_prometheusrule(report, rules_doc, write):
    path = HERE / "prometheusrule.yaml"
    want = prometheusrule_text()
    if write:
        path.write_text(want)
        print(f"wrote {path.name}")
    have = path.read_text() if path.exists() else ""
    spec = (yaml.safe_load(have) or {}).get("spec") if have else None
    report.check(have == want and spec == rules_doc,
                 "prometheusrule.yaml is alerts.yaml wrapped in a PrometheusRule",
                 ["differs: run scripts/check-observability.sh --write"])


def check_dashboard(report, series):
    path = HERE / "dashboard.json"
    try:
        dash = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        report.check(False, "dashboard.json parses", [str(e)])
        return
    report.check(True, f"dashboard.json parses ({dash.get('title')!r})")
    variables = {v.get("name"): v for v in dash.get("templating", {}).get("list", [])}
    report.check(variables.get("datasource", {}).get("type") == "datasource",
                 "dashboard has a Prometheus datasource variable", ["no $datasource variable"])
    panels = []
    for p in dash.get("panels", []):
        panels.append(p)
        panels.extend(p.get("panels", []))  # a collapsed row holds its panels
    ids = [p.get("id") for p in panels]
    report.check(len(ids) == len(set(ids)) and None not in ids,
                 f"{len(panels)} panels, each with its own id", [f"ids: {ids}"])
    queries = 0
    for p in panels:
        if p.get("type") == "row":
            continue
        problems = []
        if not p.get("title"):
            problems.append("no title")
        if p.get("datasource", {}).get("uid") != "${datasource}":
            problems.append(f"datasource {p.get('datasource')}: want uid ${{datasource}}")
        if not p.get("targets"):
            problems.append("no query")
        for t in p.get("targets", []):
            queries += 1
            problems += [f"{t.get('refId')}: {q}" for q in query_problems(t.get("expr", ""), series)]
        report.check(not problems, f"panel {p.get('id')} {p.get('title')!r}", problems)
    report.check(queries > 0, f"dashboard: {queries} queries checked")


# --- 6. a fresh start --------------------------------------------------------------------------

SAMPLE = re.compile(r"([A-Za-z_:][\w:]*)(?:\{(.*)\})?\s+\S+")
LABEL = re.compile(r'(\w+)="((?:\\.|[^"\\])*)"')


def queries():
    """(where, expression) of every alert and every dashboard panel."""
    out = []
    for group in yaml.safe_load((HERE / "alerts.yaml").read_text())["groups"]:
        for rule in group["rules"]:
            out.append((f"alert {rule.get('alert') or rule.get('record')}", rule["expr"]))
    panels = []
    for p in json.loads((HERE / "dashboard.json").read_text()).get("panels", []):
        panels.append(p)
        panels.extend(p.get("panels", []))
    for p in panels:
        for t in p.get("targets", []):
            out.append((f"panel {p.get('id')} {p.get('title')!r}", t.get("expr", "")))
    return out


def scrape(address):
    """The series, (name, labels), that the metrics endpoint at host:port exports."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    return [(m.group(1), dict(LABEL.findall(m.group(2) or "")))
            for m in map(SAMPLE.match, text.splitlines()) if m]


def matches(labels, label, op, value):
    have = labels.get(label, "")
    if op == "=":
        return have == value
    if op == "!=":
        return have != value
    return (re.fullmatch(value, have) is not None) == (op == "=~")


def wanted(matchers):
    """The label matchers some exported series must satisfy, one list per series: each value
    of a list such as code=~"UNAVAILABLE|INTERNAL" on its own (each is a known label value)."""
    lists = [[]]
    for label, op, value in matchers:
        if label in TARGET_LABELS:  # added by the scrape, not by the service
            continue
        if op == "=~" and re.fullmatch(r"[\w|]+", value):
            options = [(label, "=", v) for v in value.split("|")]
        else:
            options = [(label, op, value)]
        lists = [have + [o] for have in lists for o in options]
    return lists


def check_fresh(report, exported):
    report.check(bool(exported), f"{len(exported)} series scraped", ["none"])
    for where, expr in queries():
        missing = set()
        for name, matchers, _ in selectors(tokens(expr)):
            if name in PROMETHEUS_SERIES:
                continue
            for want in wanted(matchers):
                if not any(n == name and all(matches(labels, *m) for m in want)
                           for n, labels in exported):
                    missing.add(name + "{" + ",".join(f'{l}{o}"{v}"' for l, o, v in want) + "}")
        report.check(not missing, f"{where}: every series it selects exists from the start",
                     [f"not exported: {m}" for m in sorted(missing)])


def start_system(command):
    """Runs `command` until it prints "ready" (it ends on its own when the system does not
    start); returns it and the addresses it printed."""
    process = subprocess.Popen(command, shell=True, stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)
    targets = []
    for line in process.stdout:
        words = line.split()
        if words[:1] == ["target"] and len(words) == 3:
            targets.append(words[2])
        elif words == ["ready"]:
            return process, targets
    stop_system(process)
    raise SystemExit(f"FAIL  {command} did not start the system (exit {process.returncode})")


def stop_system(process):
    process.stdin.close()
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def live(args):
    report = Report()
    process = None
    try:
        if args.live:
            process, targets = start_system(args.live)
        else:
            targets = args.targets.split(",")
        exported = []
        for address in targets:
            try:
                exported += scrape(address)
            except OSError as e:
                report.check(False, f"scrape {address}", [str(e)])
        check_fresh(report, exported)
    finally:
        if process:
            stop_system(process)
    print(f"check_observability: {report.passed} passed, {report.failed} failed")
    return 1 if report.failed else 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=pathlib.Path, default=HERE.parent.parent)
    parser.add_argument("--write", action="store_true", help="regenerate prometheusrule.yaml")
    parser.add_argument("--live", metavar="CMD",
                        help="start the system with CMD and check a fresh start (6)")
    parser.add_argument("--targets", metavar="HOST:PORT,...",
                        help="check a fresh start (6) of the services already up there")
    args = parser.parse_args()
    if args.live or args.targets:
        return live(args)

    report = Report()
    metrics = registered_metrics(args.root.resolve())
    series = exported_series(metrics)
    bad_counters = sorted(n for n, m in metrics.items()
                          if m["type"] == "counter" and not n.endswith("_total"))
    report.check(len(metrics) > 0 and not bad_counters,
                 f"{len(metrics)} metrics registered in the sources; counters end in _total",
                 bad_counters or (["none found"] if not metrics else []))
    self_test(report, series)
    rules_doc = check_rules(report, args.root, series)
    check_prometheusrule(report, rules_doc, args.write)
    check_dashboard(report, series)
    print(f"check_observability: {report.passed} passed, {report.failed} failed")
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
