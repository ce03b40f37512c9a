#!/usr/bin/env bash
# scripts/settings-table.sh — the README's configuration tables, made from the binaries' own
# `--help`, so the documentation cannot drift from the code:
#
#   scripts/settings-table.sh            print a Markdown table per binary
#   scripts/settings-table.sh --check    exit 1 if README.md misses a setting some binary reads
set -euo pipefail
. "$(dirname "$0")/lib.sh"

BUILD_DIR=${BUILD_DIR:-build}
[[ "$BUILD_DIR" == /* ]] || BUILD_DIR="$ROOT/$BUILD_DIR"
BIN="$BUILD_DIR/bin"
BINARIES=(payment-server outbox-relay notifier retry-worker)

# NAME<TAB>DEFAULT<TAB>HELP for each setting of a binary.
settings_of() {
  "$BIN/$1" --help | awk '
    /^  [A-Z][A-Z0-9_]*  --/ {
      name = $1; d = $0; sub(/.*\[default: /, "", d); sub(/\]$/, "", d); next_is_help = 1; next
    }
    next_is_help { h = $0; sub(/^ +/, "", h); printf "%s\t%s\t%s\n", name, d, h; next_is_help = 0 }'
}

if [[ "${1:-}" == --check ]]; then
  missing=0
  for b in "${BINARIES[@]}"; do
    [[ -x "$BIN/$b" ]] || die "$BIN/$b is missing: build first"
    while IFS=$'\t' read -r name _ _; do
      grep -q "| \`$name\` |" "$ROOT/README.md" || { say "README.md lacks $b's setting $name"; missing=1; }
    done < <(settings_of "$b")
  done
  ((missing == 0)) && say "README.md documents every setting of ${BINARIES[*]}"
  exit "$missing"
fi

for b in "${BINARIES[@]}"; do
  printf '\n**%s**\n\n| setting | default | meaning |\n|---|---|---|\n' "$b"
  settings_of "$b" | while IFS=$'\t' read -r name default help; do
    printf '| `%s` | %s | %s |\n' "$name" "${default//|/\\|}" "${help//|/\\|}"
  done
done
