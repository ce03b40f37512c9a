#!/usr/bin/env python3
"""Lint and environment checks for the rendered manifests (run by scripts/check-k8s.sh).

Input: one JSON file per kustomize rendering (a list of objects, as `yq eval-all -o=json '[.]'`
writes it). Output: one "PASS <what>" or "FAIL <what>" line per check, followed by indented
detail lines; the exit status is 1 when anything failed.

lint  every workload container: liveness and readiness probes (init containers excepted),
      resource requests and limits for cpu and memory, runAsNonRoot, readOnlyRootFilesystem,
      allowPrivilegeEscalation false, all capabilities dropped, RuntimeDefault seccomp, an image
      pinned by tag or digest (never latest); no secret-looking keys or values in ConfigMaps and
      no literal secret values in env; every referenced ConfigMap exists, every referenced Secret
      key exists when the Secret is rendered (else it is listed as expected from outside); every
      Service, PodDisruptionBudget and HorizontalPodAutoscaler points at a workload.
env   for each of our services, the variable names its pods get (explicit env, plus the keys of
      envFrom ConfigMaps) must all be settings its binary lists in `--help`; settings without a
      default must be set; GRPC_ADDRESS and METRICS_ADDRESS (and payment-server's
      INTERNAL_GRPC_ADDRESS when it has an INTERNAL_TOKEN, port "internal") must listen on all
      interfaces at the ports the container declares; the probes must be gRPC health probes on that port, liveness
      and startup asking for "liveness", readiness for ""; values must have the shape of the
      default (a number where the default is a number, a duration where it is a duration);
      a setting naming a file read at start (a CA, certificate, key, password or JWKS *_FILE) must point
      into one of the container's volume mounts, and, on a Secret volume that lists its items,
      at one of them: a pod would otherwise start without it. With gRPC TLS on
      (GRPC_TLS_CERT_FILE), the probes must use the plaintext health port (GRPC_HEALTH_ADDRESS on
      all interfaces, container port "health"): Kubernetes' gRPC probes speak plaintext only.
"""

import argparse
import json
import os
import pathlib
import re
import subprocess
import sys

SERVICES = ("payment-server", "outbox-relay", "notifier", "retry-worker")
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job")
SECRET_WORDS = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|PRIVATE_KEY|API_KEY", re.I)
# A setting that names a file (KAFKA_SASL_PASSWORD_FILE): its value is a path, not a secret.
FILE_SETTING = re.compile(r"_FILE$")
# A file a binary reads at start (a CA, a client certificate or key, a password, a JWKS).
INPUT_FILE_SETTING = re.compile(r"_(CA|CERT|KEY|PASSWORD|JWKS)_FILE$")
URL_WITH_PASSWORD = re.compile(r"://[^/@:\s]+:[^/@\s]+@")
HELP_LINE = re.compile(r"^  ([A-Z][A-Z0-9_]*)  --([a-z0-9-]+)  \[default: (.*)\]$")
DURATION = re.compile(r"^\d+(\.\d+)?(ms|s|m|h)?$")
INTEGER = re.compile(r"^-?\d+$")
REQUIRED = "(required)"  # what Settings::Help prints as the default of a RequiredString
# Every service keeps its state in Postgres, so a pod without this is broken even where the
# binary declares it with an empty default.
ALWAYS_SET = ("DATABASE_URL",)
# grpc.health.v1 names (common/grpc_server.h): "" is readiness (NOT_SERVING while a dependency
# is away), "liveness" is SERVING from start to stop. Liveness and startup probes must ask for
# "liveness" (a dependency outage must not restart pods), readiness for "" unless the workload
# carries this annotation with a reason (printed with the check).
LIVENESS_SERVICE = "liveness"
READINESS_ANNOTATION = "concert/readiness-service-reason"

failures = 0


def report(ok, what, details=()):
    global failures
    print(("PASS " if ok else "FAIL ") + what)
    if not ok:
        failures += 1
    for d in details:
        print("  " + d)


