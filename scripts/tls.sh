#!/usr/bin/env bash
# scripts/tls.sh — a throwaway certificate authority and certificates, made with openssl, for
# running Kafka and Postgres with TLS on loopback (scripts/kafka.sh, scripts/postgres.sh and
# the tests). Never for production: keys are unencrypted and live beside the certificates.
#
#   scripts/tls.sh ca DIR NAME            DIR/NAME.pem + DIR/NAME.key, a CA (kept if present)
#   scripts/tls.sh cert DIR CA NAME       DIR/NAME.pem + DIR/NAME.key signed by DIR/CA, for
#                                         127.0.0.1 and localhost, usable by servers and clients
#                                         (kept if present and signed by that CA)
#
# Keys are PKCS#8 (what Kafka's PEM key stores and libpq expect), readable by the owner only.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"

make_ca() {
  local dir=$1 name=$2
  [[ -f "$dir/$name.pem" && -f "$dir/$name.key" ]] && return
  mkdir -p "$dir"
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=$name" \
    -keyout "$dir/$name.key" -out "$dir/$name.pem" 2>/dev/null
  chmod 600 "$dir/$name.key"
}

make_cert() {
  local dir=$1 ca=$2 name=$3
  if [[ -f "$dir/$name.pem" && -f "$dir/$name.key" ]] &&
    openssl verify -CAfile "$dir/$ca.pem" "$dir/$name.pem" >/dev/null 2>&1; then
    return
  fi
  local ext
  ext=$(mktemp)
  printf '%s\n' "subjectAltName=IP:127.0.0.1,DNS:localhost" \
    "extendedKeyUsage=serverAuth,clientAuth" "keyUsage=digitalSignature,keyEncipherment" >"$ext"
  openssl req -newkey rsa:2048 -nodes -subj "/CN=$name" \
    -keyout "$dir/$name.key" -out "$dir/$name.csr" 2>/dev/null
  openssl x509 -req -in "$dir/$name.csr" -CA "$dir/$ca.pem" -CAkey "$dir/$ca.key" \
    -CAcreateserial -days 3650 -extfile "$ext" -out "$dir/$name.pem" 2>/dev/null
  rm -f "$dir/$name.csr" "$ext"
  chmod 600 "$dir/$name.key"
}

case "${1:-}" in
  ca) [[ $# -eq 3 ]] || die "usage: $0 ca DIR NAME"; make_ca "$2" "$3" ;;
  cert) [[ $# -eq 4 ]] || die "usage: $0 cert DIR CA NAME"; make_cert "$2" "$3" "$4" ;;
  *) die "usage: $0 ca DIR NAME | cert DIR CA NAME" ;;
esac
