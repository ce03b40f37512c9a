#include "notifier/notifier.h"

#include <algorithm>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/kafka/headers.h"
#include "common/log.h"
#include "common/status.h"
#include "concert/events/v1/payment_events.pb.h"
#include "notifier/message.h"

namespace concert::notifier {
namespace {

constexpr int kMaxTriesAfterStop = 5;
constexpr char kEventType[] = "PaymentCompleted";
constexpr char kContentType[] = "application/x-protobuf";

// Sleeps `d` unless stopping; returns false when stop was requested.
bool Backoff(absl::Duration d, const absl::Notification& stop) {
  return !stop.WaitForNotificationWithTimeout(d);
}

// Why the record's headers say it is not a PaymentCompleted in protobuf, or "" when they do (or
// say nothing: records written before the relay set them).
std::string ForeignHeaders(const RdKafka::Message& message) {
  if (auto type = kafka::HeaderValue(message, kafka::kEventTypeHeader);
      type.has_value() && *type != kEventType) {
    return absl::StrCat("event type \"", *type, "\" is not ", kEventType);
  }
  if (auto content = kafka::HeaderValue(message, kafka::kContentTypeHeader);
      content.has_value() && !absl::StartsWith(*content, kContentType)) {
    return absl::StrCat("content type \"", *content, "\" is not ", kContentType);
  }
  return "";
}

metrics::Counter& PacingWaitSeconds(metrics::Registry& registry, const char* scope) {
  return registry.GetCounter("notifier_pacing_wait_seconds_total",
                             "Time sends waited to stay under Telegram's limits, by scope: bot, "
                             "chat (a private chat), group, flood (a 429's retry_after)",
                             {{"scope", scope}});
}

metrics::Counter& DeadLettered(metrics::Registry& registry, const std::string& reason) {
  return registry.GetCounter("notifier_dlq_total", "Records sent to the DLQ, by error class",
                             {{"reason", reason}});
}

metrics::Counter& UndeliverableCount(metrics::Registry& registry, const std::string& reason) {
  return registry.GetCounter("notifier_undeliverable_total",
                             "Payments no chat will take, by reason: no_link "
                             "(UNLINKED_POLICY=skip), chat_gone (the payer's chat blocked the bot "
                             "or is gone)",
                             {{"reason", reason}});
}

metrics::Counter& StaleCount(metrics::Registry& registry, const char* stage) {
  return registry.GetCounter(
      "notifier_stale_total",
      "Work dropped because its record was taken over by another worker (this one paused past "
      "its consumer session, or lost the partition): stage send (nothing sent) or outcome (a "
      "late result, not recorded: it never overwrites the new owner's)",
      {{"stage", stage}});
}

metrics::Counter& RateLimited(metrics::Registry& registry, const char* chat) {
  return registry.GetCounter("notifier_rate_limited_total",
                             "429 answers from Telegram, by the chat's kind: private or group",
                             {{"chat", chat}});
}

}  // namespace

bool ParseUnlinkedPolicy(const std::string& name, UnlinkedPolicy* policy) {
  if (name == "operator") {
    *policy = UnlinkedPolicy::kOperator;
    return true;
  }
  if (name == "skip") {
    *policy = UnlinkedPolicy::kSkip;
    return true;
  }
  return false;
}

// Eager rebalancing: on revoke, finish or drop what the workers have of those partitions,
// commit what is finished, then let go.
class Notifier::Rebalancer : public RdKafka::RebalanceCb {
 public:
  explicit Rebalancer(Notifier& notifier) : notifier_(notifier) {}

  void rebalance_cb(RdKafka::KafkaConsumer* consumer, RdKafka::ErrorCode err,
                    std::vector<RdKafka::TopicPartition*>& partitions) override {
    std::vector<int32_t> ids;
    for (const RdKafka::TopicPartition* p : partitions) ids.push_back(p->partition());
    if (err == RdKafka::ERR__ASSIGN_PARTITIONS) {
      for (int32_t id : ids) {
        PartitionState& state = notifier_.partitions_[id];
        state = PartitionState();
        state.assignment = std::make_shared<Assignment>();
        state.assignment->partition = id;
      }
      consumer->assign(partitions);
      notifier_.paused_ = false;
      notifier_.kafka_ok_ = true;
      log::Info("partitions assigned", {{"partitions", ids}});
    } else {
      notifier_.Revoke(ids);
      consumer->unassign();
      log::Info("partitions revoked", {{"partitions", ids}});
    }
    notifier_.ReportHealth();
  }

