# scripts/lib.sh — small helpers shared by the scripts in this folder.
# Source it (". scripts/lib.sh"); it sets ROOT (the repo root) and LOCAL ($ROOT/.local,
# where every script keeps its state) and defines say / die / port_open / wait_until /
# unmount_under.
# shellcheck shell=bash disable=SC2034

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LOCAL="$ROOT/.local"

# say MSG...: progress message on stderr, prefixed with the script's name.
say() { printf '[%s] %s\n' "$(basename "$0" .sh)" "$*" >&2; }

# die MSG...: print an error and exit 1.
die() { say "ERROR: $*"; exit 1; }

# port_open HOST PORT: true when something accepts TCP connections there.
port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

# wait_until SECONDS CMD...: run CMD once a second until it succeeds (0) or
# SECONDS have passed (1).
wait_until() {
  local deadline=$((SECONDS + $1)); shift
  until "$@"; do
    ((SECONDS < deadline)) || return 1
    sleep 1
  done
}

# wait_for_port HOST PORT SECONDS: wait_until the port accepts connections.
wait_for_port() { wait_until "$3" port_open "$1" "$2"; }

# unmount_under DIR: unmount everything mounted at or below DIR, deepest first (what an
# interrupted debootstrap, kubelet or containerd left behind), so that DIR can be removed.
unmount_under() {
  local dir m
  dir=$(realpath -m "$1")
  awk -v d="$dir" '$2 == d || index($2, d "/") == 1 { print $2 }' /proc/mounts | sort -r |
    while read -r m; do umount -l "$m" 2>/dev/null || true; done
}

# json_field NAME: the first value of JSON field NAME (proto or camelCase spelling) in grpcurl's
# output on stdin.
json_field() {
  local camel
  camel=$(sed -E 's/_(.)/\U\1/g' <<<"$1")
  sed -n -E "s/.*\"($1|$camel)\": \"?([^\",]*)\"?,?\$/\\2/p" | head -n 1
}

# first_free_seat: the id of the first SEAT_AVAILABILITY_FREE seat in a ListSeats answer on stdin.
first_free_seat() {
  awk -F'[:,]' '/"seat_?[iI]d"/ {gsub(/[ "]/, "", $2); id = $2} /SEAT_AVAILABILITY_FREE/ {print id; exit}'
}
