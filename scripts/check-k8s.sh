#!/usr/bin/env bash
# scripts/check-k8s.sh — checks the Kubernetes manifests under deploy/k8s without a cluster:
#
#   1. render   kustomize renders base/ and every overlay (pinned kustomize, not whatever
#               kubectl happens to embed); when kubectl is installed, `kubectl kustomize` must
#               render each overlay the same way (that is what `kubectl apply -k` uses);
#   2. schema   kubeconform validates every rendered object, strictly (unknown fields are
#               errors), against the JSON schemas of Kubernetes $K8S_VERSION; nothing skipped;
#   3. lint     deploy/k8s/check_manifests.py: probes, resources, non-root and read-only
#               security settings, pinned images, no secret-looking ConfigMap keys, and
#               references (Secrets, ConfigMaps, Services, PDBs, HPAs) that resolve;
#   4. env      the environment each service's pods get (explicit env + envFrom ConfigMaps) is
#               compared with the settings its binary lists in `--help` ($BUILD_DIR/bin): a
#               variable the binary does not read fails, and so does a setting with no default
#               that the manifests do not set.
#
# Tools are installed idempotently into .local/ (Go module proxy for kustomize, kubeconform and
# yq; the schemas come from the kubernetes-validate package on PyPI): a second run downloads
# nothing. Exits non-zero on any failure; the last line is "check-k8s: N passed, M failed".
#
#   scripts/check-k8s.sh            BUILD_DIR=build-me scripts/check-k8s.sh
#
# Environment: BUILD_DIR (default build; where bin/ holds the binaries), K8S_DIR (the manifests,
# default deploy/k8s), K8S_OUT (rendered output, default .local/k8s/rendered).
set -euo pipefail
. "$(dirname "$0")/lib.sh"

KUSTOMIZE_VERSION=v5.5.0
KUBECONFORM_VERSION=v0.6.7
YQ_VERSION=v4.44.3
# Schemas: the kubernetes-validate wheel ships the JSON schemas of every Kubernetes minor version
# it supports; we use one of them.
SCHEMA_PACKAGE=kubernetes-validate==1.37.0
K8S_VERSION=1.32.0