 private:
  Notifier& notifier_;
};

Notifier::Notifier(NotifierOptions options, DeliveryStore& store, Sender& sender, Pacer& pacer,
                   DeadLetters& dlq, metrics::Registry& registry, LinkClient* links)
    : options_(std::move(options)),
      store_(store),
      sender_(sender),
      dlq_(dlq),
      links_(links),
      pacer_(pacer),
      registry_(registry),
      sent_(registry.GetCounter("notifier_sent_total", "Notifications delivered by the sender")),
      duplicates_(registry.GetCounter("notifier_duplicates_total",
                                      "Redelivered events already sent, skipped")),
      uncertain_(registry.GetCounter(
          "notifier_uncertain_total",
          "Possible duplicates: sends whose outcome is unknown (timeout, connection broken after "
          "the request went out) and events found in flight (SENDING) on arrival after a crash")),
      send_seconds_(registry.GetHistogram("notifier_send_seconds",
                                          "Time of one sendMessage call, in-process retries "
                                          "included, pacing excluded",
                                          metrics::LatencyBuckets())),
      in_flight_gauge_(registry.GetGauge("notifier_in_flight",
                                         "Records a worker is on (pacing, Postgres, sending)")),
      pending_gauge_(registry.GetGauge(
          "notifier_pending", "Records read from Kafka and not finished (in flight included)")),
      lag_gauge_(registry.GetGauge(
          "notifier_consumer_lag",
          "Records of the assigned partitions not finished: high watermark - committable offset")),
      oldest_age_gauge_(registry.GetGauge(
          "notifier_oldest_pending_age_seconds",
          "Age (since the record's Kafka timestamp) of the oldest record read and not finished; "
          "0 when none")),
      postgres_up_gauge_(registry.GetGauge("notifier_postgres_up",
                                           "1 while Postgres takes the delivery records")),
      kafka_up_gauge_(registry.GetGauge("notifier_kafka_up",
                                        "1 while the Kafka cluster answers the consumer")),
      stale_sends_(StaleCount(registry, "send")),
      stale_outcomes_(StaleCount(registry, "outcome")),
      pacing_wait_bot_(PacingWaitSeconds(registry, "bot")),
      pacing_wait_chat_(PacingWaitSeconds(registry, "chat")),
      pacing_wait_group_(PacingWaitSeconds(registry, "group")),
      pacing_wait_flood_(PacingWaitSeconds(registry, "flood")),
      rate_limited_private_(RateLimited(registry, "private")),
      rate_limited_group_(RateLimited(registry, "group")) {
  // Alerts take increase() of these: each known series exists at 0 before its first event.
  for (const char* reason :
       {"poison", "telegram_4xx", "telegram_5xx", kChatGone, "timeout", "connection", "io"}) {
    DeadLettered(registry, reason);
  }
  for (const char* reason : {"no_link", "chat_gone"}) UndeliverableCount(registry, reason);
}

Notifier::~Notifier() = default;

// --- workers ---------------------------------------------------------------------------------

void Notifier::SetPostgresOk(bool ok) { postgres_ok_.store(ok); }

Notifier::Recorded Notifier::Record(const std::function<absl::StatusOr<bool>()>& change,
                                    const std::string& what, const std::string& event_id) {
  absl::Duration backoff = absl::Milliseconds(100);
  for (int tries_after_stop = 0;;) {
    absl::StatusOr<bool> changed = change();
    if (changed.ok()) {
      SetPostgresOk(true);
      if (*changed) return Recorded::kYes;
      stale_outcomes_.Increment();
      log::Warn(absl::StrCat(what, ": skipped, the record was taken over by another worker"),
                {{"event_id", event_id}});
      return Recorded::kStale;
    }
    SetPostgresOk(false);
    log::Error(absl::StrCat(what, " failed; retrying"),
               {{"event_id", event_id}, {"error", std::string(changed.status().message())}});
    if (stop_->HasBeenNotified() && ++tries_after_stop >= kMaxTriesAfterStop) {
      return Recorded::kGaveUp;
    }
    absl::SleepFor(backoff);
    backoff = std::min(backoff * 2, options_.max_backoff);
  }
}

bool Notifier::StillOurs(const Job& job, Claim& claim) {
  Claim::Clock::time_point now = Claim::Clock::now();
  if (!job.assignment->cancelled.HasBeenNotified() &&
      now - claim.confirmed < absl::ToChronoNanoseconds(options_.ownership_recheck_after)) {
    return true;
  }
  absl::Duration backoff = absl::Milliseconds(100);
  while (true) {
    absl::StatusOr<bool> sending = store_.StillSending(claim.event_id, claim.send);
    if (sending.ok()) {
      SetPostgresOk(true);
      claim.confirmed = now;
      claim.lost = !*sending;
      return *sending;
    }
    SetPostgresOk(false);
    log::Error("checking that a send is still ours failed; retrying",
               {{"event_id", claim.event_id}, {"error", std::string(sending.status().message())}});
    // Unconfirmed at stop: not sent, and the row stays SENDING for the next Begin to count.
    if (!Backoff(backoff, *stop_)) return false;
    backoff = std::min(backoff * 2, options_.max_backoff);
  }
}

Notifier::Outcome Notifier::ToDlq(const RdKafka::Message& message, DeadLetter letter) {
  absl::Status s = dlq_.Send(message, letter, *stop_);
  if (!s.ok()) return Outcome::kRetry;  // stopping: the offset stays uncommitted
  DeadLettered(registry_, letter.error_class).Increment();
  log::Warn("sent to DLQ", {{"event_id", letter.event_id},
                            {"error_class", letter.error_class},
                            {"error", letter.error},
                            {"attempt", letter.attempt},
                            {"possibly_delivered", letter.possibly_delivered},
                            {"partition", message.partition()},
                            {"offset", message.offset()}});
  return Outcome::kDone;
}

Notifier::Outcome Notifier::Undeliverable(const std::string& event_id, int send,
                                          const std::string& reason, const std::string& detail) {
  Recorded recorded = Record([&] { return store_.MarkUndeliverable(event_id, send, detail); },
                             "recording delivery as undeliverable", event_id);
  if (recorded != Recorded::kYes) return OutcomeOf(recorded);
  UndeliverableCount(registry_, reason).Increment();
  log::Warn("notification undeliverable",
            {{"event_id", event_id}, {"reason", reason}, {"detail", detail}});
  return Outcome::kDone;
}

Notifier::Outcome Notifier::Process(const Job& job) {
  const RdKafka::Message& message = *job.message;
  int attempt = 1;
  if (auto header = kafka::HeaderValue(message, kafka::dlq::kAttempt)) {
    if (!absl::SimpleAtoi(*header, &attempt) || attempt < 1) attempt = 1;
  }
  std::string header_event_id = kafka::HeaderValue(message, kafka::kEventIdHeader).value_or("");
  auto poison = [&](const std::string& event_id, std::string why) {
    return ToDlq(message, {.event_id = event_id,
                           .error_class = "poison",
                           .error = std::move(why),
                           .attempt = attempt});
  };

  if (std::string foreign = ForeignHeaders(message); !foreign.empty()) {
    return poison(header_event_id, foreign);
  }
  events::v1::PaymentCompleted event;
  if (!event.ParseFromArray(message.payload(), static_cast<int>(message.len()))) {
    return poison(header_event_id, "undecodable payload");
  }
  std::string event_id = event.event_id().empty() ? header_event_id : event.event_id();
  if (event_id.empty()) return poison(event_id, "missing event id");
  if (!IsUuid(event_id)) return poison(event_id, absl::StrCat("invalid event id: ", event_id));
  if (absl::Status complete = CheckPaymentCompleted(event); !complete.ok()) {
    return poison(event_id, std::string(complete.message()));
  }
  return Send(job, event, event_id, attempt);
}

bool Notifier::Pace(const std::string& chat_id, const Job& job) {
  Pacer::Waits waits;
  bool acquired = pacer_.Acquire(chat_id, job.assignment->cancelled, &waits);
  auto count = [](metrics::Counter& counter, absl::Duration waited) {
    if (waited > absl::ZeroDuration()) counter.Increment(absl::ToDoubleSeconds(waited));
  };
  count(pacing_wait_bot_, waits.bot);
  count(IsGroupChat(chat_id) ? pacing_wait_group_ : pacing_wait_chat_, waits.chat);
  count(pacing_wait_flood_, waits.flood);
  return acquired;
}

Notifier::Outcome Notifier::Send(const Job& job, const events::v1::PaymentCompleted& event,
                                 const std::string& event_id, int attempt) {
  const RdKafka::Message& message = *job.message;
  int64_t payer_chat = event.telegram_chat_id();
  bool unlinked_skip = payer_chat == 0 && options_.unlinked_policy == UnlinkedPolicy::kSkip;
  std::string chat_id = payer_chat != 0 ? std::to_string(payer_chat) : options_.operator_chat_id;

  // Paced before Begin: a wait holds no SENDING row that a crash would turn into a doubt.
  if (!unlinked_skip && !Pace(chat_id, job)) return Outcome::kRetry;

  absl::StatusOr<BeginResult> begin = store_.Begin(event_id, options_.uncertain_policy, attempt);
  if (!begin.ok()) {
    SetPostgresOk(false);
    log::Error("recording delivery intent failed; will retry",
               {{"event_id", event_id}, {"error", std::string(begin.status().message())}});
    return Outcome::kRetry;
  }
  SetPostgresOk(true);
  switch (begin->action) {
    case BeginResult::Action::kDuplicate:
      duplicates_.Increment();
      log::Info("duplicate skipped: already sent, undeliverable or dead-lettered",
                {{"event_id", event_id}, {"partition", message.partition()},
                 {"offset", message.offset()}, {"attempt", attempt}});
      return Outcome::kDone;
    case BeginResult::Action::kSkip:
      uncertain_.Increment();
      log::Warn("uncertain delivery: found in flight, not resent (UNCERTAIN_POLICY=skip)",
                {{"event_id", event_id}, {"policy", "skip"}});
      return Outcome::kDone;
    case BeginResult::Action::kSend:
      break;
  }
  if (begin->uncertain) {
    uncertain_.Increment();
    log::Warn("uncertain delivery: found in flight, sending again (UNCERTAIN_POLICY=resend)",
              {{"event_id", event_id}, {"policy", "resend"}, {"attempts", begin->attempts}});
  }
  int send = begin->attempts;
  if (unlinked_skip) {
    return Undeliverable(event_id, send, "no_link", "the payer has no linked Telegram chat");
  }

  Notification notification{event_id, std::to_string(event.reservation_id()), chat_id,
                            FormatPaymentMessage(event, options_.time_zone, options_.locale)};
  Claim claim{event_id, send, Claim::Clock::now()};
  notification.still_ours = [&] { return StillOurs(job, claim); };
  absl::Time start = absl::Now();
  SendResult result;
  while (true) {
    absl::Time request_start = absl::Now();
    result = sender_.Send(notification);
    send_seconds_.Observe(absl::ToDoubleSeconds(absl::Now() - request_start));
    if (result.kind != SendResult::Kind::kRateLimited) break;
    // Not a failed attempt: Telegram delivered nothing and asks the whole bot to wait.
    pacer_.Block(result.retry_after);
    (IsGroupChat(chat_id) ? rate_limited_group_ : rate_limited_private_).Increment();
    log::Warn("telegram rate limit: every send pauses",
              {{"event_id", event_id},
               {"retry_after_ms", absl::ToInt64Milliseconds(result.retry_after)}});
    if (!Pace(chat_id, job)) {
      // Nothing went out: undo this send's Begin so the next try is an ordinary retry.
      Record([&] { return store_.Release(event_id, send, "not sent: stopped during a 429 pause"); },
             "releasing an unsent delivery", event_id);
      return Outcome::kRetry;
    }
  }

  if (result.kind == SendResult::Kind::kNotOurs) {
    // Unconfirmed (stopping with Postgres away): the row stays SENDING, counted by the next Begin.
    if (!claim.lost) return Outcome::kRetry;
    stale_sends_.Increment();
    log::Warn("not sent: the record was taken over by another worker while this one waited",
              {{"event_id", event_id}, {"send", send}});
    return Outcome::kDone;
  }
  if (result.ok()) {
    sent_.Increment();
    Recorded recorded = Record([&] { return store_.MarkSent(event_id, send); },
                               "recording delivery as sent", event_id);
    // Unrecorded, the row stays SENDING: the next try will count it as uncertain.
    if (recorded != Recorded::kYes) return OutcomeOf(recorded);
    log::Info("notification sent", {{"event_id", event_id},
                                    {"reservation_id", notification.reservation_id},
                                    {"sender", sender_.name()},
                                    {"attempts", send},
                                    {"latency_ms", absl::ToInt64Milliseconds(absl::Now() - start)}});
    return Outcome::kDone;
  }
  if (payer_chat != 0 && result.error_class == kChatGone) {
    // That chat will refuse every message: drop its link so later payments take the
    // unlinked route. A failure here only means the next message to it unlinks again.
    if (links_ == nullptr) {
      log::Warn("cannot unlink a gone chat: no INTERNAL_TOKEN", {{"chat_id", payer_chat}});
    } else if (absl::Status s = links_->UnlinkChat(payer_chat, result.message); !s.ok()) {
      log::Warn("unlinking a gone chat failed",
                {{"chat_id", payer_chat}, {"error", std::string(s.message())}});
    }
    return Undeliverable(event_id, send, "chat_gone", result.message);
  }
  if (result.possibly_delivered) {
    // Every possible duplicate is counted where it arises, and its row marked, before anything
    // may send it again.
    uncertain_.Increment();
    log::Warn("uncertain delivery: the request went out and no answer said it was not delivered",
              {{"event_id", event_id},
               {"error", result.message},
               {"policy", options_.uncertain_policy == UncertainPolicy::kSkip ? "skip" : "resend"}});
    if (options_.uncertain_policy == UncertainPolicy::kSkip) {
      return OutcomeOf(
          Record([&] { return store_.MarkSentUncertain(event_id, send, result.message); },
                 "recording an uncertain delivery as sent", event_id));
    }
  }
  Recorded marked = Record(
      [&] { return store_.MarkFailed(event_id, send, result.message, result.possibly_delivered); },
      "recording delivery as failed", event_id);
  // A stale failure is another worker's record now: no dead letter, no resend.
  if (marked == Recorded::kStale) return Outcome::kDone;
  // Unmarked (stopping with Postgres down), a send that may have been delivered stays SENDING
  // for the next Begin to count; one known not delivered still goes to the DLQ, whose attempt
  // number tells the next Begin so.
  if (marked == Recorded::kGaveUp && result.possibly_delivered) return Outcome::kRetry;
  // The attempt is our own send count, so that the retry-worker's row and this delivery record
  // agree (a resend after a crash is a send); the incoming number is a floor for an event this
  // database has no record of.
  int dead_letter_attempt = std::max(attempt, send);
  Outcome outcome =
      ToDlq(message, {.event_id = event_id,
                      .error_class = result.error_class,
                      .error = result.message,
                      .attempt = dead_letter_attempt,
                      .possibly_delivered = begin->uncertain || result.possibly_delivered});
  // Best effort: unwritten, a redelivery of this record (a rebalance before its offset was
  // committed) sends once more instead of being skipped.
  if (outcome == Outcome::kDone && marked == Recorded::kYes) {
    Record([&] { return store_.MarkDeadLettered(event_id, send, dead_letter_attempt); },
           "recording the dead letter", event_id);
  }
  return outcome;
}

bool Notifier::Complete(const Job& job) {
  absl::Duration backoff = absl::Milliseconds(100);
  while (true) {
    if (Process(job) == Outcome::kDone) return true;
    if (job.assignment->cancelled.HasBeenNotified()) return false;
    // Postgres or the DLQ is down: this lane waits, the others go on as far as they can.
    if (!Backoff(backoff, job.assignment->cancelled)) return false;
    backoff = std::min(backoff * 2, options_.max_backoff);
  }
}

void Notifier::Work() {
  std::unique_lock lock(mu_);
  while (true) {
    work_cv_.wait(lock, [&] { return stopping_ || !ready_.empty(); });
    if (stopping_) return;
    std::string key = std::move(ready_.front());
    ready_.pop_front();
    Job& job = lanes_[key].front();  // stays put: only this worker pops this lane
    bool start = !job.assignment->cancelled.HasBeenNotified();
    if (start) {
      ++job.assignment->busy;
      ++in_flight_;
    }
    lock.unlock();
    bool done = start && Complete(job);
    lock.lock();
    if (start) {
      --job.assignment->busy;
      --in_flight_;
    }
    finished_.push_back({job.assignment, job.message->offset(), done});
    std::deque<Job>& lane = lanes_[key];
    lane.pop_front();
    --pending_;
    if (lane.empty()) {
      lanes_.erase(key);
    } else {
      ready_.push_back(key);
      work_cv_.notify_one();
    }
    idle_cv_.notify_all();
  }
}

// --- consumer thread -------------------------------------------------------------------------

void Notifier::Enqueue(std::unique_ptr<RdKafka::Message> message) {
  auto it = partitions_.find(message->partition());
  if (it == partitions_.end()) return;  // not ours (any more): it will be read again
  PartitionState& state = it->second;
  state.unfinished.emplace(message->offset(), message->timestamp().timestamp);
  state.next = std::max(state.next, message->offset() + 1);
  // One lane per reservation (the key); a record without a key is a lane of its own.
  std::string key = message->key() != nullptr
                        ? *message->key()
                        : absl::StrCat("\x01", message->partition(), ":", message->offset());
  std::lock_guard lock(mu_);
  std::deque<Job>& lane = lanes_[key];
  lane.push_back({std::move(message), state.assignment});
  ++pending_;
  if (lane.size() == 1) {
    ready_.push_back(key);
    work_cv_.notify_one();
  }
}

void Notifier::TakeFinished() {
  std::vector<Finished> finished;
  {
    std::lock_guard lock(mu_);
    finished.swap(finished_);
  }
  for (const Finished& f : finished) {
    if (!f.done) continue;
    auto it = partitions_.find(f.assignment->partition);
    if (it == partitions_.end() || it->second.assignment != f.assignment) continue;
    it->second.unfinished.erase(f.offset);
  }
}

void Notifier::FlowControl() {
  int pending;
  {
    std::lock_guard lock(mu_);
    pending = pending_;
  }
  // Resuming costs a fetch round trip (pausing drops what librdkafka had fetched ahead): resume
  // while a quarter is still queued, so the workers never run dry meanwhile.
  bool pause = pending >= options_.max_pending;
  bool resume = pending <= options_.max_pending * 3 / 4;
  if (paused_ ? !resume : !pause) return;
  std::vector<RdKafka::TopicPartition*> assigned;
  if (consumer_->assignment(assigned) != RdKafka::ERR_NO_ERROR) return;
  RdKafka::ErrorCode err = paused_ ? consumer_->resume(assigned) : consumer_->pause(assigned);
  RdKafka::TopicPartition::destroy(assigned);
  if (err != RdKafka::ERR_NO_ERROR) {
    log::Warn("pausing or resuming partitions failed", {{"error", RdKafka::err2str(err)}});
    return;
  }
  paused_ = !paused_;
  log::Debug(paused_ ? "partitions paused: the workers are behind" : "partitions resumed",
             {{"pending", pending}});
}

void Notifier::CommitDone(const std::vector<int32_t>* only_partitions, Commit how) {
  TakeFinished();
  std::vector<RdKafka::TopicPartition*> offsets;
  for (auto& [partition, state] : partitions_) {
    if (only_partitions != nullptr &&
        std::find(only_partitions->begin(), only_partitions->end(), partition) ==
            only_partitions->end()) {
      continue;
    }
    int64_t next = state.unfinished.empty() ? state.next : state.unfinished.begin()->first;
    if (next < 0 || state.committed >= next) continue;
    if (how == Commit::kInBackground) {
      if (state.commit_requested >= next) continue;
      state.commit_requested = next;
    }
    offsets.push_back(RdKafka::TopicPartition::create(options_.topic, partition, next));
  }
  last_commit_ = absl::Now();
  if (offsets.empty()) return;
  if (how == Commit::kInBackground) {
    // If it fails, the offsets go again with the next record finished, or with the revoke.
    RdKafka::ErrorCode err = consumer_->commitAsync(offsets);
    if (err != RdKafka::ERR_NO_ERROR) {
      log::Warn("offset commit failed", {{"error", RdKafka::err2str(err)}});
    }
    RdKafka::TopicPartition::destroy(offsets);
    return;
  }
  RdKafka::ErrorCode err = consumer_->commitSync(offsets);
  if (err == RdKafka::ERR_NO_ERROR) {
    for (const RdKafka::TopicPartition* p : offsets) {
      if (p->err() == RdKafka::ERR_NO_ERROR) partitions_[p->partition()].committed = p->offset();
    }
  } else {
    // Nothing is lost: the next commit carries the offsets; if the partition moves elsewhere
    // first, its records are redelivered and skipped as duplicates.
    log::Warn("offset commit failed", {{"error", RdKafka::err2str(err)}});
  }
  RdKafka::TopicPartition::destroy(offsets);
}

void Notifier::Cancel(Assignment& assignment) {
  // Only this thread notifies; at stop, the revoke that closing brings comes second.
  if (!assignment.cancelled.HasBeenNotified()) assignment.cancelled.Notify();
}

void Notifier::Revoke(const std::vector<int32_t>& partitions) {
  std::vector<std::shared_ptr<Assignment>> revoked;
  for (int32_t id : partitions) {
    auto it = partitions_.find(id);
    if (it == partitions_.end()) continue;
    Cancel(*it->second.assignment);  // unstarted records are dropped
    revoked.push_back(it->second.assignment);
  }
  // Records already being sent finish here, so the next owner does not find them in flight.
  {
    std::unique_lock lock(mu_);
    bool idle = idle_cv_.wait_for(lock, absl::ToChronoMilliseconds(options_.revoke_timeout), [&] {
      return std::all_of(revoked.begin(), revoked.end(),
                         [](const auto& a) { return a->busy == 0; });
    });
    if (!idle) log::Warn("revoking partitions with records still being sent");
  }
  CommitDone(&partitions, Commit::kWait);
  for (int32_t id : partitions) partitions_.erase(id);
}

void Notifier::ReportHealth() {
  bool postgres_ok = postgres_ok_.load();
  bool dlq_ok = dlq_.healthy();
  bool healthy = postgres_ok && kafka_ok_ && dlq_ok;
  if (reported_health_ == static_cast<int>(healthy)) return;
  reported_health_ = healthy;
  log::Info(healthy ? "healthy" : "unhealthy",
            {{"postgres_ok", postgres_ok}, {"kafka_ok", kafka_ok_}, {"dlq_ok", dlq_ok}});
  if (on_health_) on_health_(healthy);
}

void Notifier::CheckHealth(bool force) {
  absl::Time now = absl::Now();
  if (!force && now - last_health_check_ < options_.health_interval) return;
  last_health_check_ = now;
  SetPostgresOk(store_.Ping().ok());
  RdKafka::Metadata* metadata = nullptr;
  RdKafka::ErrorCode err = consumer_->metadata(/*all_topics=*/false, nullptr, &metadata, 2000);
  delete metadata;
  kafka_ok_ = err == RdKafka::ERR_NO_ERROR;
  ReportHealth();
}

void Notifier::UpdateGauges() {
  absl::Time now = absl::Now();
  if (now - last_gauges_ < absl::Milliseconds(500)) return;
  last_gauges_ = now;
  int64_t lag = 0;
  int64_t oldest_ms = 0;
  // librdkafka caches each partition's end from its fetches, and paused partitions are not
  // fetched: in a spike, exactly when lag matters, ask the broker (briefly, every few seconds).
  bool ask_broker = paused_ && now - last_watermark_query_ >= absl::Seconds(5);
  if (ask_broker) last_watermark_query_ = now;
  for (auto& [partition, state] : partitions_) {
    int64_t low = -1, high = -1;
    if (!paused_) {
      state.high_watermark = -1;
    } else if (ask_broker && consumer_->query_watermark_offsets(options_.topic, partition, &low,
                                                                &high, /*timeout_ms=*/500) ==
                                 RdKafka::ERR_NO_ERROR) {
      state.high_watermark = high;
    }
    if (consumer_->get_watermark_offsets(options_.topic, partition, &low, &high) !=
        RdKafka::ERR_NO_ERROR) {
      low = high = -1;
    }
    high = std::max(high, state.high_watermark);
    // Where this group stands: its oldest unfinished record, else the next to read, else its
    // committed offset, else (nothing read or committed yet) the start of the partition.
    int64_t from = !state.unfinished.empty() ? state.unfinished.begin()->first
                   : state.next >= 0         ? state.next
                   : state.committed >= 0    ? state.committed
                                             : std::max<int64_t>(low, 0);
    if (high >= 0) lag += std::max<int64_t>(0, high - from);
    for (const auto& [offset, timestamp_ms] : state.unfinished) {
      if (timestamp_ms > 0 && (oldest_ms == 0 || timestamp_ms < oldest_ms)) oldest_ms = timestamp_ms;
    }
  }
  lag_gauge_.Set(static_cast<double>(lag));
  postgres_up_gauge_.Set(postgres_ok_.load() ? 1 : 0);
  kafka_up_gauge_.Set(kafka_ok_ ? 1 : 0);
  oldest_age_gauge_.Set(oldest_ms == 0
                            ? 0.0
                            : std::max(0.0, absl::ToDoubleSeconds(now - absl::FromUnixMillis(oldest_ms))));
  std::lock_guard lock(mu_);
  in_flight_gauge_.Set(in_flight_);
  pending_gauge_.Set(pending_);
}

absl::Status Notifier::Run(const absl::Notification& stop, std::function<void(bool)> on_health) {
  stop_ = &stop;
  on_health_ = std::move(on_health);
  rebalancer_ = std::make_unique<Rebalancer>(*this);
  kafka::Config config =
      kafka::ConsumerConfig(options_.kafka, options_.group_id, options_.client_id);
  ASSIGN_OR_RETURN(std::unique_ptr<RdKafka::Conf> conf, kafka::MakeConf(config));
  std::string error;
  if (conf->set("rebalance_cb", rebalancer_.get(), error) != RdKafka::Conf::CONF_OK) {
    return absl::InternalError(error);
  }
  consumer_.reset(RdKafka::KafkaConsumer::create(conf.get(), error));
  if (!consumer_) return absl::InvalidArgumentError(absl::StrCat("kafka consumer: ", error));
  RETURN_IF_ERROR(kafka::StatusFromError(consumer_->subscribe({options_.topic}), "subscribing"));
  log::Info("consuming", {{"topic", options_.topic},
                          {"group", options_.group_id},
                          {"sender", sender_.name()},
                          {"concurrency", options_.concurrency}});
  for (int i = 0; i < options_.concurrency; ++i) workers_.emplace_back([this] { Work(); });
  CheckHealth(/*force=*/true);

  while (!stop.HasBeenNotified()) {
    std::unique_ptr<RdKafka::Message> message(consumer_->consume(50));
    switch (message->err()) {
      case RdKafka::ERR_NO_ERROR:
        if (!kafka_ok_) kafka_ok_ = true;
        Enqueue(std::move(message));
        break;
      case RdKafka::ERR__TIMED_OUT:
      case RdKafka::ERR__PARTITION_EOF:
        CheckHealth(/*force=*/false);
        break;
      case RdKafka::ERR__ALL_BROKERS_DOWN:
      case RdKafka::ERR__TRANSPORT:
        log::Warn("kafka unavailable", {{"error", message->errstr()}});
        kafka_ok_ = false;
        break;
      default:
        log::Warn("consumer error", {{"error", message->errstr()}});
        break;
    }
    ReportHealth();
    FlowControl();
    UpdateGauges();
    if (absl::Now() - last_commit_ >= options_.commit_interval) {
      CommitDone(nullptr, Commit::kInBackground);
    }
  }
  log::Info("stopping: finishing the records being sent, committing, leaving the group");
  for (auto& [partition, state] : partitions_) Cancel(*state.assignment);
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  work_cv_.notify_all();
  for (std::thread& worker : workers_) worker.join();
  workers_.clear();
  CommitDone(nullptr, Commit::kWait);
  {
    // Closing waits until every message librdkafka handed out is destroyed: drop the records no
    // worker started (the next owner reads them again from the committed offset).
    std::lock_guard lock(mu_);
    lanes_.clear();
    ready_.clear();
    pending_ = 0;
  }
  consumer_->close();  // revokes through rebalance_cb: nothing busy, commits again (no-op)
  consumer_.reset();
  return absl::OkStatus();
}

}  // namespace concert::notifier
