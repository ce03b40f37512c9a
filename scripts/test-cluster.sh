#!/usr/bin/env bash
# scripts/test-cluster.sh — `make test-cluster`: the dev overlay on a real single-node
# Kubernetes started here, used exactly as a user would, then everything stopped again.
#
#   scripts/test-cluster.sh          build what is missing, start, test, stop
#   scripts/test-cluster.sh stop     stop and remove what a killed run left behind
#   KEEP_CLUSTER=1 scripts/test-cluster.sh     leave it running after the test (to look
#                                    around: export KUBECONFIG=.local/cluster/run/admin.kubeconfig)
#
# What runs, all on this machine and nothing reachable from outside it:
#   etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kube-proxy and
#   CoreDNS as host processes, built once from the Go module proxy (scripts/cluster/k8s and
#   scripts/cluster/coredns pin the versions) into .local/cluster/bin; containerd and runc from
#   Debian run the pods, on a CNI bridge (Debian's plugins) of their own, 10.244.0.0/24; the
#   node's address is the bridge's 10.244.0.1, where CoreDNS answers for cluster.local and the
#   kubelet listens; the control plane and every other port are on 127.0.0.1.
# The images: ours (scripts/image.sh), and stand-ins for the two the overlay names
# (postgres:15.10-bookworm, apache/kafka:4.0.0) built the same way from Debian's postgresql-15
# and OpenJDK 17 with the Kafka jars of that version (scripts/cluster/images); all imported into
# containerd, since no registry is reachable. Two hostPath PersistentVolumes stand in for a
# storage provisioner (the StatefulSets' claims bind to them).
#
# The test, as a user: kubectl apply -k deploy/k8s/overlays/dev; every pod Ready (init containers
# migrated, gRPC probes answering); seed-demo, a token and a payment through the payment-server
# Service (kubectl port-forward, grpcurl); the notification in the notifier's log sender file
# (the dev overlay has no Telegram token); the notifier pod killed, a second payment made while
# it is away, the replacement pod Ready and the second notification delivered by it, the first
# payment still there; kubectl apply --dry-run=server -k deploy/k8s/overlays/prod.
#
# Needs root. A run after a killed one first stops its leftovers; `stop` runs on every exit.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"
cd "$ROOT"

K8S_VERSION=v1.32.13
CL="$LOCAL/cluster"
BIN="$CL/bin"
RUN="$CL/run"
LOGS="$RUN/logs"
TIMEOUT=${CLUSTER_TIMEOUT:-300}
NODE=concert-node
BRIDGE=concert0
NODE_IP=10.244.0.1
POD_CIDR=10.244.0.0/24
SERVICE_CIDR=10.96.0.0/16
ETCD_PORT=22379
ETCD_PEER_PORT=22380
APISERVER_PORT=26443
KUBELET_PORT=20250
FORWARD_PORT=25051
CONTAINERD_SOCK=/run/concert-cluster/containerd.sock
PAUSE_IMAGE=localhost/concert-pause:1
IMAGE=registry.example.com/concert/concert:0.1.0
# The stand-ins' names are the ones the dev overlay pins (build_images reads them from it).
POSTGRES_IMAGE=
KAFKA_IMAGE=
GRPCURL="$LOCAL/bin/grpcurl"
KUBECTL=("$BIN/kubectl" --kubeconfig "$RUN/admin.kubeconfig")
CTR=(ctr --address "$CONTAINERD_SOCK" --namespace k8s.io)
PODMAN=(podman --runtime runc --cgroup-manager cgroupfs --events-backend file)

# --- building (cached) -----------------------------------------------------------------------

# go_build DIR STAMP OUTDIR PACKAGES...: go build in module DIR unless STAMP matches its go.mod,
# go.sum and main files. nice: the other work on this machine keeps its share of the 2 cores.
go_build() {
  local dir=$1 name=$2; shift 2
  local stamp="$BIN/.$name.stamp" want
  want=$({ cat "$dir"/go.mod "$dir"/go.sum; find "$dir" -name '*.go' -print0 | sort -z | xargs -0 cat; } |
    sha256sum | cut -c1-16)
  [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]] && return
  say "building $name from the Go module proxy ($*) — once, several minutes"
  mkdir -p "$BIN"
  (cd "$dir" && CGO_ENABLED=0 nice -n 10 go build -trimpath -o "$BIN/" -ldflags "-s -w \
    -X k8s.io/component-base/version.gitVersion=$K8S_VERSION \
    -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=32" "$@")
  echo "$want" >"$stamp"
}

