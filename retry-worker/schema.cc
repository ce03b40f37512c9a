#include "retry-worker/schema.h"

namespace concert::retry {

const std::vector<Migration>& Migrations() {
  static const std::vector<Migration>* migrations = new std::vector<Migration>{
      {1, "failed_messages", R"sql(
CREATE TABLE retry.failed_messages (
  id                     bigserial PRIMARY KEY,
  -- The event's id; a poison record without one gets "poison:<topic>:<partition>:<offset>".
  event_id               text NOT NULL UNIQUE,
  original_topic         text NOT NULL,
  original_partition     int NOT NULL DEFAULT -1,
  original_offset        bigint NOT NULL DEFAULT -1,
  original_timestamp_ms  bigint NOT NULL DEFAULT -1,
  consumer_group         text NOT NULL DEFAULT '',
  key                    bytea NOT NULL,
  payload                bytea NOT NULL,
  -- The original record's headers (event_id, event_type, content-type, traceparent, ...),
  -- never the dead-letter ones: exactly what is re-published.
  headers                jsonb NOT NULL DEFAULT '{}',
  error_class            text NOT NULL DEFAULT '',
  error_message          text NOT NULL DEFAULT '',
  -- The highest delivery attempt known to have failed, counted from 1 across the whole loop.
  attempts               int NOT NULL CHECK (attempts >= 1),
  -- Set by an operator's Retry: the attempt number at which the row parks again (instead of
  -- RETRY_MAX_ATTEMPTS), so that attempts stays the true count.
  attempt_limit          int,
  status                 text NOT NULL
                         CHECK (status IN ('PENDING', 'PROCESSED', 'FAILED', 'DISCARDED')),
  next_attempt_at        timestamptz NOT NULL DEFAULT now(),
  last_retry_at          timestamptz,
  operator_note          text NOT NULL DEFAULT '',
  created_at             timestamptz NOT NULL DEFAULT now(),
  updated_at             timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX failed_messages_due ON retry.failed_messages (next_attempt_at)
  WHERE status = 'PENDING';
CREATE INDEX failed_messages_by_status ON retry.failed_messages (status, id DESC);

CREATE TABLE retry.operator_actions (
  id                bigserial PRIMARY KEY,
  message_id        bigint NOT NULL REFERENCES retry.failed_messages (id),
  action            text NOT NULL CHECK (action IN ('RETRY', 'DISCARD')),
  reason            text NOT NULL DEFAULT '',
  status_before     text NOT NULL,
  attempts_before   int NOT NULL,
  at                timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX operator_actions_by_message ON retry.operator_actions (message_id, id);
)sql"},
      // Header names and values are bytes: jsonb (text) could hold neither NUL nor invalid
      // UTF-8, nor repeated names, nor their order. headers stays as a readable copy.
      {2, "headers_raw", R"sql(
ALTER TABLE retry.failed_messages ADD COLUMN headers_raw bytea;
-- Per header: a 4-byte big-endian length and the name, the same for the value (store.cc).
UPDATE retry.failed_messages SET headers_raw = coalesce((
  SELECT string_agg(int4send(octet_length(convert_to(k, 'UTF8'))) || convert_to(k, 'UTF8') ||
                    int4send(octet_length(convert_to(v, 'UTF8'))) || convert_to(v, 'UTF8'),
                    ''::bytea ORDER BY k)
    FROM jsonb_each_text(headers) AS h(k, v)), ''::bytea);
ALTER TABLE retry.failed_messages ALTER COLUMN headers_raw SET NOT NULL,
                                  ALTER COLUMN headers_raw SET DEFAULT ''::bytea;
COMMENT ON COLUMN retry.failed_messages.headers IS
  'readable copy of headers_raw: names and values escaped (\xNN) where not UTF-8, last value wins';
)sql"},
      // FAILED must mean "not delivered": a message that may already be in the chat parks as
      // UNCERTAIN instead (store.h).
      {3, "uncertain", R"sql(
ALTER TABLE retry.failed_messages
  ADD COLUMN possibly_delivered boolean NOT NULL DEFAULT false,
  DROP CONSTRAINT failed_messages_status_check,
  ADD CONSTRAINT failed_messages_status_check
    CHECK (status IN ('PENDING', 'PROCESSED', 'FAILED', 'UNCERTAIN', 'DISCARDED'));
COMMENT ON COLUMN retry.failed_messages.possibly_delivered IS
  'some DLQ record said a copy may already have been delivered; parks as UNCERTAIN, not FAILED';
COMMENT ON COLUMN retry.failed_messages.attempts IS
  'sends the notifier began for the event (notification.deliveries.attempts), '
  'as the last DLQ record said';
)sql"},
  };
  return *migrations;
}

absl::Status MigrateSchema(const std::string& database_url) {
  return Migrate(database_url, kSchema, Migrations());
}

}  // namespace concert::retry