BUILD_DIR=${BUILD_DIR:-build}
[[ "$BUILD_DIR" == /* ]] || BUILD_DIR="$ROOT/$BUILD_DIR"
BIN="$LOCAL/bin"
SCHEMA_DIR="$LOCAL/k8s/schemas/v$K8S_VERSION-local-strict"
OUT=${K8S_OUT:-$LOCAL/k8s/rendered}
K8S=${K8S_DIR:-$ROOT/deploy/k8s}
OVERLAYS=(base overlays/dev overlays/prod)

# go_tool NAME MODULE_PATH VERSION: go install into .local/bin unless that exact version is there.
go_tool() {
  local name=$1 want="$2@$3" stamp="$BIN/.$1.version"
  if [[ -x "$BIN/$name" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    return
  fi
  command -v go >/dev/null || die "go not found (scripts/install-deps.sh apt installs it)"
  say "installing $name $3 (go install $want)"
  mkdir -p "$BIN"
  (cd "$BIN" && GOBIN="$BIN" go install -ldflags "-s -w" "$want")
  echo "$want" >"$stamp"
}

# The schemas of one Kubernetes version, taken out of the kubernetes-validate wheel. Their $refs
# point at "/api/_definitions.json", which kubeconform cannot resolve from a folder: they are
# rewritten to this folder's absolute file:// address (so the stamp includes the path).
install_schemas() {
  local stamp="$SCHEMA_DIR/.stamp" want="$SCHEMA_PACKAGE $SCHEMA_DIR"
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    return
  fi
  say "installing Kubernetes $K8S_VERSION JSON schemas from $SCHEMA_PACKAGE"
  python3 -m pip --version >/dev/null 2>&1 ||
    die "pip is missing (apt-get install python3-pip) — needed once to fetch $SCHEMA_PACKAGE"
  local tmp
  tmp=$(mktemp -d)
  python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$tmp" "$SCHEMA_PACKAGE"
  rm -rf "$SCHEMA_DIR"
  mkdir -p "$SCHEMA_DIR"
  python3 - "$tmp"/*.whl "v$K8S_VERSION-local-strict" "$SCHEMA_DIR" <<'PY'
import pathlib, sys, zipfile
wheel, version, dest = sys.argv[1], sys.argv[2], pathlib.Path(sys.argv[3])
prefix = f"kubernetes_validate/kubernetes-json-schema/{version}/"
base = dest.resolve().as_uri() + "/_definitions.json#"
count = 0
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if name.startswith(prefix) and name.endswith(".json"):
            text = z.read(name).decode("utf-8").replace('"/api/_definitions.json#', '"' + base)
            (dest / name[len(prefix):]).write_text(text, encoding="utf-8")
            count += 1
if count < 100:
    sys.exit(f"only {count} schemas for {version} in {wheel}")
PY
  rm -rf "$tmp"
  echo "$want" >"$stamp"
}

passed=0 failed=0
pass() { passed=$((passed + 1)); printf 'PASS  %s\n' "$*"; }
fail() { failed=$((failed + 1)); printf 'FAIL  %s\n' "$*"; }

go_tool kustomize sigs.k8s.io/kustomize/kustomize/v5 "$KUSTOMIZE_VERSION"
go_tool kubeconform github.com/yannh/kubeconform/cmd/kubeconform "$KUBECONFORM_VERSION"
go_tool yq github.com/mikefarah/yq/v4 "$YQ_VERSION"
install_schemas

rm -rf "$OUT"
mkdir -p "$OUT"

# 1. render
rendered=()
for o in "${OVERLAYS[@]}"; do
  f="$OUT/${o//\//-}.yaml"
  if "$BIN/kustomize" build "$K8S/$o" >"$f" 2>"$f.err"; then
    pass "render $o ($(grep -c '^kind:' "$f") objects)"
    rendered+=("$f")
  else
    fail "render $o: $(cat "$f.err")"
  fi
done

# 1b. `kubectl apply -k` uses kubectl's own kustomize: when kubectl is installed, it must render
# each overlay too, to the same objects (compared by kind/namespace/name, so a kubectl embedding
# another kustomize version that formats differently still passes).
objects_of() { "$BIN/yq" -N '.kind + "/" + (.metadata.namespace // "") + "/" + .metadata.name' "$1" | sort; }
if command -v kubectl >/dev/null; then
  for o in overlays/dev overlays/prod; do
    f="$OUT/${o//\//-}.yaml"
    [[ -f "$f" ]] || continue
    if kubectl kustomize "$K8S/$o" >"$f.kubectl" 2>&1 &&
      diff <(objects_of "$f.kubectl") <(objects_of "$f") >"$f.kubectl.diff"; then
      pass "kubectl kustomize $o: same $(grep -c '^kind:' "$f.kubectl") objects"
    else
      fail "kubectl kustomize $o differs from kustomize $KUSTOMIZE_VERSION:"$'\n'"$(cat "$f.kubectl.diff" "$f.kubectl" | head -20)"
    fi
  done
else
  say "kubectl not installed: only the pinned kustomize $KUSTOMIZE_VERSION rendered the overlays"
fi

# 2. schema: -strict rejects unknown fields; a kind without a schema is an error (no -skip, no
# -ignore-missing-schemas), so every object, HPA, PDB and StatefulSet included, is validated.
for f in "${rendered[@]}"; do
  name=$(basename "$f" .yaml)
  if report=$("$BIN/kubeconform" -strict -summary -kubernetes-version "$K8S_VERSION" \
    -schema-location "$SCHEMA_DIR/{{ .ResourceKind }}{{ .KindSuffix }}.json" "$f" 2>&1); then
    pass "schema $name, Kubernetes $K8S_VERSION: $(tail -1 <<<"$report")"
  else
    fail "schema $name, Kubernetes $K8S_VERSION:"$'\n'"$report"
  fi
done

# 3 + 4. lint and env, on the JSON form of each overlay (the base alone has no image and no
# Secrets: it is rendered and validated above, but only an overlay is something to deploy).
json_args=()
for f in "${rendered[@]}"; do
  [[ "$(basename "$f")" == overlays-* ]] || continue
  "$BIN/yq" eval-all -o=json '[.]' "$f" >"${f%.yaml}.json"
  json_args+=("${f%.yaml}.json")
done
if ((${#json_args[@]})); then
  while IFS= read -r line; do
    case "$line" in
      PASS*) pass "${line#PASS }" ;;
      FAIL*) fail "${line#FAIL }" ;;
      *) printf '      %s\n' "$line" ;;
    esac
  done < <(python3 "$ROOT/deploy/k8s/check_manifests.py" --bin-dir "$BUILD_DIR/bin" "${json_args[@]}" 2>&1 ||
    { rc=$?; ((rc == 1)) || echo "FAIL check_manifests.py crashed (status $rc)"; })
fi

echo "check-k8s: $passed passed, $failed failed"
((failed == 0))
