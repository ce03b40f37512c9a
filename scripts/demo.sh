#!/usr/bin/env bash
# scripts/demo.sh — `make demo`: the README's grpcurl session against a running `make up`, as a
# client app plays it: a token for a demo user, the concerts with their schedules, the seats of
# a schedule, a FREE one held, the Telegram link (LinkTelegram; against `make up`'s local fake
# Telegram the demo plays the user pressing Start, with a real bot it waits for you to), the
# payment, the account's balance and the user's payments, and the message in the payer's chat.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$ROOT"

GRPCURL=.local/bin/grpcurl
SERVER=127.0.0.1:50051
FAKE_TELEGRAM=http://127.0.0.1:8081
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

# fake_messages CHAT: the texts the local fake Telegram accepted for CHAT, one JSON string a line.
fake_messages() {
  curl -fsS "$FAKE_TELEGRAM/control/messages?chat_id=$1" | python3 -c '
import json, sys
for m in json.load(sys.stdin):
    print(json.dumps(m["text"], ensure_ascii=False))'
}

# The user links Telegram: the app shows the link, the user opens it and presses Start, and the
# bot's answer appears in that chat. From then on this user's messages go to that chat.
show concert.v1.AccountService/LinkTelegram '{}'
link=$(rpc concert.v1.AccountService/LinkTelegram '{}') ||
  die "LinkTelegram refused (see above): payment-server needs TELEGRAM_BOT_USERNAME"
echo "$link"
url=$(field link <<<"$link")
chat=$((700000 + user))
if curl -fsS "$FAKE_TELEGRAM/botX/getMe" >/dev/null 2>&1; then
  # Pressing Start sends "/start <code>" from the user's chat to the bot.
  printf '
$ curl -d %s %s/control/updates    # the user presses Start (local fake Telegram)
' \
    "'{\"chat_id\": $chat, \"text\": \"/start ${url#*start=}\"}'" "$FAKE_TELEGRAM"
  seen=$(fake_messages "$chat" | wc -l)
  curl -fsS -H 'Content-Type: application/json' \
    -d "{\"chat_id\": $chat, \"text\": \"/start ${url#*start=}\"}" "$FAKE_TELEGRAM/control/updates"
  echo
  answered() { (($(fake_messages "$chat" | wc -l) > seen)); }
  wait_until 30 answered ||
    die "the bot did not answer in chat $chat within 30 s: see .local/run/notifier.log"
  echo "chat $chat, the bot's answer:"
  fake_messages "$chat" | tail -n 1
else
  echo
  echo "Open $url in Telegram and press Start (waiting up to 120 s)..."
  linked() { rpc concert.v1.AccountService/GetAccount '{}' | grep -q -E '"telegram_?[lL]inked": true'; }
  wait_until 120 linked || die "the chat was not linked within 120 s; run 'make demo' again"
fi

request="{\"reservation_id\": $reservation_id}"
show concert.v1.PaymentService/PayConcert "$request"
payment=$(rpc concert.v1.PaymentService/PayConcert "$request") ||
  die "payment refused (see above); 'make down && rm -rf .local/postgres' starts afresh"
echo "$payment"

show concert.v1.AccountService/GetAccount '{}'
rpc concert.v1.AccountService/GetAccount '{}'

show concert.v1.PaymentService/ListPayments '{"page_size": 3}'
rpc concert.v1.PaymentService/ListPayments '{"page_size": 3}'

if curl -fsS "$FAKE_TELEGRAM/botX/getMe" >/dev/null 2>&1; then
  printf '\n$ curl %s/control/messages?chat_id=%s    # the payer'"'"'s chat at the local fake Telegram\n' \
    "$FAKE_TELEGRAM" "$chat"
  paid_message() { fake_messages "$chat" | grep -F "#$reservation_id\\n"; }
  if wait_until 30 paid_message >/dev/null; then
    paid_message
  else
    die "no message for reservation $reservation_id within 30 s: see .local/run/*.log"
  fi
else
  echo
  echo "The payment's message is in your Telegram chat now."
fi
