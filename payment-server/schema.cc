#include "payment-server/schema.h"

namespace concert::payment {

const std::vector<Migration>& Migrations() {
  static const std::vector<Migration>* migrations = new std::vector<Migration>{
      {1, "domain", R"sql(
CREATE TABLE payment.users (
  id           bigserial PRIMARY KEY,
  name         text NOT NULL,
  mail         text NOT NULL,
  balance_won  bigint NOT NULL CHECK (balance_won >= 0),
  created_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE payment.concerts (
  id     bigserial PRIMARY KEY,
  title  text NOT NULL
);

CREATE TABLE payment.schedules (
  id          bigserial PRIMARY KEY,
  concert_id  bigint NOT NULL REFERENCES payment.concerts (id),
  starts_at   timestamptz NOT NULL
);

CREATE TABLE payment.seats (
  id           bigserial PRIMARY KEY,
  schedule_id  bigint NOT NULL REFERENCES payment.schedules (id),
  seat_number  int NOT NULL,
  price_won    bigint NOT NULL CHECK (price_won > 0),
  UNIQUE (schedule_id, seat_number)
);

CREATE TABLE payment.reservations (
  id          bigserial PRIMARY KEY,
  user_id     bigint NOT NULL REFERENCES payment.users (id),
  seat_id     bigint NOT NULL REFERENCES payment.seats (id),
  amount_won  bigint NOT NULL CHECK (amount_won > 0),
  status      text NOT NULL CHECK (status IN ('HELD', 'PAID', 'EXPIRED')),
  expires_at  timestamptz NOT NULL,
  created_at  timestamptz NOT NULL DEFAULT now(),
  updated_at  timestamptz NOT NULL DEFAULT now()
);
-- A seat has at most one live (held or sold) reservation.
CREATE UNIQUE INDEX reservations_one_live_per_seat
  ON payment.reservations (seat_id) WHERE status IN ('HELD', 'PAID');
CREATE INDEX reservations_by_user ON payment.reservations (user_id);

CREATE TABLE payment.payments (
  id              bigserial PRIMARY KEY,
  -- A reservation is paid at most once, whatever the application does.
  reservation_id  bigint NOT NULL UNIQUE REFERENCES payment.reservations (id),
  user_id         bigint NOT NULL REFERENCES payment.users (id),
  amount_won      bigint NOT NULL CHECK (amount_won > 0),
  event_id        uuid NOT NULL,
  paid_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX payments_by_user ON payment.payments (user_id);
)sql"},
      {2, "outbox", R"sql(
-- The transactional outbox: written in the payment's transaction, streamed to Kafka by
-- outbox-relay from the WAL (logical replication, inserts only), deleted by the relay once
-- Kafka acknowledged the event.
CREATE TABLE payment.outbox_events (
  id              bigserial PRIMARY KEY,
  event_id        uuid NOT NULL UNIQUE,
  aggregate_type  text NOT NULL,
  aggregate_id    text NOT NULL,          -- the Kafka record key (reservation id)
  event_type      text NOT NULL,          -- maps to a topic: PaymentCompleted
  payload         bytea NOT NULL,         -- protobuf, copied unchanged into the record value
  headers         jsonb NOT NULL DEFAULT '{}'::jsonb,  -- e.g. {"traceparent": "00-..."}
  created_at      timestamptz NOT NULL DEFAULT now()
);
)sql"},
      {3, "listing", R"sql(
-- What a client sees of each seat. A seat is SOLD with a PAID reservation, HELD while a hold
-- runs, FREE otherwise: a HELD reservation whose hold expired no longer counts, as in
-- ReserveSeat (which takes such a seat, marking the hold EXPIRED) and PayConcert (which
-- refuses to pay it). At most one HELD or PAID reservation per seat (the unique index above),
-- so each seat is one row.
CREATE VIEW payment.seat_availability AS
SELECT s.id AS seat_id, s.schedule_id, s.seat_number, s.price_won,
       CASE WHEN r.status = 'PAID' THEN 'SOLD'
            WHEN r.status = 'HELD' AND r.expires_at > now() THEN 'HELD'
            ELSE 'FREE' END AS availability
FROM payment.seats s
LEFT JOIN payment.reservations r ON r.seat_id = s.id AND r.status IN ('HELD', 'PAID');

-- ListConcerts reads a page's schedules; ListPayments pages one user's payments by id.
CREATE INDEX schedules_by_concert ON payment.schedules (concert_id, starts_at);
DROP INDEX payment.payments_by_user;
CREATE INDEX payments_by_user ON payment.payments (user_id, id);
)sql"},
      {4, "telegram", R"sql(
-- Telegram deep-link codes (LinkTelegram). Only a hash of each code is kept: whoever reads
-- this table cannot link a chat to someone else's account. Expired rows stay a day so that a
-- late Start is told "expired" rather than "unknown"; LinkTelegram removes older ones.
CREATE TABLE payment.telegram_link_codes (
  code_hash   bytea PRIMARY KEY,          -- sha256 of the code
  user_id     bigint NOT NULL REFERENCES payment.users (id),
  expires_at  timestamptz NOT NULL,
  used_at     timestamptz,
  created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX telegram_link_codes_by_expiry ON payment.telegram_link_codes (expires_at);

-- A user's chat for notifications. A chat belongs to one user (UNIQUE): linking it again moves it.
CREATE TABLE payment.telegram_links (
  user_id    bigint PRIMARY KEY REFERENCES payment.users (id),
  chat_id    bigint NOT NULL UNIQUE,
  linked_at  timestamptz NOT NULL DEFAULT now()
);
)sql"},
      {5, "pay in one statement", R"sql(
-- PayConcert in one round trip: payment.pay_concert does what the payment used to do in seven
-- statements (lock the reservation, debit, mark it PAID, insert the payment and its outbox
-- event), so the row locks are held for one statement's time instead of six network waits.
--
-- The outbox payload is the protobuf concert.events.v1.PaymentCompleted, encoded here because
-- its payment id and paid_at exist only once the payment row is inserted. It is written exactly
-- as protobuf's own serializer writes it (tests compare the bytes): fields in number order,
-- scalars equal to their default left out, messages always written.
--
-- Cost matters here, on every payment. The pb_* helpers but pb_varint are single-expression SQL
-- functions that Postgres inlines into the caller's plan, which holds only while each argument
-- is a variable or a cheap expression (otherwise the function runs as a query planned again on
-- every call, ten times slower): payment.payment_completed computes its inputs into variables
-- first. pb_varint stays a PL/pgSQL loop: an inlined form is so large an expression that setting
-- it up, once per transaction, costs more than the calls it saves.

-- An unsigned base-128 varint. A negative bigint is its two's complement as an unsigned 64-bit
-- number, ten bytes: as protobuf writes an int64.
CREATE FUNCTION payment.pb_varint(v bigint) RETURNS bytea
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
  encoded bytea := '';
BEGIN
  WHILE v < 0 OR v > 127 LOOP
    encoded := encoded || set_byte('\x00'::bytea, 0, (v & 127)::int | 128);
    -- >> copies the sign bit; clearing the 7 bits it shifted in makes the shift logical.
    v := (v >> 7) & 144115188075855871;  -- 2^57 - 1
  END LOOP;
  RETURN encoded || set_byte('\x00'::bytea, 0, v::int);
END $$;

-- A field's tag, one byte for the field numbers 1 to 15 used here.
CREATE FUNCTION payment.pb_tag(field int, wire_type int) RETURNS bytea
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT set_byte('\x00'::bytea, 0, field << 3 | wire_type)
$$;

-- A varint field (wire type 0); zero is left out.
CREATE FUNCTION payment.pb_int64(field int, v bigint) RETURNS bytea
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT CASE WHEN v = 0 THEN ''::bytea ELSE payment.pb_tag(field, 0) || payment.pb_varint(v) END
$$;

-- A length-delimited field (wire type 2): a message, always written.
CREATE FUNCTION payment.pb_message(field int, v bytea) RETURNS bytea
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT payment.pb_tag(field, 2) || payment.pb_varint(length(v)) || v
$$;

-- A string field, already UTF-8; empty is left out.
CREATE FUNCTION payment.pb_string(field int, utf8 bytea) RETURNS bytea
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT CASE WHEN length(utf8) = 0 THEN ''::bytea ELSE payment.pb_message(field, utf8) END
$$;

-- A google.protobuf.Timestamp's fields.
CREATE FUNCTION payment.pb_timestamp(seconds bigint, nanos bigint) RETURNS bytea
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT payment.pb_int64(1, seconds) || payment.pb_int64(2, nanos)
$$;

CREATE FUNCTION payment.payment_completed(
    event_id uuid, payment_id bigint, reservation_id bigint, user_id bigint, user_mail text,
    concert_title text, concert_start timestamptz, paid_at timestamptz, amount_won bigint,
    seat_id bigint, telegram_chat_id bigint) RETURNS bytea
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
  event_utf8 bytea := convert_to(event_id::text, 'UTF8');
  mail_utf8 bytea := convert_to(user_mail, 'UTF8');
  title_utf8 bytea := convert_to(concert_title, 'UTF8');
  start_micros bigint := (extract(epoch FROM concert_start) * 1000000)::bigint;
  paid_micros bigint := (extract(epoch FROM paid_at) * 1000000)::bigint;
  -- Timestamp's nanos are never negative: seconds round down.
  start_fraction bigint := (start_micros % 1000000 + 1000000) % 1000000;
  paid_fraction bigint := (paid_micros % 1000000 + 1000000) % 1000000;
  start_seconds bigint := (start_micros - start_fraction) / 1000000;
  paid_seconds bigint := (paid_micros - paid_fraction) / 1000000;
  start_nanos bigint := start_fraction * 1000;
  paid_nanos bigint := paid_fraction * 1000;
  start_message bytea := payment.pb_timestamp(start_seconds, start_nanos);
  paid_message bytea := payment.pb_timestamp(paid_seconds, paid_nanos);
BEGIN
  RETURN payment.pb_string(1, event_utf8) ||
         payment.pb_int64(2, payment_id) ||
         payment.pb_int64(3, reservation_id) ||
         payment.pb_int64(4, user_id) ||
         payment.pb_string(5, mail_utf8) ||
         payment.pb_string(6, title_utf8) ||
         payment.pb_message(7, start_message) ||
         payment.pb_message(8, paid_message) ||
         payment.pb_int64(9, amount_won) ||
         payment.pb_int64(10, seat_id) ||
         payment.pb_int64(11, telegram_chat_id);
END $$;

-- Outcomes: PAID (the payment columns are the new payment), REPLAYED (the reservation was paid
-- before: its payment, nothing written), NOT_FOUND, NOT_YOURS, EXPIRED (not HELD or the hold
-- ran out), INSUFFICIENT_BALANCE (amount_won is the price), PAID_WITHOUT_PAYMENT (a broken
-- invariant). Every outcome but PAID writes nothing. Each statement takes its own snapshot
-- under read committed, as the separate statements did: a call that queued on the reservation's
-- lock behind a payment of it finds that payment.
CREATE FUNCTION payment.pay_concert(
    caller bigint, reservation bigint, event_headers jsonb,
    OUT payment_id bigint, OUT reservation_id bigint, OUT user_id bigint, OUT amount_won bigint,
    OUT paid_at_micros bigint, OUT event_id text, OUT balance_won bigint, OUT outcome text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
  held record;
  paid record;
BEGIN
  -- FOR UPDATE OF r: only the reservation is locked; concurrent payments of it queue here.
  SELECT r.user_id, r.seat_id, r.amount_won, r.status, r.expires_at <= now() AS expired,
         u.mail, c.title, sch.starts_at, coalesce(tl.chat_id, 0) AS chat_id
    INTO held
    FROM payment.reservations r
    JOIN payment.users u ON u.id = r.user_id
    LEFT JOIN payment.telegram_links tl ON tl.user_id = r.user_id
    JOIN payment.seats s ON s.id = r.seat_id
    JOIN payment.schedules sch ON sch.id = s.schedule_id
    JOIN payment.concerts c ON c.id = sch.concert_id
   WHERE r.id = reservation
     FOR UPDATE OF r;
  IF NOT FOUND THEN
    outcome := 'NOT_FOUND';
  ELSIF held.user_id <> caller THEN
    outcome := 'NOT_YOURS';
  ELSIF held.status = 'PAID' THEN
    SELECT p.id, p.reservation_id, p.user_id, p.amount_won,
           (extract(epoch FROM p.paid_at) * 1000000)::bigint, p.event_id::text, u.balance_won
      INTO payment_id, reservation_id, user_id, amount_won, paid_at_micros, event_id, balance_won
      FROM payment.payments p JOIN payment.users u ON u.id = p.user_id
     WHERE p.reservation_id = reservation;
    outcome := CASE WHEN FOUND THEN 'REPLAYED' ELSE 'PAID_WITHOUT_PAYMENT' END;
  ELSIF held.status <> 'HELD' OR held.expired THEN
    outcome := 'EXPIRED';
  ELSE
    amount_won := held.amount_won;
    -- The balance check and the debit are one statement: concurrent payments of one user queue
    -- on the user's row and each re-checks the balance it finds, so it never goes below zero.
    UPDATE payment.users SET balance_won = balance_won - held.amount_won
     WHERE id = caller AND balance_won >= held.amount_won
    RETURNING balance_won INTO balance_won;
    IF NOT FOUND THEN
      outcome := 'INSUFFICIENT_BALANCE';
      RETURN;
    END IF;
    UPDATE payment.reservations SET status = 'PAID', updated_at = now() WHERE id = reservation;
    INSERT INTO payment.payments (reservation_id, user_id, amount_won, event_id)
    VALUES (reservation, caller, held.amount_won, gen_random_uuid())
    RETURNING id, event_id, paid_at INTO paid;
    INSERT INTO payment.outbox_events
      (event_id, aggregate_type, aggregate_id, event_type, payload, headers)
    VALUES (paid.event_id, 'reservation', reservation::text, 'PaymentCompleted',
            payment.payment_completed(paid.event_id, paid.id, reservation, caller, held.mail,
                                      held.title, held.starts_at, paid.paid_at,
                                      held.amount_won, held.seat_id, held.chat_id),
            event_headers);
    payment_id := paid.id;
    reservation_id := reservation;
    user_id := caller;
    paid_at_micros := (extract(epoch FROM paid.paid_at) * 1000000)::bigint;
    event_id := paid.event_id::text;
    outcome := 'PAID';
  END IF;
END $$;
)sql"},
      {6, "schedules without a date", R"sql(
-- A concert postponed with no date starts at 'infinity' (or '-infinity'), which no Timestamp
-- holds: its events leave concert_start out (start_message is NULL then).
CREATE OR REPLACE FUNCTION payment.payment_completed(
    event_id uuid, payment_id bigint, reservation_id bigint, user_id bigint, user_mail text,
    concert_title text, concert_start timestamptz, paid_at timestamptz, amount_won bigint,
    seat_id bigint, telegram_chat_id bigint) RETURNS bytea
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
  event_utf8 bytea := convert_to(event_id::text, 'UTF8');
  mail_utf8 bytea := convert_to(user_mail, 'UTF8');
  title_utf8 bytea := convert_to(concert_title, 'UTF8');
  start_micros bigint := CASE WHEN isfinite(concert_start)
                              THEN (extract(epoch FROM concert_start) * 1000000)::bigint END;
  paid_micros bigint := (extract(epoch FROM paid_at) * 1000000)::bigint;
  -- Timestamp's nanos are never negative: seconds round down.
  start_fraction bigint := (start_micros % 1000000 + 1000000) % 1000000;
  paid_fraction bigint := (paid_micros % 1000000 + 1000000) % 1000000;
  start_seconds bigint := (start_micros - start_fraction) / 1000000;
  paid_seconds bigint := (paid_micros - paid_fraction) / 1000000;
  start_nanos bigint := start_fraction * 1000;
  paid_nanos bigint := paid_fraction * 1000;
  start_message bytea := payment.pb_timestamp(start_seconds, start_nanos);
  paid_message bytea := payment.pb_timestamp(paid_seconds, paid_nanos);
BEGIN
  RETURN payment.pb_string(1, event_utf8) ||
         payment.pb_int64(2, payment_id) ||
         payment.pb_int64(3, reservation_id) ||
         payment.pb_int64(4, user_id) ||
         payment.pb_string(5, mail_utf8) ||
         payment.pb_string(6, title_utf8) ||
         coalesce(payment.pb_message(7, start_message), ''::bytea) ||
         payment.pb_message(8, paid_message) ||
         payment.pb_int64(9, amount_won) ||
         payment.pb_int64(10, seat_id) ||
         payment.pb_int64(11, telegram_chat_id);
END $$;
)sql"},
      {7, "reserve in one statement", R"sql(
-- ReserveSeat in one round trip, as payment.pay_concert is for PayConcert: at a concert's
-- opening everyone races for the same seats, and four network waits per hold (user, seat,
-- expiry, insert) kept a connection each for four times as long.
--
-- Outcomes: HELD (the new reservation), USER_NOT_FOUND, SEAT_NOT_FOUND, TAKEN (the seat has a
-- live hold or is sold; nothing inserted). The partial unique index decides a race: a loser's
-- insert waits for the winner's commit, then does nothing and answers TAKEN. Expiring a stale
-- hold stays done even when the seat is then TAKEN: that hold was over either way.
CREATE FUNCTION payment.reserve_seat(
    caller bigint, seat bigint, hold_ms bigint,
    OUT reservation_id bigint, OUT expires_at_micros bigint, OUT price_won bigint,
    OUT concert_title text, OUT concert_start_micros bigint, OUT outcome text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
  price bigint;
BEGIN
  PERFORM 1 FROM payment.users u WHERE u.id = caller;
  IF NOT FOUND THEN
    outcome := 'USER_NOT_FOUND';
    RETURN;
  END IF;
  SELECT s.price_won, c.title,
         CASE WHEN isfinite(sch.starts_at)
              THEN (extract(epoch FROM sch.starts_at) * 1000000)::bigint END
    INTO price, concert_title, concert_start_micros
    FROM payment.seats s
    JOIN payment.schedules sch ON sch.id = s.schedule_id
    JOIN payment.concerts c ON c.id = sch.concert_id
   WHERE s.id = seat;
  IF NOT FOUND THEN
    outcome := 'SEAT_NOT_FOUND';
    RETURN;
  END IF;
  price_won := price;
  UPDATE payment.reservations r SET status = 'EXPIRED', updated_at = now()
   WHERE r.seat_id = seat AND r.status = 'HELD' AND r.expires_at <= now();
  INSERT INTO payment.reservations AS r (user_id, seat_id, amount_won, status, expires_at)
  VALUES (caller, seat, price, 'HELD', now() + hold_ms * interval '1 millisecond')
  ON CONFLICT (seat_id) WHERE status IN ('HELD', 'PAID') DO NOTHING
  RETURNING r.id, (extract(epoch FROM r.expires_at) * 1000000)::bigint
       INTO reservation_id, expires_at_micros;
  outcome := CASE WHEN FOUND THEN 'HELD' ELSE 'TAKEN' END;
END $$;
)sql"},
  };
  return *migrations;
}

absl::Status MigrateSchema(const std::string& database_url) {
  return Migrate(database_url, kSchema, Migrations());
}

}  // namespace concert::payment