def pod_spec(obj):
    spec = obj.get("spec", {})
    if obj["kind"] == "CronJob":
        spec = spec.get("jobTemplate", {}).get("spec", {})
    return spec.get("template", {}).get("spec", {})


def pod_labels(obj):
    return obj.get("spec", {}).get("template", {}).get("metadata", {}).get("labels", {}) or {}


def selects(selector, labels):
    match = (selector or {}).get("matchLabels", selector or {})
    return bool(match) and all(labels.get(k) == v for k, v in match.items())


def image_pinned(image):
    if "@sha256:" in image:
        return True
    last = image.rsplit("/", 1)[-1]
    return ":" in last and not last.endswith(":latest")


def service_of(container):
    cmd = container.get("command") or container.get("args") or []
    name = os.path.basename(cmd[0]) if cmd else ""
    return name if name in SERVICES else None


def lint(objs, where):
    problems, external = [], {}
    by_kind = {}
    for o in objs:
        by_kind.setdefault(o["kind"], {})[o["metadata"]["name"]] = o
    configmaps = by_kind.get("ConfigMap", {})
    secrets = by_kind.get("Secret", {})
    workloads = [o for o in objs if o["kind"] in WORKLOAD_KINDS + ("CronJob",)]

    for name, cm in configmaps.items():
        for key, value in (cm.get("data") or {}).items():
            if SECRET_WORDS.search(key) and not FILE_SETTING.search(key):
                problems.append(f"ConfigMap {name}: key {key} looks secret: use a Secret")
            if URL_WITH_PASSWORD.search(str(value)):
                problems.append(f"ConfigMap {name}: {key} holds a URL with a password")

    def secret_key(ref, who):
        sname, key = ref.get("name"), ref.get("key")
        if sname in secrets:
            if key is not None and key not in (secrets[sname].get("data") or {}) \
                    and key not in (secrets[sname].get("stringData") or {}) \
                    and not ref.get("optional"):
                problems.append(f"{who}: Secret {sname} has no key {key}")
        else:
            external.setdefault(sname, set())
            if key is not None:
                external[sname].add(key + (" (optional)" if ref.get("optional") else ""))

    for w in workloads:
        wname = f"{w['kind']} {w['metadata']['name']}"
        spec = pod_spec(w)
        psc = spec.get("securityContext") or {}
        if spec.get("hostNetwork") or spec.get("hostPID") or spec.get("hostIPC"):
            problems.append(f"{wname}: uses a host namespace")
        if "terminationGracePeriodSeconds" not in spec:
            problems.append(f"{wname}: no terminationGracePeriodSeconds (fit it to the graceful stop)")
        for vol in spec.get("volumes") or []:
            if "hostPath" in vol:
                problems.append(f"{wname}: hostPath volume {vol['name']}")
            if "secret" in vol:  # e.g. gRPC's TLS certificates
                ref = vol["secret"]
                for item in ref.get("items") or [{"key": None}]:
                    secret_key({"name": ref.get("secretName"), "key": item["key"],
                                "optional": ref.get("optional")}, f"{wname} volume {vol['name']}")
        inits = [(c, True) for c in spec.get("initContainers") or []]
        for c, is_init in [(c, False) for c in spec.get("containers") or []] + inits:
            who = f"{wname} container {c['name']}"
            sc = c.get("securityContext") or {}
            image = c.get("image", "")
            if not image_pinned(image):
                problems.append(f"{who}: image {image!r} is not pinned by tag or digest (or is latest)")
            res = c.get("resources") or {}
            for part in ("requests", "limits"):
                for r in ("cpu", "memory"):
                    if r not in (res.get(part) or {}):
                        problems.append(f"{who}: no resources.{part}.{r}")
            if not is_init:
                for probe in ("livenessProbe", "readinessProbe"):
                    if probe not in c:
                        problems.append(f"{who}: no {probe}")
            if not sc.get("runAsNonRoot", psc.get("runAsNonRoot")):
                problems.append(f"{who}: runAsNonRoot is not true")
            if sc.get("runAsUser", psc.get("runAsUser")) == 0:
                problems.append(f"{who}: runAsUser 0")
            if sc.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{who}: readOnlyRootFilesystem is not true")
            if sc.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{who}: allowPrivilegeEscalation is not false")
            if sc.get("privileged"):
                problems.append(f"{who}: privileged")
            if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
                problems.append(f"{who}: capabilities.drop does not include ALL")
            if (sc.get("capabilities") or {}).get("add"):
                problems.append(f"{who}: adds capabilities")
            seccomp = (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
            if seccomp not in ("RuntimeDefault", "Localhost"):
                problems.append(f"{who}: seccompProfile is not RuntimeDefault")
            for e in c.get("env") or []:
                if "value" in e and SECRET_WORDS.search(e["name"]) and e["value"] \
                        and not FILE_SETTING.search(e["name"]):
                    problems.append(f"{who}: env {e['name']} has a literal value: use a secretKeyRef")
                ref = (e.get("valueFrom") or {})
                if "secretKeyRef" in ref:
                    secret_key(ref["secretKeyRef"], who)
                if "configMapKeyRef" in ref:
                    cref = ref["configMapKeyRef"]
                    if cref["name"] not in configmaps:
                        problems.append(f"{who}: ConfigMap {cref['name']} is not rendered")
                    elif cref["key"] not in (configmaps[cref["name"]].get("data") or {}) \
                            and not cref.get("optional"):
                        problems.append(f"{who}: ConfigMap {cref['name']} has no key {cref['key']}")
            for ef in c.get("envFrom") or []:
                if "configMapRef" in ef and ef["configMapRef"]["name"] not in configmaps:
                    problems.append(f"{who}: ConfigMap {ef['configMapRef']['name']} is not rendered")
                if "secretRef" in ef:
                    if service_of(c):
                        # Explicit secretKeyRefs keep the variable names visible to the env check.
                        problems.append(f"{who}: envFrom secretRef hides variable names: "
                                        "use env with secretKeyRef")
                    secret_key({"name": ef["secretRef"]["name"]}, who)

    for kind in ("Service", "PodDisruptionBudget"):
        for name, o in by_kind.get(kind, {}).items():
            sel = o["spec"].get("selector")
            targets = [w for w in workloads if selects(sel, pod_labels(w))]
            if not targets:
                problems.append(f"{kind} {name}: selector {sel} matches no workload")
            if kind == "Service":
                for p in o["spec"].get("ports") or []:
                    tp = p.get("targetPort", p["port"])
                    declared = [cp.get("name") if isinstance(tp, str) else cp.get("containerPort")
                                for w in targets for c in pod_spec(w).get("containers") or []
                                for cp in c.get("ports") or []]
                    if targets and tp not in declared:
                        problems.append(f"Service {name}: targetPort {tp} is not a container port")
    for name, o in by_kind.get("HorizontalPodAutoscaler", {}).items():
        ref = o["spec"]["scaleTargetRef"]
        target = by_kind.get(ref["kind"], {}).get(ref["name"])
        if target is None:
            problems.append(f"HorizontalPodAutoscaler {name}: no {ref['kind']} {ref['name']}")
        elif "replicas" in target["spec"]:
            problems.append(f"{ref['kind']} {ref['name']}: sets replicas although the HPA "
                            "owns them (every apply would reset the count)")

    report(not problems, f"lint {where} ({len(workloads)} workloads, {len(objs)} objects)",
           problems)
    for sname, keys in sorted(external.items()):
        print(f"  {where}: expects Secret {sname} from outside with keys: "
              f"{', '.join(sorted(keys)) or '(all, via envFrom or a volume)'}")


_help_cache = {}


def settings_of(bin_dir, service):
    if service not in _help_cache:
        path = pathlib.Path(bin_dir) / service
        if not os.access(path, os.X_OK):
            _help_cache[service] = (None, f"{path} is not built (set BUILD_DIR; `make build`)")
        else:
            # A clean environment: --help must not depend on what this shell has set.
            run = subprocess.run([str(path), "--help"], capture_output=True, text=True,
                                 timeout=30, env={"PATH": "/usr/bin:/bin"})
            found = {}
            for line in run.stdout.splitlines():
                m = HELP_LINE.match(line)
                if m:
                    default = m.group(3)
                    found[m.group(1)] = "" if default == '""' else default
            if run.returncode != 0 or not found:
                _help_cache[service] = (None, f"`{path} --help` exited {run.returncode} "
                                              f"and listed {len(found)} settings")
            else:
                _help_cache[service] = (found, None)
    return _help_cache[service]


def port_of(address):
    host, _, port = address.rpartition(":")
    return host, int(port) if port.isdigit() else None


def file_problems(container, spec, values):
    """Input *_FILE settings whose path no volume mount of `container` provides."""
    volumes = {v["name"]: v for v in spec.get("volumes") or []}
    problems = []
    for name, path in sorted(values.items()):
        if not INPUT_FILE_SETTING.search(name) or not path:
            continue
        mounts = [m for m in container.get("volumeMounts") or []
                  if path.startswith(m["mountPath"].rstrip("/") + "/")]
        if not mounts:
            problems.append(f"{name}={path}: on no volume mount of the container")
            continue
        mount = max(mounts, key=lambda m: len(m["mountPath"]))
        secret = (volumes.get(mount["name"]) or {}).get("secret") or {}
        items = [i["path"] for i in secret.get("items") or []]
        inside = path[len(mount["mountPath"].rstrip("/")) + 1:]
        if items and inside not in items:
            problems.append(f"{name}={path}: Secret {secret.get('secretName')} mounted at "
                            f"{mount['mountPath']} has only {', '.join(items)}")
    return problems


def env_check(objs, where, bin_dir):
    configmaps = {o["metadata"]["name"]: o for o in objs if o["kind"] == "ConfigMap"}
    seen = set()
    for w in objs:
        if w["kind"] not in WORKLOAD_KINDS:
            continue
        spec = pod_spec(w)
        for c, is_init in [(c, False) for c in spec.get("containers") or []] + \
                [(c, True) for c in spec.get("initContainers") or []]:
            service = service_of(c)
            if not service:
                continue
            seen.add(service)
            what = f"env {where} {w['metadata']['name']}/{c['name']} vs `{service} --help`"
            settings, error = settings_of(bin_dir, service)
            if settings is None:
                report(False, what, [error])
                continue
            problems = []
            values = {}  # name -> literal value where known (None for Secret-sourced)
            for ef in c.get("envFrom") or []:
                prefix = ef.get("prefix", "")
                if "configMapRef" in ef:
                    cm = configmaps.get(ef["configMapRef"]["name"])
                    for k, v in ((cm or {}).get("data") or {}).items():
                        values[prefix + k] = v
                if "secretRef" in ef:
                    problems.append(f"envFrom Secret {ef['secretRef']['name']}: its keys cannot "
                                    "be checked here; use env with secretKeyRef")
            for e in c.get("env") or []:
                values[e["name"]] = e.get("value")
                ref = (e.get("valueFrom") or {}).get("configMapKeyRef")
                if ref and ref["name"] in configmaps:
                    values[e["name"]] = (configmaps[ref["name"]].get("data") or {}).get(ref["key"])
            for name in sorted(values):
                if name not in settings:
                    problems.append(f"{name} is set but `{service} --help` lists no such setting")
            for name, default in sorted(settings.items()):
                if (default == REQUIRED or name in ALWAYS_SET) and name not in values:
                    problems.append(f"{name} is required (no default) and is not set")
            problems += file_problems(c, spec, values)
            for name, value in sorted(values.items()):
                default = settings.get(name)
                if value is None or default in (None, "", REQUIRED):
                    continue
                if INTEGER.match(default) and not INTEGER.match(value):
                    problems.append(f"{name}={value!r}: expected a whole number like {default}")
                elif DURATION.match(default) and not INTEGER.match(default) \
                        and not DURATION.match(value):
                    problems.append(f"{name}={value!r}: expected a duration like {default}")
            ports = {p.get("name"): p["containerPort"] for p in c.get("ports") or []}
            # Probes speak plaintext only: with TLS on, they must use the plaintext health port.
            probe_port = "grpc"
            if not is_init and (values.get("GRPC_TLS_CERT_FILE") or values.get("GRPC_HEALTH_ADDRESS")):
                probe_port = "health"
                address = values.get("GRPC_HEALTH_ADDRESS")
                if not address:
                    problems.append("GRPC_TLS_CERT_FILE is set but GRPC_HEALTH_ADDRESS is not: "
                                    "gRPC probes speak plaintext and cannot reach a TLS port")
                else:
                    host, port = port_of(address)
                    if host not in ("0.0.0.0", "[::]", ""):
                        problems.append(f"GRPC_HEALTH_ADDRESS={address}: must listen on all "
                                        "interfaces")
                    if ports.get("health") != port:
                        problems.append(f"GRPC_HEALTH_ADDRESS={address}: container port "
                                        f"'health' is {ports.get('health')}")
            if not is_init:
                addresses = [("GRPC_ADDRESS", "grpc"), ("METRICS_ADDRESS", "metrics")]
                # payment-server serves TelegramLinkService there when it has INTERNAL_TOKEN.
                if "INTERNAL_GRPC_ADDRESS" in settings and "INTERNAL_TOKEN" in values:
                    addresses.append(("INTERNAL_GRPC_ADDRESS", "internal"))
                for setting, port_name in addresses:
                    address = values.get(setting)
                    if address is None:
                        problems.append(f"{setting} is not set (the default listens on loopback, "
                                        "out of reach of probes and Services)")
                        continue
                    host, port = port_of(address)
                    if host not in ("0.0.0.0", "[::]", ""):
                        problems.append(f"{setting}={address}: must listen on all interfaces")
                    if port_name not in ports or ports[port_name] != port:
                        problems.append(f"{setting}={address}: container port {port_name!r} is "
                                        f"{ports.get(port_name)}")
                why = (w["metadata"].get("annotations") or {}).get(READINESS_ANNOTATION)
                for probe, want in (("startupProbe", LIVENESS_SERVICE),
                                    ("livenessProbe", LIVENESS_SERVICE), ("readinessProbe", "")):
                    if probe not in c:
                        if probe != "startupProbe":
                            problems.append(f"{probe} is missing")
                        continue
                    grpc = c[probe].get("grpc")
                    if not grpc:
                        problems.append(f"{probe} is not a gRPC health probe")
                        continue
                    if grpc.get("port") not in (ports.get(probe_port), probe_port):
                        problems.append(f"{probe} probes port {grpc.get('port')}, gRPC health "
                                        f"is on {ports.get(probe_port)} ({probe_port})")
                    service = grpc.get("service", "")
                    if probe == "readinessProbe" and why:
                        continue
                    if service != want:
                        problems.append(
                            f"{probe} asks for health service {service!r}, wants {want!r}"
                            + (f" (or annotate the workload with {READINESS_ANNOTATION} and say why)"
                               if probe == "readinessProbe" else ""))
                if why:
                    print(f"  {where} {w['metadata']['name']}: readiness on "
                          f"{c['readinessProbe'].get('grpc', {}).get('service')!r}, because {why}")
            report(not problems, f"{what} ({len(values)} variables, {len(settings)} settings)",
                   problems)
    missing = [s for s in SERVICES if s not in seen]
    report(not missing, f"env {where}: all four services deployed",
           [f"no container runs {s}" for s in missing])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bin-dir", required=True, help="where the four binaries are")
    parser.add_argument("renderings", nargs="+", help="JSON lists of objects, one per overlay")
    args = parser.parse_args()
    for path in args.renderings:
        where = pathlib.Path(path).stem
        objs = [o for o in json.loads(pathlib.Path(path).read_text()) if o]
        lint(objs, where)
        env_check(objs, where, args.bin_dir)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
