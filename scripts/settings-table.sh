#!/usr/bin/env bash
# scripts/settings-table.sh — the README's configuration tables and its table of ports, made
# from the binaries' own `--help`, so the documentation cannot drift from the code:
#
#   scripts/settings-table.sh            print the Markdown tables (one per binary, then ports)
#   scripts/settings-table.sh --check    exit 1 if a table in README.md differs from them (a
#                                        setting missing, stale, or with another default, range
#                                        or meaning), or if scripts/system.sh (`make up`) runs a
#                                        service on other addresses than its defaults
set -euo pipefail
. "$(dirname "$0")/lib.sh"

BUILD_DIR=${BUILD_DIR:-build}
[[ "$BUILD_DIR" == /* ]] || BUILD_DIR="$ROOT/$BUILD_DIR"
BIN="$BUILD_DIR/bin"
BINARIES=(payment-server outbox-relay notifier retry-worker)
PORTS_ANCHOR='**Ports**'

# Field separator of settings_of: not whitespace, so that `read` keeps an empty ALLOWED.
SEP=$'\x1f'

# NAME SEP DEFAULT SEP ALLOWED SEP HELP for each setting of a binary (ALLOWED may be empty).
settings_of() {
  "$BIN/$1" --help | awk -v sep="$SEP" '
    /^  [A-Z][A-Z0-9_]*  --/ {
      name = $1
      d = $0; sub(/.*\[default: /, "", d); sub(/\].*/, "", d)
      a = ""
      if (match($0, /\[allowed: [^]]*\]/)) a = substr($0, RSTART + 10, RLENGTH - 11)
      next_is_help = 1; next
    }
    next_is_help {
      h = $0; sub(/^ +/, "", h)
      printf "%s%s%s%s%s%s%s\n", name, sep, d, sep, a, sep, h
      next_is_help = 0
    }'
}

# The default of setting $2 of binary $1.
default_of() { settings_of "$1" | awk -F"$SEP" -v n="$2" '$1 == n { print $2 }'; }

settings_table() {
  printf '| setting | default | allowed | meaning |\n|---|---|---|---|\n'
  settings_of "$1" | while IFS=$SEP read -r name default allowed help; do
    printf '| `%s` | %s | %s | %s |\n' "$name" "${default//|/\\|}" "$allowed" "${help//|/\\|}"
  done
}

ports_table() {
  printf '| service | gRPC port | metrics port |\n|---|---|---|\n'
  for b in "${BINARIES[@]}"; do
    printf '| %s | %s | %s |\n' "$b" "$(default_of "$b" GRPC_ADDRESS | sed 's/.*://')" \
      "$(default_of "$b" METRICS_ADDRESS | sed 's/.*://')"
  done
}

# The Markdown table that follows the line $1 in README.md.
readme_table() {
  awk -v anchor="$1" '
    found && /^\|/ { print; in_table = 1; next }
    found && in_table { exit }
    $0 == anchor { found = 1 }' "$ROOT/README.md"
}

# check_table ANCHOR GENERATED: README's table after ANCHOR must be GENERATED, line for line.
check_table() {
  local readme
  readme=$(readme_table "$1")
  [[ "$readme" == "$2" ]] && return 0
  say "README.md's table after $1 differs from the binaries' --help (< README, > --help):"
  diff <(printf '%s\n' "$readme") <(printf '%s\n' "$2") >&2 || true
  return 1
}

if [[ "${1:-}" == --check ]]; then
  failed=0
  for b in "${BINARIES[@]}"; do
    [[ -x "$BIN/$b" ]] || die "$BIN/$b is missing: build first"
    check_table "**$b**" "$(settings_table "$b")" || failed=1
    # scripts/system.sh lists: name, gRPC address, metrics address.
    want="\"$b $(default_of "$b" GRPC_ADDRESS) $(default_of "$b" METRICS_ADDRESS)\""
    grep -qF "$want" "$ROOT/scripts/system.sh" ||
      { say "scripts/system.sh does not run $b on its default addresses ($want)"; failed=1; }
  done
  check_table "$PORTS_ANCHOR" "$(ports_table)" || failed=1
  ((failed == 0)) && say "README.md's settings and ports match ${BINARIES[*]} and scripts/system.sh"
  exit "$failed"
fi

for b in "${BINARIES[@]}"; do
  printf '\n**%s**\n\n%s\n' "$b" "$(settings_table "$b")"
done
printf '\n%s\n\n%s\n' "$PORTS_ANCHOR" "$(ports_table)"
