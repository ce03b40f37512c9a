#!/usr/bin/env python3
"""The `podman run` arguments that run one container of a rendered overlay the way its pod spec
says: the user and group, a read-only root, every emptyDir as a tmpfs, the environment (values,
ConfigMap and Secret references resolved against the rendered objects) and the command.

scripts/test-image.sh uses it so that the image test runs the binaries exactly as the manifests
do, without a cluster; a change to the manifests changes the test with it.

    kubectl kustomize deploy/k8s/overlays/dev > dev.yaml
    scripts/pod-args.py dev.yaml payment-server payment-server \\
        --replace postgres:5432=127.0.0.1:55482 --init migrate

Prints one argument a line: options first, then the image placeholder IMAGE, then the command
and its arguments. --init NAME takes the init container NAME instead of the container.
--replace OLD=NEW rewrites environment values (Service names that only resolve in a cluster).
--mount PATH=HOSTDIR binds HOSTDIR where the pod has an emptyDir at PATH (to read what the
container writes there).
"""
import argparse
import base64
import sys

import yaml


def main():
    p = argparse.ArgumentParser()
    p.add_argument("rendered")
    p.add_argument("workload")
    p.add_argument("container")
    p.add_argument("--init", action="store_true", help="CONTAINER is an init container")
    p.add_argument("--replace", action="append", default=[])
    p.add_argument("--mount", action="append", default=[])
    a = p.parse_args()

    with open(a.rendered) as f:
        objs = [o for o in yaml.safe_load_all(f) if o]
    configmaps = {o["metadata"]["name"]: o.get("data") or {} for o in objs if o["kind"] == "ConfigMap"}
    secrets = {}
    for o in objs:
        if o["kind"] == "Secret":
            data = {k: base64.b64decode(v).decode() for k, v in (o.get("data") or {}).items()}
            data.update(o.get("stringData") or {})
            secrets[o["metadata"]["name"]] = data
    workload = next((o for o in objs if o["kind"] in ("Deployment", "StatefulSet")
                     and o["metadata"]["name"] == a.workload), None)
    if workload is None:
        sys.exit(f"pod-args: no workload {a.workload}")
    spec = workload["spec"]["template"]["spec"]
    containers = spec.get("initContainers" if a.init else "containers") or []
    c = next((c for c in containers if c["name"] == a.container), None)
    if c is None:
        sys.exit(f"pod-args: {a.workload} has no {'init ' if a.init else ''}container {a.container}")

    replacements = [r.split("=", 1) for r in a.replace]
    mounts = dict(m.split("=", 1) for m in a.mount)

    def fix(value):
        for old, new in replacements:
            value = value.replace(old, new)
        return value

    out = []
    pod_sc = spec.get("securityContext") or {}
    sc = c.get("securityContext") or {}
    user = sc.get("runAsUser", pod_sc.get("runAsUser"))
    group = sc.get("runAsGroup", pod_sc.get("runAsGroup", user))
    if user is not None:
        out.append(f"--user={user}:{group}")
    if sc.get("readOnlyRootFilesystem"):
        out.append("--read-only")
    if (sc.get("capabilities") or {}).get("drop") == ["ALL"]:
        out.append("--cap-drop=ALL")
    if sc.get("allowPrivilegeEscalation") is False:
        out.append("--security-opt=no-new-privileges")
    empty_dirs = {v["name"] for v in spec.get("volumes") or [] if "emptyDir" in v}
    for m in c.get("volumeMounts") or []:
        if m["name"] not in empty_dirs:
            sys.exit(f"pod-args: volume {m['name']} is not an emptyDir; not supported here")
        path = m["mountPath"]
        if path in mounts:
            out.append(f"--volume={mounts[path]}:{path}")
        else:
            # An emptyDir is writable by the pod's fsGroup or, without one, by everyone.
            out.append(f"--tmpfs={path}:rw,mode=1777")
    for ef in c.get("envFrom") or []:
        if "configMapRef" in ef:
            for k, v in configmaps[ef["configMapRef"]["name"]].items():
                out.append(f"--env={ef.get('prefix', '')}{k}={fix(str(v))}")
        if "secretRef" in ef:
            for k, v in secrets[ef["secretRef"]["name"]].items():
                out.append(f"--env={ef.get('prefix', '')}{k}={fix(v)}")
    for e in c.get("env") or []:
        if "value" in e:
            value = str(e["value"])
        else:
            ref = e["valueFrom"]
            if "configMapKeyRef" in ref:
                r = ref["configMapKeyRef"]
                value = configmaps.get(r["name"], {}).get(r["key"])
            elif "secretKeyRef" in ref:
                r = ref["secretKeyRef"]
                value = secrets.get(r["name"], {}).get(r["key"])
            else:
                sys.exit(f"pod-args: {e['name']}: only values, ConfigMap and Secret keys are supported")
            if value is None:
                if (r.get("optional")):
                    continue
                sys.exit(f"pod-args: {e['name']}: {r['name']}/{r['key']} is not in the overlay")
        out.append(f"--env={e['name']}={fix(value)}")
    if c.get("workingDir"):
        out.append(f"--workdir={c['workingDir']}")
    command = list(c.get("command") or [])
    args = list(c.get("args") or [])
    if command:
        out.append(f"--entrypoint={command[0]}")
        out.append("IMAGE")
        out += command[1:] + args
    else:
        out.append("IMAGE")
        out += args
    for line in out:
        if "\n" in line:
            sys.exit(f"pod-args: a value with a newline is not supported: {line.split('=')[0]}")
        print(line)


if __name__ == "__main__":
    main()
