#!/usr/bin/env bash
# scripts/demo.sh — `make demo`: the README's grpcurl session against a running `make up`, as a
# client app plays it: a token for a demo user, the concerts with their schedules, the seats of
# a schedule, a FREE one held and paid, the account's balance and the user's payments, and the
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

# rpc METHOD JSON: the call with the current $TOKEN; its answer on stdout, errors on stderr.
rpc() {
  "$GRPCURL" -plaintext -H "authorization: Bearer $TOKEN" -d "$2" "$SERVER" "$1"
}
# show METHOD JSON: print the grpcurl command as a reader would type it.
show() {
  printf '\n$ grpcurl -plaintext -H "authorization: Bearer $TOKEN" -d '"'%s'"' %s %s\n' "$2" "$SERVER" "$1"
}
# field NAME: the first value of JSON field NAME (proto or camelCase spelling) in stdin.
field() {
  local camel
  camel=$(sed -E 's/_(.)/\U\1/g' <<<"$1")
  sed -n -E "s/.*\"($1|$camel)\": \"?([^\",]*)\"?,?\$/\\2/p" | head -n 1
}

# The demo users each afford 20 seats: play the one with the most money left.
user=0 best=-1
for candidate in 1 2 3; do
  TOKEN=$(build/bin/payment-server mint-token --user-id="$candidate")
  balance=$(rpc concert.v1.AccountService/GetAccount '{}' | field balance_won)
  if ((${balance:-0} > best)); then user=$candidate best=${balance:-0}; fi
done
TOKEN=$(build/bin/payment-server mint-token --user-id="$user")
echo "\$ TOKEN=\$(build/bin/payment-server mint-token --user-id=$user)"

# What is on: concerts with their schedules; the first schedule with a free seat is picked.
show concert.v1.ConcertService/ListConcerts '{}'
concerts=$(rpc concert.v1.ConcertService/ListConcerts '{}')
echo "$concerts"
# freeSeatCount is left out of the JSON when it is 0, so its presence means "some are free".
schedule_id=$(awk -F'"' '/"schedule_?[iI]d"/ {id = $4} /"free_?[sS]eat_?[cC]ount"/ {print id; exit}' \
  <<<"$concerts")
[[ -n "$schedule_id" ]] ||
  die "every demo seat is taken; 'make down && rm -rf .local/postgres' starts afresh"

# The seats of that schedule (one page of up to 500 holds all of the demo's 50): a summary,
# then the first FREE seat as the server answered it.
request="{\"schedule_id\": $schedule_id, \"page_size\": 500}"
show concert.v1.ConcertService/ListSeats "$request"
seats=$(rpc concert.v1.ConcertService/ListSeats "$request")
seat=$(awk '/^    \{/ {s = ""} /^    /{s = s $0 "\n"} /SEAT_AVAILABILITY_FREE/ {f = 1} /^    \}/ && f {sub(/,\n$/, "\n", s); printf "%s", s; exit}' \
  <<<"$seats")
for state in FREE HELD SOLD; do
  printf '%s %s  ' "$(grep -c "SEAT_AVAILABILITY_$state" <<<"$seats" || true)" "$state"
done
echo "(of $(grep -c -E '"seat_?[iI]d"' <<<"$seats") seats); the first FREE one:"
echo "$seat"
seat_id=$(field seat_id <<<"$seat")
[[ -n "$seat_id" ]] || die "no FREE seat in schedule $schedule_id after all: run 'make demo' again"

request="{\"seat_id\": $seat_id}"
show concert.v1.ReservationService/ReserveSeat "$request"
reservation=$(rpc concert.v1.ReservationService/ReserveSeat "$request")
echo "$reservation"
reservation_id=$(field reservation_id <<<"$reservation")

request="{\"reservation_id\": $reservation_id}"
show concert.v1.PaymentService/PayConcert "$request"
payment=$(rpc concert.v1.PaymentService/PayConcert "$request") ||
  die "payment refused (see above); 'make down && rm -rf .local/postgres' starts afresh"
echo "$payment"

show concert.v1.AccountService/GetAccount '{}'
rpc concert.v1.AccountService/GetAccount '{}'

show concert.v1.PaymentService/ListPayments '{"page_size": 3}'
rpc concert.v1.PaymentService/ListPayments '{"page_size": 3}'

printf '\n$ grep "#%s" %s    # the notification (log sender; Telegram when TELEGRAM_BOT_TOKEN is set)\n' \
  "$reservation_id" "$NOTIFICATIONS"
if wait_until 30 grep -q "Reservation: #$reservation_id\\\\n" "$NOTIFICATIONS" 2>/dev/null; then
  grep "Reservation: #$reservation_id\\\\n" "$NOTIFICATIONS"
else
  die "no notification for reservation $reservation_id within 30 s: see .local/run/*.log"
fi
