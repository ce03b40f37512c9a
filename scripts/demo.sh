#!/usr/bin/env bash
# scripts/demo.sh — `make demo`: the README's grpcurl session against a running `make up`:
# a token for a demo user, a seat held, the reservation paid, the payment read back, and the
# notification that arrived (the log sender's .local/notifications.jsonl).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$ROOT"

GRPCURL=.local/bin/grpcurl
SERVER=127.0.0.1:50051
NOTIFICATIONS=.local/notifications.jsonl
[[ -f .local/dev.env ]] || die "the system is not up: run 'make up' first"
"$GRPCURL" -plaintext -connect-timeout 2 "$SERVER" grpc.health.v1.Health/Check >/dev/null 2>&1 ||
  die "payment-server does not answer on $SERVER: run 'make up' first"
set -a
. .local/dev.env
set +a

# call METHOD JSON: print the grpcurl command as a reader would type it, then run it.
call() {
  printf '\n$ grpcurl -plaintext -H "authorization: Bearer $TOKEN" -d '"'%s'"' %s %s\n' "$2" "$SERVER" "$1" >&2
  "$GRPCURL" -plaintext -H "authorization: Bearer $TOKEN" -d "$2" "$SERVER" "$1"
}

# The demo users each afford 20 seats; take turns so that the demo can run many times.
seats=$(sed -n 's/^seats \([0-9]*\)\.\.\([0-9]*\) .*/\1 \2/p' .local/run/demo-data.txt)
read -r first_seat last_seat <<<"${seats:-1 50}"
for seat in $(seq "$first_seat" "$last_seat"); do
  user=$(((seat - first_seat) % 3 + 1))
  TOKEN=$(build/bin/payment-server mint-token --user-id="$user")
  if reservation=$("$GRPCURL" -plaintext -H "authorization: Bearer $TOKEN" \
      -d "{\"seat_id\": $seat}" "$SERVER" concert.v1.ReservationService/ReserveSeat 2>/dev/null); then
    break
  fi
  reservation=""
done
[[ -n "$reservation" ]] || die "every demo seat is taken; 'make down && rm -rf .local/postgres' starts afresh"

echo "\$ TOKEN=\$(build/bin/payment-server mint-token --user-id=$user)"
echo "\$ grpcurl -plaintext -H \"authorization: Bearer \$TOKEN\" -d '{\"seat_id\": $seat}' $SERVER concert.v1.ReservationService/ReserveSeat"
echo "$reservation"
reservation_id=$(sed -n -E 's/.*"reservation_?[iI]d": "([0-9]+)".*/\1/p' <<<"$reservation")

payment=$(call concert.v1.PaymentService/PayConcert "{\"reservation_id\": $reservation_id}")
echo "$payment"
payment_id=$(sed -n -E 's/.*"payment_?[iI]d": "([0-9]+)".*/\1/p' <<<"$payment")

call concert.v1.PaymentService/GetPayment "{\"payment_id\": $payment_id}"

printf '\n$ grep "#%s" %s    # the notification (log sender; Telegram when TELEGRAM_BOT_TOKEN is set)\n' \
  "$reservation_id" "$NOTIFICATIONS"
if wait_until 30 grep -q "Reservation: #$reservation_id\\\\n" "$NOTIFICATIONS" 2>/dev/null; then
  grep "Reservation: #$reservation_id\\\\n" "$NOTIFICATIONS"
else
  die "no notification for reservation $reservation_id within 30 s: see .local/run/*.log"
fi
