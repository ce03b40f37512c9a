#include "notifier/delivery.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/backoff.h"
#include "common/log.h"

namespace concert::notifier {
namespace {

constexpr int kMaxTriesAfterStop = 5;
constexpr absl::Duration kFirstRetry = absl::Milliseconds(100);

}  // namespace

metrics::Counter& StaleCount(metrics::Registry& registry, const char* stage) {
  return registry.GetCounter(
      "notifier_stale_total",
      "Work dropped because its record was taken over by another worker (this one paused past "
      "its consumer session, or lost the partition): stage send (nothing sent) or outcome (a "
      "late result, not recorded: it never overwrites the new owner's)",
      {{"stage", stage}});
}

Deliveries::Deliveries(DeliveryStore& store, DeliveryOptions options, metrics::Registry& registry)
    : store_(store),
      options_(options),
      stale_outcomes_(StaleCount(registry, "outcome")),
      postgres_up_(registry.GetGauge("notifier_postgres_up",
                                     "1 while Postgres takes the delivery records")) {}

void Deliveries::SetPostgresOk(bool ok) {
  postgres_ok_.store(ok);
  postgres_up_.Set(ok ? 1 : 0);
}

void Deliveries::Probe() { SetPostgresOk(store_.Ping().ok()); }

absl::StatusOr<Delivery> Deliveries::Begin(const std::string& event_id, int incoming_attempt,
                                           const absl::Notification& cancelled,
                                           const absl::Notification& stop) {
  while (true) {
    absl::StatusOr<BeginResult> begin =
        store_.Begin(event_id, options_.uncertain_policy, incoming_attempt);
    if (!begin.ok()) {
      SetPostgresOk(false);
      log::Error("recording delivery intent failed; will retry",
                 {{"event_id", event_id}, {"error", std::string(begin.status().message())}});
      return begin.status();
    }
    SetPostgresOk(true);
    if (begin->action != BeginResult::Action::kBusy) {
      return Delivery(*this, event_id, *begin, cancelled, stop);
    }
    log::Info("found in flight under another send's lease: waiting for it to run out",
              {{"event_id", event_id},
               {"send", begin->attempts},
               {"wait_ms", absl::ToInt64Milliseconds(begin->busy_for)}});
    if (cancelled.WaitForNotificationWithTimeout(begin->busy_for)) {
      return absl::CancelledError("partition revoked while waiting for another send's lease");
    }
  }
}

Delivery::Delivery(Deliveries& deliveries, std::string event_id, BeginResult begin,
                   const absl::Notification& cancelled, const absl::Notification& stop)
    : deliveries_(&deliveries),
      event_id_(std::move(event_id)),
      begin_(begin),
      cancelled_(&cancelled),
      stop_(&stop),
      confirmed_(Clock::now()) {}

bool Delivery::StillOurs() {
  Clock::time_point now = Clock::now();
  if (!cancelled_->HasBeenNotified() &&
      now - confirmed_ <
          absl::ToChronoNanoseconds(deliveries_->options_.ownership_recheck_after)) {
    return true;
  }
  Backoff backoff(kFirstRetry, deliveries_->options_.max_backoff);
  while (true) {
    absl::StatusOr<bool> sending = deliveries_->store_.StillSending(event_id_, send());
    if (sending.ok()) {
      deliveries_->SetPostgresOk(true);
      confirmed_ = now;
      lost_ = !*sending;
      return *sending;
    }
    deliveries_->SetPostgresOk(false);
    log::Error("checking that a send is still ours failed; retrying",
               {{"event_id", event_id_}, {"error", std::string(sending.status().message())}});
    // Unconfirmed at stop: not sent, and the row stays SENDING for the next Begin to count.
    if (!backoff.Wait(*stop_)) return false;
  }
}

Recorded Delivery::Record(const std::function<absl::StatusOr<bool>()>& change, const char* what) {
  Backoff backoff(kFirstRetry, deliveries_->options_.max_backoff);
  for (int tries_after_stop = 0;;) {
    absl::StatusOr<bool> changed = change();
    if (changed.ok()) {
      deliveries_->SetPostgresOk(true);
      if (*changed) return Recorded::kYes;
      deliveries_->stale_outcomes_.Increment();
      log::Warn(absl::StrCat(what, ": skipped, the record was taken over by another worker"),
                {{"event_id", event_id_}});
      return Recorded::kStale;
    }
    deliveries_->SetPostgresOk(false);
    log::Error(absl::StrCat(what, " failed; retrying"),
               {{"event_id", event_id_}, {"error", std::string(changed.status().message())}});
    if (stop_->HasBeenNotified() && ++tries_after_stop >= kMaxTriesAfterStop) {
      return Recorded::kGaveUp;
    }
    // Not cut short by the stop: an outcome known is worth a few more tries.
    absl::SleepFor(backoff.Next());
  }
}

Recorded Delivery::MarkSent() {
  return Record([&] { return deliveries_->store_.MarkSent(event_id_, send()); },
                "recording delivery as sent");
}

Recorded Delivery::MarkSentUncertain(const std::string& error) {
  return Record([&] { return deliveries_->store_.MarkSentUncertain(event_id_, send(), error); },
                "recording an uncertain delivery as sent");
}

Recorded Delivery::MarkFailed(const std::string& error, bool possibly_delivered) {
  return Record(
      [&] {
        return deliveries_->store_.MarkFailed(event_id_, send(), error, possibly_delivered);
      },
      "recording delivery as failed");
}

Recorded Delivery::MarkDeadLettered(int attempt) {
  return Record([&] { return deliveries_->store_.MarkDeadLettered(event_id_, send(), attempt); },
                "recording the dead letter");
}

Recorded Delivery::MarkUndeliverable(const std::string& reason) {
  return Record([&] { return deliveries_->store_.MarkUndeliverable(event_id_, send(), reason); },
                "recording delivery as undeliverable");
}

Recorded Delivery::Release(const std::string& reason) {
  return Record([&] { return deliveries_->store_.Release(event_id_, send(), reason); },
                "releasing an unsent delivery");
}

}  // namespace concert::notifier