build_components() {
  go_build scripts/cluster/k8s kubernetes k8s.io/kubernetes/cmd/kube-apiserver \
    k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kube-scheduler \
    k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-proxy k8s.io/kubernetes/cmd/kubectl \
    ./etcd ./pause
  go_build scripts/cluster/coredns coredns .
  [[ -x "$BIN/coredns" ]] || mv "$BIN/coredns"* "$BIN/coredns" 2>/dev/null || true
}

# local_name NAME: the name a stand-in for image NAME has in the local container storage:
# NAME itself when it names a registry, else localhost/concert-test/<its last part> (buildah
# would complete a short name with a registry of its configuration).
local_name() {
  local domain=${1%%/*}
  if [[ "$1" == */* && ("$domain" == *[.:]* || "$domain" == localhost) ]]; then
    echo "$1"
  else
    echo "localhost/concert-test/${1##*/}"
  fi
}

# image_tar NAME FILE: FILE is a docker-archive of the local image NAME, tagged NAME as the pod
# specs write it, so that containerd files it under the name the kubelet asks for (rewritten
# when the image changed).
image_tar() {
  local id
  id=$("${PODMAN[@]}" image inspect --format '{{.Id}}' "$(local_name "$1")")
  [[ -f "$2" && -f "$2.id" && "$(cat "$2.id")" == "$id" ]] && return
  rm -f "$2" "$2.id"
  skopeo copy --quiet "containers-storage:$(local_name "$1")" "docker-archive:$2:$1"
  echo "$id" >"$2.id"
}

