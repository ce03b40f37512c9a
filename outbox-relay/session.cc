#include "outbox-relay/session.h"

#include <algorithm>
#include <string>
#include <utility>
#include <variant>

#include <nlohmann/json.hpp>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "common/log.h"
#include "common/postgres.h"
#include "common/status.h"

namespace concert::relay {
namespace {

constexpr char kPaymentCompleted[] = "PaymentCompleted";
constexpr char kKafkaPayload[] = "concert.relay/kafka";
// Longer than any wait inside the streaming loop (a poll is 100 ms), far shorter than Postgres'
// wal_sender_timeout (60 s by default).
constexpr absl::Duration kPauseCheckAfter = absl::Seconds(2);

}  // namespace

absl::Status KafkaFailure(const absl::Status& cause) {
  absl::Status s = cause;
  s.SetPayload(kKafkaPayload, absl::Cord("1"));
  return s;
}

bool IsKafkaFailure(const absl::Status& status) {
  return status.GetPayload(kKafkaPayload).has_value();
}

Session::Session(const RelayOptions& options, RelayMetrics& metrics, kafka::Producer& producer,
                 std::function<void(bool)> set_health)
    : o_(options), m_(metrics), producer_(producer), set_health_(std::move(set_health)) {}

absl::Status Session::Prepare() {
  try {
    catalog_ = std::make_unique<pqxx::connection>(WithConnectDefaults(o_.database_url));
  } catch (const std::exception& e) {
    return Annotate(StatusFromException(e), "preparing publication and slot");
  }
  ASSIGN_OR_RETURN(bool synchronous, SyncStandby::Configured(*catalog_));
  if (synchronous) sync_standby_.emplace(*catalog_);
  ASSIGN_OR_RETURN(stream_, SlotStream::Open(o_, *catalog_));
  confirmed_ = stream_->start();
  return absl::OkStatus();
}

absl::Status Session::Run(const absl::Notification& stop) {
  RETURN_IF_ERROR(Prepare());

  m_.active.Set(1);
  m_.postgres_up.Set(1);
  if (confirmed_ != 0) m_.confirmed_lsn.Set(static_cast<double>(confirmed_));
  log::Info("streaming", {{"slot", o_.slot}, {"from", FormatLsn(confirmed_)}});
  set_health_(true);

  int since_periodic = 0;
  last_loop_ = absl::Now();
  while (!stop.HasBeenNotified()) {
    // A gap this long means the process was paused (SIGSTOP, a frozen VM) or starved: Postgres
    // may have ended our walsender and given the slot to a standby meanwhile. What is buffered
    // on the connection must then not be produced.
    absl::Time now = absl::Now();
    if (now - last_loop_ > kPauseCheckAfter) {
      RETURN_IF_ERROR(stream_->EnsureStillHolding(*catalog_, m_.stale_dropped));
    }
    last_loop_ = now;
    ASSIGN_OR_RETURN(std::optional<absl::string_view> data, stream_->Next());
    if (data.has_value()) {
      RETURN_IF_ERROR(Handle(*data));
      // A long burst must not starve status updates and failure checks.
      if (++since_periodic >= 1000) {
        since_periodic = 0;
        RETURN_IF_ERROR(Periodic(false));
      }
      continue;
    }
    RETURN_IF_ERROR(Periodic(false));
    RETURN_IF_ERROR(stream_->AwaitData(absl::Milliseconds(100)));
  }
  return Drain();
}

// Stop requested: wait (bounded) for Kafka's answers to what was sent, confirm what they
// cover, and leave. Whatever is not confirmed is sent again by the next relay.
absl::Status Session::Drain() {
  set_health_(false);
  absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (tracker_->pending_events() > 0 && tracker_->failure().ok() && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  absl::Status s = Periodic(/*force_status=*/true);
  log::Info("stream stopped", {{"confirmed", FormatLsn(confirmed_)}});
  return s;
}

absl::Status Session::Handle(absl::string_view copy_data) {
  ASSIGN_OR_RETURN(CopyMessage message, ParseCopyMessage(copy_data));
  if (auto* k = std::get_if<Keepalive>(&message)) {
    server_end_ = std::max(server_end_, k->wal_end);
    // Nothing received is waiting for Kafka or for deletion, so every transaction that
    // committed before the server's current send position has been relayed: had one touched
    // the outbox, its Begin/Insert/Commit would have arrived before this keepalive, which the
    // server sends in stream order. Confirming that position lets the slot release WAL written
    // by other tables while the outbox is quiet. A transaction still in progress is not
    // skipped: it commits after this position and is decoded from its own start, which the
    // server keeps (restart_lsn) independently of what we confirm.
    if (tracker_->Idle() && to_delete_.empty() && acked_lsn_ <= confirmed_ &&
        k->wal_end > confirmed_ && confirmed_ != 0) {
      confirmed_ = k->wal_end;
    }
    if (k->reply_requested) RETURN_IF_ERROR(SendStatus(false));
    return absl::OkStatus();
  }
  const XLogData& x = std::get<XLogData>(message);
  received_ = std::max(received_, x.start);
  server_end_ = std::max(server_end_, x.wal_end);
  ASSIGN_OR_RETURN(Message msg, DecodeMessage(x.data));
  if (auto* b = std::get_if<Begin>(&msg)) {
    tx_ = tracker_->Begin();
    tx_commit_time_ = b->commit_time;
  } else if (auto* c = std::get_if<Commit>(&msg)) {
    if (!tx_) return absl::InternalError("Commit without Begin in the replication stream");
    if (sync_standby_.has_value()) {
      RETURN_IF_ERROR(sync_standby_->WaitUntilFlushed(c->end_lsn));
      for (const Insert& held : held_inserts_) RETURN_IF_ERROR(HandleInsert(held));
      held_inserts_.clear();
    }
    tracker_->End(*tx_, c->end_lsn, FromPgTime(tx_commit_time_));
    received_ = std::max(received_, c->end_lsn);
    tx_.reset();
  } else if (auto* r = std::get_if<Relation>(&msg)) {
    return HandleRelation(*r);
  } else if (auto* ins = std::get_if<Insert>(&msg)) {
    if (!sync_standby_.has_value()) return HandleInsert(*ins);
    held_inserts_.push_back(std::move(*ins));
  }
  return absl::OkStatus();
}

absl::Status Session::HandleRelation(const Relation& r) {
  if (r.schema != kOutboxSchema || r.name != kOutboxTable) return absl::OkStatus();
  OutboxColumns cols;
  for (int i = 0; i < static_cast<int>(r.columns.size()); ++i) {
    const std::string& name = r.columns[i].name;
    if (name == "id") cols.id = i;
    if (name == "event_id") cols.event_id = i;
    if (name == "aggregate_id") cols.aggregate_id = i;
    if (name == "event_type") cols.event_type = i;
    if (name == "payload") cols.payload = i;
    if (name == "headers") cols.headers = i;
  }
  if (cols.id < 0 || cols.event_id < 0 || cols.aggregate_id < 0 || cols.event_type < 0 ||
      cols.payload < 0) {
    return absl::FailedPreconditionError(
        "payment.outbox_events lacks a column the relay needs (id, event_id, aggregate_id, "
        "event_type, payload)");
  }
  relations_[r.id] = cols;
  return absl::OkStatus();
}

absl::Status Session::HandleInsert(const Insert& insert) {
  auto rel = relations_.find(insert.relation_id);
  if (rel == relations_.end()) return absl::OkStatus();  // not the outbox (publication changed)
  if (!tx_) return absl::InternalError("Insert outside a transaction in the replication stream");
  const OutboxColumns& c = rel->second;
  auto text = [&](int index) -> std::string {
    if (index < 0 || index >= static_cast<int>(insert.values.size())) return "";
    return insert.values[index].value_or("");
  };
  int64_t row_id = 0;
  std::string event_id = text(c.event_id);
  std::string event_type = text(c.event_type);
  auto set_aside = [&](const char* reason_class, std::string reason, int64_t bytes) {
    return SetAsideEvent({.outbox_id = row_id, .event_id = event_id, .event_type = event_type,
                          .reason_class = reason_class, .reason = std::move(reason),
                          .record_bytes = bytes});
  };
  // The id column is bigint: only a changed table could make this fail, and then no row can
  // be deleted or re-queued by id either.
  if (!absl::SimpleAtoi(text(c.id), &row_id)) {
    return absl::FailedPreconditionError(
        absl::StrCat("payment.outbox_events.id is not an integer: '", text(c.id), "'"));
  }
  absl::StatusOr<std::string> payload = DecodeByteaHex(text(c.payload));
  if (!payload.ok()) {
    return set_aside("undecodable", absl::StrCat("payload: ", payload.status().message()),
                     static_cast<int64_t>(text(c.payload).size()));
  }

  kafka::Record record;
  if (event_type == kPaymentCompleted) {
    record.topic = o_.payment_completed_topic;
  } else if (!o_.unknown_event_topic.empty()) {
    record.topic = o_.unknown_event_topic;
  } else {
    return set_aside("no_topic",
                     absl::StrCat("no topic for event type '", event_type,
                                  "' (set UNKNOWN_EVENT_TOPIC, then requeue)"),
                     static_cast<int64_t>(payload->size()));
  }
  record.key = text(c.aggregate_id);
  record.value = *std::move(payload);
  record.headers = {
      {kafka::kEventIdHeader, event_id},
      {kafka::kEventTypeHeader, event_type},
      {kafka::kContentTypeHeader,
       absl::StrCat("application/x-protobuf; messageType=concert.events.v1.", event_type)}};
  if (c.headers >= 0) {
    nlohmann::json headers = nlohmann::json::parse(text(c.headers), nullptr, false);
    if (headers.is_object()) {
      for (const auto& [name, value] : headers.items()) {
        if (!value.is_string() || name == kafka::kEventIdHeader ||
            name == kafka::kEventTypeHeader || name == kafka::kContentTypeHeader) {
          continue;
        }
        record.headers.emplace_back(name, value.get<std::string>());
      }
    }
  }

  int64_t record_bytes = static_cast<int64_t>(record.key.size() + record.value.size());
  for (const auto& [name, value] : record.headers) {
    record_bytes += static_cast<int64_t>(name.size() + value.size());
  }
  absl::Time commit_time = FromPgTime(tx_commit_time_);
  m_.event_age.Observe(absl::ToDoubleSeconds(absl::Now() - commit_time));
  uint64_t tx = *tx_;
  tracker_->AddEvent(tx, row_id);
  std::shared_ptr<CommitTracker> tracker = tracker_;
  RelayMetrics* m = &m_;
  absl::Status produced = producer_.Produce(
      std::move(record), [tracker, tx, row_id, commit_time, m](const absl::Status& status) {
        if (status.ok()) {
          m->events.Increment();
          m->commit_to_ack.Observe(absl::ToDoubleSeconds(absl::Now() - commit_time));
        } else {
          m->delivery_errors.Increment();
          // The first failure of a session is enough to explain the restart.
          if (tracker->failure().ok()) {
            log::Warn("kafka delivery failed; the stream will be replayed",
                      {{"error", std::string(status.message())}});
          }
        }
        tracker->Acknowledge(tx, row_id, status);
      });
  if (!produced.ok()) {
    if (kafka::IsRecordRejected(produced)) {
      // Never queued: the transaction confirms without it, and its row stays.
      tracker_->Withdraw(tx);
      return set_aside("too_large", std::string(produced.message()), record_bytes);
    }
    tracker_->Acknowledge(tx, row_id, produced);
    return KafkaFailure(produced);
  }
  return absl::OkStatus();
}

absl::Status Session::SetAsideEvent(const SetAside& entry) {
  RETURN_IF_ERROR(RecordSetAside(*catalog_, entry));
  m_.set_aside(entry.reason_class).Increment();
  log::Error("event set aside, not relayed; its row stays in the outbox",
             {{"reason", entry.reason}, {"reason_class", entry.reason_class},
              {"event_id", entry.event_id}, {"event_type", entry.event_type},
              {"row_id", entry.outbox_id}, {"record_bytes", entry.record_bytes}});
  return absl::OkStatus();
}

absl::Status Session::Periodic(bool force_status) {
  if (absl::Status failed = tracker_->failure(); !failed.ok()) return KafkaFailure(failed);
  absl::Time now = absl::Now();
  bool stalled = now - tracker_->oldest_pending_since() > o_.kafka_stall_threshold;
  m_.kafka_up.Set(stalled ? 0 : 1);
  set_health_(!stalled);
  m_.pending.Set(static_cast<double>(tracker_->pending_events()));
  if (force_status || now >= next_status_) {
    next_status_ = now + o_.status_interval;
    RETURN_IF_ERROR(CleanupAndConfirm());
    RETURN_IF_ERROR(SendStatus(false));
  }
  if (tracker_->Idle() && to_delete_.empty()) streamed_through_ = now;
  if (now >= next_slot_stats_) {
    next_slot_stats_ = now + o_.slot_stats_interval;
    m_.MeasureSlot(*catalog_, o_.slot);
    MeasureStranded();
  }
  return absl::OkStatus();
}

// Deletes the rows of acknowledged transactions, then confirms them. In that order, so that a
// crash in between leaves nothing behind: the unconfirmed transactions are streamed again and
// their rows (already gone or not) deleted again. Only ids Kafka acknowledged are deleted.
absl::Status Session::CleanupAndConfirm() {
  CommitTracker::Confirmable c = tracker_->TakeConfirmable();
  if (c.transactions > 0) {
    acked_lsn_ = std::max(acked_lsn_, c.lsn);
    confirmable_committed_at_ = std::max(confirmable_committed_at_, c.committed_at);
    to_delete_.insert(to_delete_.end(), c.row_ids.begin(), c.row_ids.end());
  }
  while (!to_delete_.empty()) {
    size_t n = std::min(to_delete_.size(), static_cast<size_t>(o_.cleanup_batch));
    std::string ids =
        absl::StrCat("{", absl::StrJoin(to_delete_.begin(), to_delete_.begin() + n, ","), "}");
    try {
      pqxx::nontransaction tx(*catalog_);
      pqxx::result r = tx.exec_params(
          absl::StrCat("DELETE FROM ", kOutboxSchema, ".", kOutboxTable,
                       " WHERE id = ANY($1::bigint[])"),
          ids);
      m_.deleted.Increment(static_cast<double>(r.affected_rows()));
    } catch (const std::exception& e) {
      return Annotate(StatusFromException(e), "deleting relayed outbox rows");
    }
    to_delete_.erase(to_delete_.begin(), to_delete_.begin() + n);
  }
  if (acked_lsn_ > confirmed_) confirmed_ = acked_lsn_;
  streamed_through_ = std::max(streamed_through_, confirmable_committed_at_);
  return absl::OkStatus();
}

absl::Status Session::SendStatus(bool reply_requested) {
  if (confirmed_ != 0) {
    m_.confirmed_lsn.Set(static_cast<double>(confirmed_));
    m_.server_lsn.Set(static_cast<double>(server_end_));
  }
  // Before the first confirmation we know (a brand-new slot) report 0: "no position", which
  // leaves the slot as it is rather than moving it.
  return stream_->SendStatus(received_, confirmed_, reply_requested);
}

void Session::MeasureStranded() {
  if (streamed_through_ == absl::InfinitePast()) return;  // nothing streamed yet
  absl::StatusOr<Stranded> stranded =
      FindStranded(*catalog_, streamed_through_, o_.stranded_after);
  if (!stranded.ok()) {
    log::Warn("looking for stranded outbox rows failed",
              {{"error", std::string(stranded.status().message())}});
    return;
  }
  bool changed = m_.stranded_rows.Value() != static_cast<double>(stranded->rows);
  m_.stranded_rows.Set(static_cast<double>(stranded->rows));
  m_.oldest_stranded.Set(stranded->oldest_age_seconds);
  if (stranded->rows > 0 && changed) {
    log::Warn("outbox rows left behind by the stream (see relay.set_aside_events; "
              "`outbox-relay requeue` streams them again)",
              {{"rows", stranded->rows}, {"oldest_ids", stranded->first_ids},
               {"oldest_age_seconds", stranded->oldest_age_seconds}});
  }
}

}  // namespace concert::relay
