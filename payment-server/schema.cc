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
  };
  return *migrations;
}

absl::Status MigrateSchema(const std::string& database_url) {
  return Migrate(database_url, kSchema, Migrations());
}

}  // namespace concert::payment