build_images() {
  mkdir -p "$CL/images"
  "${PODMAN[@]}" image exists "$IMAGE" || die "no image $IMAGE: run 'make image' first"
  local images
  images=$("$BIN/kubectl" kustomize deploy/k8s/overlays/dev | sed -n 's/^ *image: *//p' | sort -u)
  POSTGRES_IMAGE=$(grep -E '(^|/)postgres:' <<<"$images")
  KAFKA_IMAGE=$(grep -E '(^|/)kafka:' <<<"$images")
  [[ -n "$POSTGRES_IMAGE" && -n "$KAFKA_IMAGE" ]] || die "the dev overlay names no postgres or kafka image"
  # The overlay pins its stand-ins by tag; the Kafka image gets the jars of that very version.
  local kafka_version=${KAFKA_IMAGE##*:} ctx="$CL/images/kafka-context"
  if [[ ! -f "$ctx/libs/kafka_2.13-$kafka_version.jar" ]]; then
    say "resolving the Kafka $kafka_version jars with Maven"
    rm -rf "$ctx"
    mkdir -p "$ctx/libs"
    mvn -B -q -ntp -f scripts/kafka/pom.xml -Dkafka.version="$kafka_version" \
      dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$ctx/libs" 2>&1 |
      sed 's/\x1b\[[0-9;]*m//g'
  fi
  cp scripts/cluster/images/kafka/{Containerfile,entrypoint.sh} "$ctx/"
  scripts/image.sh derived "$(local_name "$KAFKA_IMAGE")" "$ctx" >/dev/null
  scripts/image.sh derived "$(local_name "$POSTGRES_IMAGE")" scripts/cluster/images/postgres >/dev/null
  # The pod sandbox image: the pause binary alone.
  if ! "${PODMAN[@]}" image exists "$PAUSE_IMAGE" ||
    [[ "$(cat "$CL/images/pause.built" 2>/dev/null)" != "$(sha256sum <"$BIN/pause")" ]]; then
    local c
    c=$(buildah from scratch)
    buildah copy "$c" "$BIN/pause" /pause >/dev/null
    buildah config --entrypoint '["/pause"]' --user 65535:65535 "$c"
    buildah commit --quiet "$c" "$PAUSE_IMAGE" >/dev/null
    buildah rm "$c" >/dev/null
    sha256sum <"$BIN/pause" >"$CL/images/pause.built"
  fi
  image_tar "$IMAGE" "$CL/images/concert.tar"
  image_tar "$POSTGRES_IMAGE" "$CL/images/postgres.tar"
  image_tar "$KAFKA_IMAGE" "$CL/images/kafka.tar"
  image_tar "$PAUSE_IMAGE" "$CL/images/pause.tar"
}

# --- stopping ----------------------------------------------------------------------------------

# stop_pid NAME: SIGTERM the process in $RUN/NAME.pid, SIGKILL after 10 s.
stop_pid() {
  local f="$RUN/$1.pid" pid
  [[ -f "$f" ]] || return 0
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    wait_until 10 bash -c "! kill -0 $pid 2>/dev/null" || kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}

stop_all() {
  [[ -d "$RUN" ]] || return 0
  say "stopping the cluster"
  stop_pid port-forward
  stop_pid kubelet
  # Every pod's containers and sandboxes, while containerd still answers.
  if [[ -S "$CONTAINERD_SOCK" ]]; then
    local id
    for id in $("${CTR[@]}" tasks ls -q 2>/dev/null); do
      "${CTR[@]}" tasks kill -s SIGKILL "$id" >/dev/null 2>&1 || true
    done
    sleep 1
    for id in $("${CTR[@]}" tasks ls -q 2>/dev/null); do
      "${CTR[@]}" tasks delete -f "$id" >/dev/null 2>&1 || true
    done
    for id in $("${CTR[@]}" containers ls -q 2>/dev/null); do
      "${CTR[@]}" containers delete "$id" >/dev/null 2>&1 || true
    done
  fi
  stop_pid containerd
  # Shims whose containerd is gone (a killed run): they belong to our socket.
  pkill_ours containerd-shim-runc-v2 "$RUN/containerd"
  for c in coredns kube-proxy kube-scheduler kube-controller-manager kube-apiserver etcd; do
    stop_pid "$c"
  done
  [[ ! -x "$BIN/kube-proxy" ]] || "$BIN/kube-proxy" --cleanup >/dev/null 2>&1 || true
  clean_iptables
  unmount_under "$RUN"
  unmount_under /run/concert-cluster
  # The pods' network namespaces: containerd names them cni-<uuid>; ours are those that were
  # not there before it started.
  local ns
  for ns in $(ip netns list | awk '$1 ~ /^cni-/ {print $1}'); do
    grep -qx "$ns" "$RUN/netns.before" 2>/dev/null || ip netns delete "$ns" 2>/dev/null || true
  done
  ip link delete "$BRIDGE" 2>/dev/null || true
  # The kubelet's cgroups (kubepods and its QoS classes), deepest first, once empty.
  { find /sys/fs/cgroup/*/kubepods* -depth -type d 2>/dev/null || true; } | while read -r d; do
    rmdir "$d" 2>/dev/null || true
  done
  if [[ -f "$RUN/sysctl.saved" ]]; then
    sysctl -q -p "$RUN/sysctl.saved" >/dev/null 2>&1 || true
  fi
  # The kubelet keeps the containers' logs in /var/log/pods (and links in /var/log/containers)
  # whatever its root directory; only the test's namespace runs pods here.
  rm -rf /var/log/pods/concert_* /var/log/containers/*_concert_*
  rm -rf "$RUN" /run/concert-cluster
  # The shims' and runc's state folders under containerd's default /run/containerd, once empty.
  find /run/containerd -depth -type d -empty -delete 2>/dev/null || true
}

# clean_iptables: what kube-proxy --cleanup leaves (the kubelet's and kube-proxy's canary and
# firewall chains): every KUBE-* chain and the rules that jump to one, in both address families.
clean_iptables() {
  local ipt table rule chain
  for ipt in iptables ip6tables; do
    command -v "$ipt" >/dev/null || continue
    for table in filter nat mangle; do
      { "$ipt-save" -t "$table" 2>/dev/null | grep -E '^-A [A-Z]+ .*-j KUBE-' || true; } |
        sed 's/^-A/-D/' | while read -r rule; do eval "$ipt -t $table $rule" 2>/dev/null || true; done
      for chain in $("$ipt-save" -t "$table" 2>/dev/null | sed -n 's/^:\(KUBE-[^ ]*\) .*/\1/p'); do
        "$ipt" -t "$table" -F "$chain" 2>/dev/null || true
      done
      for chain in $("$ipt-save" -t "$table" 2>/dev/null | sed -n 's/^:\(KUBE-[^ ]*\) .*/\1/p'); do
        "$ipt" -t "$table" -X "$chain" 2>/dev/null || true
      done
    done
  done
}

# pkill_ours NAME DIR: SIGKILL processes called NAME whose command line mentions DIR.
pkill_ours() {
  local pid
  for pid in $(pgrep -x "$1" 2>/dev/null); do
    if tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "$2"; then
      kill -9 "$pid" 2>/dev/null || true
    fi
  done
}

# --- starting ----------------------------------------------------------------------------------

# start NAME CMD...: CMD in the background, its output in $LOGS/NAME.log, its pid in $RUN/NAME.pid.
start() {
  local name=$1; shift
  "$@" >"$LOGS/$name.log" 2>&1 &
  echo $! >"$RUN/$name.pid"
}

# fail MSG: the last lines of every log, then die.
fail() {
  local f
  for f in "$LOGS"/*.log; do
    [[ -f "$f" ]] || continue
    echo "--- ${f#"$ROOT"/} (last 15 lines)" >&2
    tail -n 15 "$f" >&2
  done
  die "$*"
}

make_certificates() {
  local d="$RUN/pki"
  mkdir -p "$d"
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=concert-test-cluster-ca \
    -keyout "$d/ca.key" -out "$d/ca.crt" 2>/dev/null
  # cert NAME SUBJECT [SANS]
  cert() {
    openssl req -newkey rsa:2048 -nodes -subj "$2" -keyout "$d/$1.key" -out "$d/$1.csr" 2>/dev/null
    openssl x509 -req -in "$d/$1.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial \
      -days 2 ${3:+-extfile <(printf 'subjectAltName=%s' "$3")} -out "$d/$1.crt" 2>/dev/null
  }
  cert apiserver /CN=kube-apiserver \
    "IP:127.0.0.1,IP:10.96.0.1,IP:$NODE_IP,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  cert kubelet "/CN=$NODE" "IP:$NODE_IP,DNS:$NODE"
  # One administrator identity for kubectl and the components: a single-user test cluster.
  cert admin "/O=system:masters/CN=admin"
  openssl genrsa -out "$d/sa.key" 2048 2>/dev/null
  openssl rsa -in "$d/sa.key" -pubout -out "$d/sa.pub" 2>/dev/null
  "$BIN/kubectl" config set-cluster test --server="https://127.0.0.1:$APISERVER_PORT" \
    --certificate-authority="$d/ca.crt" --embed-certs --kubeconfig "$RUN/admin.kubeconfig" >/dev/null
  "$BIN/kubectl" config set-credentials admin --client-certificate="$d/admin.crt" \
    --client-key="$d/admin.key" --embed-certs --kubeconfig "$RUN/admin.kubeconfig" >/dev/null
  "$BIN/kubectl" config set-context test --cluster=test --user=admin \
    --kubeconfig "$RUN/admin.kubeconfig" >/dev/null
  "$BIN/kubectl" config use-context test --kubeconfig "$RUN/admin.kubeconfig" >/dev/null
}

setup_network() {
  # Forwarding and bridge netfilter for Services (kube-proxy's iptables rules see bridged
  # traffic); the previous values come back at stop.
  local k
  for k in net.ipv4.ip_forward net.bridge.bridge-nf-call-iptables; do
    echo "$k = $(sysctl -n "$k")" >>"$RUN/sysctl.saved"
    sysctl -q -w "$k=1"
  done
  # The bridge exists before the first pod, so CoreDNS and the kubelet can listen on it.
  ip link add "$BRIDGE" type bridge
  ip addr add "$NODE_IP/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  mkdir -p "$RUN/cni/net.d" "$RUN/cni/ipam"
  cat >"$RUN/cni/net.d/10-concert.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "concert",
  "plugins": [
    {"type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": false, "hairpinMode": true,
     "ipam": {"type": "host-local", "dataDir": "$RUN/cni/ipam",
              "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$NODE_IP"}]],
              "routes": [{"dst": "0.0.0.0/0"}]}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
}

start_control_plane() {
  start etcd "$BIN/etcd" --name test --data-dir "$RUN/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "test=http://127.0.0.1:$ETCD_PEER_PORT" --listen-metrics-urls ""
  wait_for_port 127.0.0.1 "$ETCD_PORT" 30 || fail "etcd did not start"
  local p="$RUN/pki"
  start kube-apiserver "$BIN/kube-apiserver" --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
    --bind-address 127.0.0.1 --secure-port "$APISERVER_PORT" --advertise-address "$NODE_IP" \
    --service-cluster-ip-range "$SERVICE_CIDR" \
    --tls-cert-file "$p/apiserver.crt" --tls-private-key-file "$p/apiserver.key" \
    --client-ca-file "$p/ca.crt" --kubelet-preferred-address-types InternalIP \
    --kubelet-client-certificate "$p/admin.crt" \
    --kubelet-client-key "$p/admin.key" --kubelet-certificate-authority "$p/ca.crt" \
    --service-account-key-file "$p/sa.pub" --service-account-signing-key-file "$p/sa.key" \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --authorization-mode Node,RBAC --profiling=false
  ready() { "${KUBECTL[@]}" get --raw /readyz >/dev/null 2>&1; }
  wait_until 60 ready || fail "kube-apiserver not ready within 60 s"
  start kube-controller-manager "$BIN/kube-controller-manager" \
    --kubeconfig "$RUN/admin.kubeconfig" --secure-port 0 --leader-elect=false \
    --use-service-account-credentials=true --service-account-private-key-file "$p/sa.key" \
    --root-ca-file "$p/ca.crt" --cluster-signing-cert-file "$p/ca.crt" \
    --cluster-signing-key-file "$p/ca.key"
  start kube-scheduler "$BIN/kube-scheduler" --kubeconfig "$RUN/admin.kubeconfig" \
    --secure-port 0 --leader-elect=false
}

start_node() {
  local c="$RUN/containerd"
  mkdir -p "$c" /run/concert-cluster
  cat >"$c/config.toml" <<EOF
version = 2
root = "$c/root"
state = "$c/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "$CONTAINERD_SOCK"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  # The kubelet asks for oom_score_adj -998 for sandboxes; lowering it needs CAP_SYS_RESOURCE,
  # which this machine does not give (runc: "can't get final child's PID from pipe: EOF").
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$RUN/cni/net.d"
EOF
  ip netns list | awk '{print $1}' >"$RUN/netns.before"
  start containerd containerd --config "$c/config.toml"
  wait_until 30 test -S "$CONTAINERD_SOCK" || fail "containerd did not start"
  local t
  for t in pause concert postgres kafka; do
    "${CTR[@]}" images import --no-unpack "$CL/images/$t.tar" >/dev/null || fail "ctr import $t"
  done
  cat >"$RUN/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 20248
tlsCertFile: $RUN/pki/kubelet.crt
tlsPrivateKeyFile: $RUN/pki/kubelet.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: $RUN/pki/ca.crt}
authorization: {mode: AlwaysAllow}
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix://$CONTAINERD_SOCK
clusterDomain: cluster.local
clusterDNS: [$NODE_IP]
failSwapOn: false
resolvConf: /etc/resolv.conf
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%}
serializeImagePulls: false
EOF
  start kubelet "$BIN/kubelet" --config "$RUN/kubelet.yaml" --kubeconfig "$RUN/admin.kubeconfig" \
    --root-dir "$RUN/kubelet" --cert-dir "$RUN/pki" --hostname-override "$NODE" --node-ip "$NODE_IP"
  cat >"$RUN/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clusterCIDR: $POD_CIDR
hostnameOverride: $NODE
bindAddress: 127.0.0.1
metricsBindAddress: 127.0.0.1:20249
healthzBindAddress: 127.0.0.1:20256
clientConnection: {kubeconfig: $RUN/admin.kubeconfig}
conntrack: {maxPerCore: 0}
EOF
  start kube-proxy "$BIN/kube-proxy" --config "$RUN/kube-proxy.yaml"
  cat >"$RUN/Corefile" <<EOF
.:53 {
    bind $NODE_IP
    errors
    cache 5
    kubernetes cluster.local {
        kubeconfig $RUN/admin.kubeconfig test
    }
}
EOF
  start coredns "$BIN/coredns" -conf "$RUN/Corefile"
  node_ready() {
    "${KUBECTL[@]}" get node "$NODE" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' \
      2>/dev/null | grep -q True
  }
  wait_until 90 node_ready || fail "node $NODE not Ready within 90 s"
}

# Two hostPath volumes the StatefulSets' claims bind to, owned by the UIDs the overlay runs
# Postgres (999) and Kafka (1000) as: hostPath volumes get no fsGroup ownership.
make_volumes() {
  local name uid size
  for spec in postgres:999:2Gi kafka:1000:4Gi; do
    IFS=: read -r name uid size <<<"$spec"
    install -d -o "$uid" -g "$uid" -m 0770 "$RUN/volumes/$name"
    "${KUBECTL[@]}" apply -f - >/dev/null <<EOF
apiVersion: v1
kind: PersistentVolume
metadata:
  name: test-$name
spec:
  capacity: {storage: $size}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Delete
  storageClassName: ""
  claimRef: {namespace: concert, name: data-$name-0}
  hostPath: {path: $RUN/volumes/$name, type: Directory}
EOF
  done
}

# --- the test ------------------------------------------------------------------------------------

k() { "${KUBECTL[@]}" -n concert "$@"; }

wait_all_ready() {
  local w
  for w in statefulset/postgres statefulset/kafka deployment/payment-server deployment/outbox-relay \
    deployment/notifier deployment/retry-worker; do
    k rollout status "$w" --timeout="${TIMEOUT}s" >/dev/null ||
      { k get pods -o wide >&2; k describe pods >&2 2>/dev/null | tail -60 >&2; fail "$w not rolled out"; }
  done
  k wait pod --all --for=condition=Ready --timeout=60s >/dev/null || fail "pods not Ready"
}

forward() {
  stop_pid port-forward
  "${KUBECTL[@]}" -n concert port-forward svc/payment-server "$FORWARD_PORT:50051" \
    >"$LOGS/port-forward.log" 2>&1 &
  echo $! >"$RUN/port-forward.pid"
  wait_for_port 127.0.0.1 "$FORWARD_PORT" 20 || fail "port-forward did not start"
}
rpc() {
  "$GRPCURL" -plaintext -H "authorization: Bearer $TOKEN" -d "$2" "127.0.0.1:$FORWARD_PORT" "$1"
}
# pay: reserve the first free seat and pay for it; prints the reservation id.
pay() {
  local schedule seat reservation
  schedule=$(rpc concert.v1.ConcertService/ListConcerts '{}' | json_field schedule_id)
  seat=$(rpc concert.v1.ConcertService/ListSeats "{\"schedule_id\": $schedule, \"page_size\": 500}" |
    first_free_seat)
  [[ -n "$seat" ]] || fail "no free seat"
  reservation=$(rpc concert.v1.ReservationService/ReserveSeat "{\"seat_id\": $seat}" | json_field reservation_id)
  [[ -n "$reservation" ]] || fail "ReserveSeat of seat $seat failed"
  rpc concert.v1.PaymentService/PayConcert "{\"reservation_id\": $reservation}" >/dev/null ||
    fail "PayConcert of reservation $reservation failed"
  echo "$reservation"
}
# notified POD RESERVATION: the notifier pod's log sender file has the reservation's line.
notified() {
  local lines
  lines=$(k exec "$1" -c notifier -- cat /var/lib/concert/notifications.jsonl 2>/dev/null) &&
    grep -q -E "\"reservation_id\":\"?$2[\",}]" <<<"$lines"
}
notifier_pod() {
  k get pods -l app.kubernetes.io/name=notifier --field-selector=status.phase=Running \
    -o jsonpath='{.items[*].metadata.name}' | awk '{print $1}'
}

run_test() {
  say "kubectl apply -k deploy/k8s/overlays/dev"
  "${KUBECTL[@]}" apply -k deploy/k8s/overlays/dev >"$LOGS/apply-dev.log" ||
    { cat "$LOGS/apply-dev.log" >&2; fail "apply of the dev overlay refused"; }
  wait_all_ready
  say "ok  every pod Ready: $(k get pods --no-headers | awk '{printf "%s ", $1}')"
  k exec deploy/payment-server -c payment-server -- payment-server seed-demo >/dev/null ||
    fail "seed-demo failed"
  TOKEN=$(k exec deploy/payment-server -c payment-server -- payment-server mint-token --user-id=1)
  forward
  local first second old new
  first=$(pay)
  say "ok  payment of reservation $first through svc/payment-server"
  old=$(notifier_pod)
  wait_until 60 notified "$old" "$first" || fail "no notification of reservation $first in $old"
  say "ok  notification of reservation $first in $old's NOTIFICATIONS_FILE"

  # A crash: the notifier pod killed at once, a payment while it is away; the Deployment's
  # replacement delivers that payment's notification (the event waits in Kafka).
  k delete pod "$old" --grace-period=0 --force >/dev/null 2>&1
  second=$(pay)
  say "ok  payment of reservation $second while $old is gone"
  replaced() { new=$(notifier_pod) && [[ -n "$new" && "$new" != "$old" ]]; }
  wait_until "$TIMEOUT" replaced || fail "$old was not replaced"
  k wait pod "$new" --for=condition=Ready --timeout="${TIMEOUT}s" >/dev/null || fail "$new not Ready"
  wait_until 90 notified "$new" "$second" || fail "no notification of reservation $second in $new"
  say "ok  $old replaced by $new, which delivered reservation $second"
  local payments
  payments=$(rpc concert.v1.PaymentService/ListPayments '{"page_size": 10}')
  for r in "$first" "$second"; do
    grep -q -E "\"reservation_?[iI]d\": \"?$r\"?" <<<"$payments" || fail "payment $r missing"
  done
  say "ok  both payments listed by ListPayments"

  "${KUBECTL[@]}" apply --dry-run=server -k deploy/k8s/overlays/prod >"$LOGS/apply-prod.log" ||
    { cat "$LOGS/apply-prod.log" >&2; fail "server-side dry run of the prod overlay refused"; }
  say "ok  kubectl apply --dry-run=server -k deploy/k8s/overlays/prod ($(wc -l <"$LOGS/apply-prod.log") objects)"
}

# On every exit: stop the cluster, unless KEEP_CLUSTER is set and the test passed.
on_exit() {
  local status=$?
  [[ -n "${KEEP_CLUSTER:-}" && $status == 0 ]] || stop_all
  exit "$status"
}

main() {
  ((EUID == 0)) || die "needs root (containerd, kubelet, network)"
  local tool
  for tool in containerd ctr runc iptables conntrack buildah podman skopeo; do
    command -v "$tool" >/dev/null || die "$tool not found: scripts/install-deps.sh cluster installs it"
  done
  [[ -x /usr/lib/cni/bridge ]] || die "no CNI plugins: scripts/install-deps.sh cluster installs them"
  [[ -x "$GRPCURL" ]] || die "no $GRPCURL: scripts/install-deps.sh grpcurl installs it"
  stop_all
  build_components
  build_images
  trap on_exit EXIT
  mkdir -p "$LOGS"
  say "starting a single-node Kubernetes $K8S_VERSION (logs in ${LOGS#"$ROOT"/})"
  make_certificates
  setup_network
  start_control_plane
  start_node
  make_volumes
  run_test
  say "all passed"
}

case "${1:-test}" in
  test) main ;;
  stop) stop_all ;;
  *) die "usage: $0 [test|stop]" ;;
esac
