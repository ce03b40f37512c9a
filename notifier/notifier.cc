#include "notifier/notifier.h"

#include <algorithm>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/backoff.h"
#include "common/log.h"
#include "common/status.h"
#include "concert/events/v1/payment_events.pb.h"
#include "notifier/message.h"

namespace concert::notifier {
namespace {

constexpr absl::Duration kFirstRetry = absl::Milliseconds(100);
constexpr char kEventType[] = "PaymentCompleted";
constexpr char kContentType[] = "application/x-protobuf";

// What the notifier reads of a record's headers, all at once.
struct RecordHeaders {
  int attempt = 1;       // retry_topic-attempts, 1 when absent or not a number from 1
  std::string event_id;  // "" when absent
  // Why the headers say it is not a PaymentCompleted in protobuf, or "" when they do (or say
  // nothing: records written before the relay set them).
  std::string foreign;
};

RecordHeaders ReadHeaders(const RdKafka::Message& message) {
  RecordHeaders headers;
  if (auto attempt = kafka::HeaderValue(message, kafka::dlq::kAttempt)) {
    if (!absl::SimpleAtoi(*attempt, &headers.attempt) || headers.attempt < 1) headers.attempt = 1;
  }
  headers.event_id = kafka::HeaderValue(message, kafka::kEventIdHeader).value_or("");
  if (auto type = kafka::HeaderValue(message, kafka::kEventTypeHeader);
      type.has_value() && *type != kEventType) {
    headers.foreign = absl::StrCat("event type \"", *type, "\" is not ", kEventType);
  } else if (auto content = kafka::HeaderValue(message, kafka::kContentTypeHeader);
             content.has_value() && !absl::StartsWith(*content, kContentType)) {
    headers.foreign = absl::StrCat("content type \"", *content, "\" is not ", kContentType);
  }
  return headers;
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

Notifier::Notifier(NotifierOptions options, DeliveryStore& store, Sender& sender, Pacer& pacer,
                   DeadLetters& dlq, metrics::Registry& registry, LinkClient* links)
    : options_(std::move(options)),
      deliveries_(store,
                  {.uncertain_policy = options_.uncertain_policy,
                   .max_backoff = options_.max_backoff,
                   .ownership_recheck_after = options_.ownership_recheck_after},
                  registry),
      sender_(sender),
      dlq_(dlq),
      links_(links),
      pacer_(pacer),
      registry_(registry),
      consumer_gauges_(registry, "notifier"),
      sent_(registry.GetCounter("notifier_sent_total", "Notifications delivered by the sender")),
      duplicates_(registry.GetCounter("notifier_duplicates_total",
                                      "Redelivered events already sent, skipped")),
      uncertain_(registry.GetCounter(
          "notifier_uncertain_total",
          "Possible duplicates: sends whose outcome is unknown (timeout, connection broken after "
          "the request went out) and events found in flight (SENDING) on arrival after a crash")),
      stale_sends_(StaleCount(registry, "send")),
      send_seconds_(registry.GetHistogram("notifier_send_seconds",
                                          "Time of one sendMessage call, in-process retries "
                                          "included, pacing excluded",
                                          metrics::LatencyBuckets())),
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

absl::Status Notifier::Run(const absl::Notification& stop, std::function<void(bool)> on_health) {
  stop_ = &stop;
  kafka::KeyedConsumerOptions consumer_options = options_.consumer;
  consumer_options.config =
      kafka::ConsumerConfig(options_.kafka, options_.group_id, options_.client_id);
  absl::StatusOr<std::unique_ptr<kafka::KeyedConsumer>> consumer =
      kafka::KeyedConsumer::Create(consumer_options, *this, registry_);
  if (!consumer.ok()) return consumer.status();
  log::Info("notifying", {{"topic", options_.consumer.topic}, {"sender", sender_.name()}});
  (*consumer)->Run(stop, std::move(on_health));
  return absl::OkStatus();
}

bool Notifier::Healthy(bool probe, nlohmann::json& details) {
  if (probe) deliveries_.Probe();
  bool postgres_ok = deliveries_.postgres_ok();
  bool dlq_ok = dlq_.healthy();
  details["postgres_ok"] = postgres_ok;
  details["dlq_ok"] = dlq_ok;
  return postgres_ok && dlq_ok;
}

// One record from Handle() until its Completion: the consumer keeps the message and the
// assignment alive until then.
struct Notifier::Record {
  const RdKafka::Message& message;
  const kafka::Assignment& assignment;
  kafka::Completion done;
  Backoff backoff;
};

void Notifier::Handle(const RdKafka::Message& message, const kafka::Assignment& assignment,
                      kafka::Completion done) {
  Start(std::make_shared<Record>(
      Record{message, assignment, std::move(done), Backoff(kFirstRetry, options_.max_backoff)}));
}

void Notifier::Start(std::shared_ptr<Record> record) {
  Routed routed;
  Outcome outcome = Process(*record, &routed);
  if (outcome != Outcome::kPace) return Finish(std::move(record), outcome);
  // The record waits in its chat's queue, on no thread, until its slots are free.
  pacer_.Submit(routed.chat_id, Pacer::Priority::kNotification, record->assignment.cancelled(),
                [this, record, routed](bool go, const Pacer::Waits& waits) {
                  CountWaits(routed.chat_id, waits);
                  if (!go) return record->done(kafka::Completion::kAbandoned);
                  Finish(record, Send(*record, routed));
                });
}

void Notifier::Finish(std::shared_ptr<Record> record, Outcome outcome) {
  if (outcome == Outcome::kDone) return record->done(kafka::Completion::kDone);
  // Postgres or the DLQ is down: this lane waits, the others go on as far as they can.
  const absl::Notification& cancelled = record->assignment.cancelled();
  if (cancelled.HasBeenNotified() || !record->backoff.Wait(cancelled)) {
    return record->done(kafka::Completion::kAbandoned);
  }
  Start(std::move(record));
}

Notifier::Outcome Notifier::Process(Record& record, Routed* routed) {
  const RdKafka::Message& message = record.message;
  RecordHeaders headers = ReadHeaders(message);
  int attempt = headers.attempt;
  auto poison = [&](const std::string& event_id, std::string why) {
    return ToDlq(message, {.event_id = event_id,
                           .error_class = "poison",
                           .error = std::move(why),
                           .attempt = attempt});
  };
  if (!headers.foreign.empty()) return poison(headers.event_id, headers.foreign);
  events::v1::PaymentCompleted& event = routed->event;
  if (!event.ParseFromArray(message.payload(), static_cast<int>(message.len()))) {
    return poison(headers.event_id, "undecodable payload");
  }
  if (event.event_id().empty()) event.set_event_id(headers.event_id);
  const std::string& event_id = event.event_id();
  if (event_id.empty()) return poison(event_id, "missing event id");
  if (!IsUuid(event_id)) return poison(event_id, absl::StrCat("invalid event id: ", event_id));
  if (absl::Status complete = CheckPaymentCompleted(event); !complete.ok()) {
    return poison(event_id, std::string(complete.message()));
  }
  routed->attempt = attempt;
  routed->payer_chat = event.telegram_chat_id();
  if (routed->payer_chat == 0 && options_.unlinked_policy == UnlinkedPolicy::kSkip) {
    routed->unlinked_skip = true;  // nothing to send, so nothing to pace
    return Send(record, *routed);
  }
  routed->chat_id = routed->payer_chat != 0 ? std::to_string(routed->payer_chat)
                                            : options_.operator_chat_id;
  // A record read again after a rebalance, sent already: skipped before it spends a slot of
  // its chat and of the bot. (Unanswered, Begin decides as always.)
  if (absl::StatusOr<bool> settled = deliveries_.Final(event_id); settled.ok() && *settled) {
    duplicates_.Increment();
    log::Info("duplicate skipped: already sent or undeliverable",
              {{"event_id", event_id}, {"partition", message.partition()},
               {"offset", message.offset()}, {"attempt", attempt}});
    return Outcome::kDone;
  }
  return Outcome::kPace;
}

void Notifier::CountWaits(const std::string& chat_id, const Pacer::Waits& waits) {
  auto count = [](metrics::Counter& counter, absl::Duration waited) {
    if (waited > absl::ZeroDuration()) counter.Increment(absl::ToDoubleSeconds(waited));
  };
  count(pacing_wait_bot_, waits.bot);
  count(IsGroupChat(chat_id) ? pacing_wait_group_ : pacing_wait_chat_, waits.chat);
  count(pacing_wait_flood_, waits.flood);
}

bool Notifier::Pace(const std::string& chat_id, const kafka::Assignment& assignment) {
  Pacer::Waits waits;
  bool acquired = pacer_.Acquire(chat_id, Pacer::Priority::kNotification,
                                 assignment.cancelled(), &waits);
  CountWaits(chat_id, waits);
  return acquired;
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

Notifier::Outcome Notifier::Undeliverable(Delivery& delivery, const std::string& reason,
                                          const std::string& detail) {
  Recorded recorded = delivery.MarkUndeliverable(detail);
  if (recorded != Recorded::kYes) return OutcomeOf(recorded);
  UndeliverableCount(registry_, reason).Increment();
  log::Warn("notification undeliverable",
            {{"event_id", delivery.event_id()}, {"reason", reason}, {"detail", detail}});
  return Outcome::kDone;
}

Notifier::Outcome Notifier::Send(Record& record, const Routed& routed) {
  const RdKafka::Message& message = record.message;
  const kafka::Assignment& assignment = record.assignment;
  const events::v1::PaymentCompleted& event = routed.event;
  int attempt = routed.attempt;
  int64_t payer_chat = routed.payer_chat;

  // Paced before Begin: a wait holds no SENDING row that a crash would turn into a doubt.
  absl::StatusOr<Delivery> delivery =
      deliveries_.Begin(event.event_id(), attempt, assignment.cancelled(), *stop_);
  if (!delivery.ok()) return Outcome::kRetry;
  const BeginResult& begin = delivery->begin();
  switch (begin.action) {
    case BeginResult::Action::kDuplicate:
      duplicates_.Increment();
      log::Info("duplicate skipped: already sent, undeliverable or dead-lettered",
                {{"event_id", delivery->event_id()}, {"partition", message.partition()},
                 {"offset", message.offset()}, {"attempt", attempt}});
      return Outcome::kDone;
    case BeginResult::Action::kSkip:
      uncertain_.Increment();
      log::Warn("uncertain delivery: found in flight, not resent (UNCERTAIN_POLICY=skip)",
                {{"event_id", delivery->event_id()}, {"policy", "skip"}});
      return Outcome::kDone;
    case BeginResult::Action::kBusy:  // waited out by Deliveries::Begin; never here
      return Outcome::kRetry;
    case BeginResult::Action::kSend:
      break;
  }
  if (begin.uncertain) {
    uncertain_.Increment();
    log::Warn("uncertain delivery: found in flight, sending again (UNCERTAIN_POLICY=resend)",
              {{"event_id", delivery->event_id()}, {"policy", "resend"},
               {"attempts", begin.attempts}});
  }
  if (routed.unlinked_skip) {
    return Undeliverable(*delivery, "no_link", "the payer has no linked Telegram chat");
  }
  Notification notification{delivery->event_id(), std::to_string(event.reservation_id()),
                            routed.chat_id,
                            FormatPaymentMessage(event, options_.time_zone, options_.locale)};
  notification.still_ours = [&delivery] { return delivery->StillOurs(); };
  return Deliver(message, assignment, *delivery, notification, payer_chat, attempt);
}

Notifier::Outcome Notifier::Deliver(const RdKafka::Message& message,
                                    const kafka::Assignment& assignment, Delivery& delivery,
                                    Notification& notification, int64_t payer_chat,
                                    int attempt) {
  const std::string& chat_id = notification.chat_id;
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
              {{"event_id", delivery.event_id()},
               {"retry_after_ms", absl::ToInt64Milliseconds(result.retry_after)}});
    if (!Pace(chat_id, assignment)) {
      // Nothing went out: undo this send's Begin so the next try is an ordinary retry.
      delivery.Release("not sent: stopped during a 429 pause");
      return Outcome::kRetry;
    }
  }

  if (result.kind == SendResult::Kind::kNotOurs) {
    // Unconfirmed (stopping with Postgres away): the row stays SENDING, counted by the next Begin.
    if (!delivery.lost()) return Outcome::kRetry;
    stale_sends_.Increment();
    log::Warn("not sent: the record was taken over by another worker while this one waited",
              {{"event_id", delivery.event_id()}, {"send", delivery.send()}});
    return Outcome::kDone;
  }
  if (result.ok()) {
    sent_.Increment();
    Recorded recorded = delivery.MarkSent();
    // Unrecorded, the row stays SENDING: the next try will count it as uncertain.
    if (recorded != Recorded::kYes) return OutcomeOf(recorded);
    log::Info("notification sent", {{"event_id", delivery.event_id()},
                                    {"reservation_id", notification.reservation_id},
                                    {"sender", sender_.name()},
                                    {"attempts", delivery.send()},
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
    return Undeliverable(delivery, "chat_gone", result.message);
  }
  return Fail(message, delivery, result, attempt);
}

Notifier::Outcome Notifier::Fail(const RdKafka::Message& message, Delivery& delivery,
                                 const SendResult& result, int attempt) {
  if (result.possibly_delivered) {
    // Every possible duplicate is counted where it arises, and its row marked, before anything
    // may send it again.
    uncertain_.Increment();
    log::Warn("uncertain delivery: the request went out and no answer said it was not delivered",
              {{"event_id", delivery.event_id()},
               {"error", result.message},
               {"policy", options_.uncertain_policy == UncertainPolicy::kSkip ? "skip" : "resend"}});
    if (options_.uncertain_policy == UncertainPolicy::kSkip) {
      return OutcomeOf(delivery.MarkSentUncertain(result.message));
    }
  }
  Recorded marked = delivery.MarkFailed(result.message, result.possibly_delivered);
  // A stale failure is another worker's record now: no dead letter, no resend.
  if (marked == Recorded::kStale) return Outcome::kDone;
  // Unmarked (stopping with Postgres down), a send that may have been delivered stays SENDING
  // for the next Begin to count; one known not delivered still goes to the DLQ, whose attempt
  // number tells the next Begin so.
  if (marked == Recorded::kGaveUp && result.possibly_delivered) return Outcome::kRetry;
  // The attempt is our own send count, so that the retry-worker's row and this delivery record
  // agree (a resend after a crash is a send); the incoming number is a floor for an event this
  // database has no record of.
  int dead_letter_attempt = std::max(attempt, delivery.send());
  Outcome outcome = ToDlq(
      message, {.event_id = delivery.event_id(),
                .error_class = result.error_class,
                .error = result.message,
                .attempt = dead_letter_attempt,
                .possibly_delivered = delivery.begin().uncertain || result.possibly_delivered});
  // Best effort: unwritten, a redelivery of this record (a rebalance before its offset was
  // committed) sends once more instead of being skipped.
  if (outcome == Outcome::kDone && marked == Recorded::kYes) {
    delivery.MarkDeadLettered(dead_letter_attempt);
  }
  return outcome;
}

}  // namespace concert::notifier
