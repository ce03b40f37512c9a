#include "notifier/notifier.h"

#include <algorithm>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/log.h"
#include "common/status.h"
#include "concert/events/v1/payment_events.pb.h"
#include "notifier/message.h"

namespace concert::notifier {
namespace {

constexpr int kMaxTriesAfterStop = 5;

std::string TimestampType(RdKafka::MessageTimestamp::MessageTimestampType type) {
  switch (type) {
    case RdKafka::MessageTimestamp::MSG_TIMESTAMP_CREATE_TIME:
      return "CREATE_TIME";
    case RdKafka::MessageTimestamp::MSG_TIMESTAMP_LOG_APPEND_TIME:
      return "LOG_APPEND_TIME";
    default:
      return "NO_TIMESTAMP_TYPE";
  }
}

// Sleeps `d` unless stopping; returns false when stop was requested.
bool Backoff(absl::Duration d, const absl::Notification& stop) {
  return !stop.WaitForNotificationWithTimeout(d);
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

// Eager rebalancing: on revoke, commit what is finished for those partitions, then let go.
class Notifier::Rebalancer : public RdKafka::RebalanceCb {
 public:
  explicit Rebalancer(Notifier& notifier) : notifier_(notifier) {}

  void rebalance_cb(RdKafka::KafkaConsumer* consumer, RdKafka::ErrorCode err,
                    std::vector<RdKafka::TopicPartition*>& partitions) override {
    std::vector<int32_t> ids;
    for (const RdKafka::TopicPartition* p : partitions) ids.push_back(p->partition());
    if (err == RdKafka::ERR__ASSIGN_PARTITIONS) {
      for (int32_t id : ids) {
        notifier_.done_.erase(id);
        notifier_.committed_.erase(id);
      }
      consumer->assign(partitions);
      notifier_.kafka_ok_ = true;
      log::Info("partitions assigned", {{"partitions", ids}});
    } else {
      if (err == RdKafka::ERR__REVOKE_PARTITIONS) notifier_.CommitDone(&ids);
      for (int32_t id : ids) {
        notifier_.done_.erase(id);
        notifier_.committed_.erase(id);
      }
      consumer->unassign();
      log::Info("partitions revoked", {{"partitions", ids}});
    }
    notifier_.ReportHealth();
  }

 private:
  Notifier& notifier_;
};

Notifier::Notifier(NotifierOptions options, DeliveryStore& store, Sender& sender,
                   kafka::Producer& dlq, metrics::Registry& registry, LinkClient* links)
    : options_(std::move(options)),
      store_(store),
      sender_(sender),
      dlq_(dlq),
      links_(links),
      sent_(registry.GetCounter("notifier_sent_total", "Notifications delivered by the sender")),
      duplicates_(registry.GetCounter("notifier_duplicates_total",
                                      "Redelivered events already sent, skipped")),
      uncertain_(registry.GetCounter(
          "notifier_uncertain_total",
          "Events found in flight (SENDING) on arrival: a crash or unknown outcome mid-send")),
      registry_(registry),
      send_seconds_(registry.GetHistogram("notifier_send_seconds",
                                          "Time in the sender per notification, retries included",
                                          metrics::LatencyBuckets())) {}

Notifier::~Notifier() = default;

void Notifier::ReportHealth() {
  bool healthy = postgres_ok_ && kafka_ok_ && dlq_ok_;
  if (reported_health_ == static_cast<int>(healthy)) return;
  reported_health_ = healthy;
  log::Info(healthy ? "healthy" : "unhealthy",
            {{"postgres_ok", postgres_ok_}, {"kafka_ok", kafka_ok_}, {"dlq_ok", dlq_ok_}});
  if (on_health_) on_health_(healthy);
}

void Notifier::CheckHealth(bool force) {
  absl::Time now = absl::Now();
  if (!force && now - last_health_check_ < options_.health_interval) return;
  last_health_check_ = now;
  postgres_ok_ = store_.Ping().ok();
  RdKafka::Metadata* metadata = nullptr;
  RdKafka::ErrorCode err = consumer_->metadata(/*all_topics=*/false, nullptr, &metadata, 2000);
  delete metadata;
  kafka_ok_ = err == RdKafka::ERR_NO_ERROR;
  ReportHealth();
}

void Notifier::CommitDone(const std::vector<int32_t>* only_partitions) {
  std::vector<RdKafka::TopicPartition*> offsets;
  for (const auto& [partition, next] : done_) {
    if (only_partitions != nullptr &&
        std::find(only_partitions->begin(), only_partitions->end(), partition) ==
            only_partitions->end()) {
      continue;
    }
    auto it = committed_.find(partition);
    if (it != committed_.end() && it->second >= next) continue;
    offsets.push_back(RdKafka::TopicPartition::create(options_.topic, partition, next));
  }
  last_commit_ = absl::Now();
  if (offsets.empty()) return;
  RdKafka::ErrorCode err = consumer_->commitSync(offsets);
  if (err == RdKafka::ERR_NO_ERROR) {
    for (const RdKafka::TopicPartition* p : offsets) {
      if (p->err() == RdKafka::ERR_NO_ERROR) committed_[p->partition()] = p->offset();
    }
  } else {
    // Nothing is lost: the offsets stay in done_ and go with the next commit; if the partition
    // moves elsewhere first, its records are redelivered and skipped as duplicates.
    log::Warn("offset commit failed", {{"error", RdKafka::err2str(err)}});
  }
  RdKafka::TopicPartition::destroy(offsets);
}

bool Notifier::Persist(const std::function<absl::Status()>& op, const std::string& what,
                       const std::string& event_id, const absl::Notification& stop) {
  absl::Duration backoff = absl::Milliseconds(100);
  for (int tries_after_stop = 0;; ) {
    absl::Status s = op();
    if (s.ok()) {
      if (!postgres_ok_) {
        postgres_ok_ = true;
        ReportHealth();
      }
      return true;
    }
    postgres_ok_ = false;
    ReportHealth();
    log::Error(absl::StrCat(what, " failed; retrying"),
               {{"event_id", event_id}, {"error", std::string(s.message())}});
    if (stop.HasBeenNotified() && ++tries_after_stop >= kMaxTriesAfterStop) return false;
    std::this_thread::sleep_for(absl::ToChronoMilliseconds(backoff));
    backoff = std::min(backoff * 2, options_.max_backoff);
  }
}

Notifier::Outcome Notifier::ToDlq(const RdKafka::Message& message, const std::string& event_id,
                                  const std::string& error_class, const std::string& error,
                                  int attempt, bool possibly_delivered,
                                  const absl::Notification& stop) {
  kafka::Record record;
  record.topic = options_.dlq_topic;
  if (message.key() != nullptr) record.key = *message.key();
  record.value.assign(static_cast<const char*>(message.payload()), message.len());
  for (auto& [name, value] : kafka::AllHeaders(message)) {
    // Our own headers are written fresh below; a retried record brings old ones along.
    if (absl::StartsWith(name, "kafka_dlt-") || name == kafka::dlq::kAttempt) continue;
    record.headers.emplace_back(std::move(name), std::move(value));
  }
  RdKafka::MessageTimestamp ts = message.timestamp();
  record.headers.insert(
      record.headers.end(),
      {{kafka::dlq::kOriginalTopic, message.topic_name()},
       {kafka::dlq::kOriginalPartition, std::to_string(message.partition())},
       {kafka::dlq::kOriginalOffset, std::to_string(message.offset())},
       {kafka::dlq::kOriginalTimestamp, std::to_string(ts.timestamp)},
       {kafka::dlq::kOriginalTimestampType, TimestampType(ts.type)},
       {kafka::dlq::kOriginalConsumerGroup, options_.group_id},
       {kafka::dlq::kErrorClass, error_class},
       {kafka::dlq::kErrorMessage, error},
       {kafka::dlq::kAttempt, std::to_string(attempt)}});
  if (possibly_delivered) record.headers.emplace_back(kafka::dlq::kPossiblyDelivered, "true");

  absl::Duration backoff = absl::Milliseconds(100);
  while (true) {
    absl::Status s = dlq_.ProduceAndWait(record, options_.dlq_timeout);
    if (s.ok()) break;
    dlq_ok_ = false;
    ReportHealth();
    log::Error("DLQ produce failed; retrying",
               {{"event_id", event_id}, {"error", std::string(s.message())}});
    // Never skip: without the DLQ's acknowledgement the offset stays uncommitted.
    if (!Backoff(backoff, stop)) return Outcome::kRetry;
    backoff = std::min(backoff * 2, options_.max_backoff);
  }
  if (!dlq_ok_) {
    dlq_ok_ = true;
    ReportHealth();
  }
  registry_.GetCounter("notifier_dlq_total", "Records sent to the DLQ, by error class",
                       {{"reason", error_class}})
      .Increment();
  log::Warn("sent to DLQ", {{"event_id", event_id},
                            {"error_class", error_class},
                            {"error", error},
                            {"attempt", attempt},
                            {"possibly_delivered", possibly_delivered},
                            {"partition", message.partition()},
                            {"offset", message.offset()}});
  return Outcome::kDone;
}

Notifier::Outcome Notifier::Undeliverable(const std::string& event_id, const std::string& reason,
                                          const std::string& detail,
                                          const absl::Notification& stop) {
  if (!Persist([&] { return store_.MarkUndeliverable(event_id, detail); },
               "recording delivery as undeliverable", event_id, stop)) {
    return Outcome::kRetry;
  }
  registry_
      .GetCounter("notifier_undeliverable_total",
                  "Payments no chat will take, by reason: no_link (UNLINKED_POLICY=skip), "
                  "chat_gone (the payer's chat blocked the bot or is gone)",
                  {{"reason", reason}})
      .Increment();
  log::Warn("notification undeliverable",
            {{"event_id", event_id}, {"reason", reason}, {"detail", detail}});
  return Outcome::kDone;
}

Notifier::Outcome Notifier::Process(const RdKafka::Message& message,
                                    const absl::Notification& stop) {
  int attempt = 1;
  if (auto header = kafka::HeaderValue(message, kafka::dlq::kAttempt)) {
    if (!absl::SimpleAtoi(*header, &attempt) || attempt < 1) attempt = 1;
  }
  std::string header_event_id = kafka::HeaderValue(message, kafka::kEventIdHeader).value_or("");

  events::v1::PaymentCompleted event;
  if (!event.ParseFromArray(message.payload(), static_cast<int>(message.len()))) {
    return ToDlq(message, header_event_id, "poison", "undecodable payload", attempt, false, stop);
  }
  std::string event_id = event.event_id().empty() ? header_event_id : event.event_id();
  if (event_id.empty()) {
    return ToDlq(message, event_id, "poison", "missing event id", attempt, false, stop);
  }
  if (!IsUuid(event_id)) {
    return ToDlq(message, event_id, "poison", absl::StrCat("invalid event id: ", event_id),
                 attempt, false, stop);
  }
  if (absl::Status complete = CheckPaymentCompleted(event); !complete.ok()) {
    return ToDlq(message, event_id, "poison", std::string(complete.message()), attempt, false,
                 stop);
  }

  absl::StatusOr<BeginResult> begin = store_.Begin(event_id, options_.uncertain_policy);
  if (!begin.ok()) {
    postgres_ok_ = false;
    ReportHealth();
    log::Error("recording delivery intent failed; will retry",
               {{"event_id", event_id}, {"error", std::string(begin.status().message())}});
    return Outcome::kRetry;
  }
  if (!postgres_ok_) {
    postgres_ok_ = true;
    ReportHealth();
  }
  switch (begin->action) {
    case BeginResult::Action::kDuplicate:
      duplicates_.Increment();
      log::Info("duplicate skipped: already sent",
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

  int64_t payer_chat = event.telegram_chat_id();
  std::string chat_id = payer_chat != 0 ? std::to_string(payer_chat) : options_.operator_chat_id;
  if (payer_chat == 0 && options_.unlinked_policy == UnlinkedPolicy::kSkip) {
    return Undeliverable(event_id, "no_link", "the payer has no linked Telegram chat", stop);
  }
  Notification notification{event_id, std::to_string(event.reservation_id()), chat_id,
                            FormatPaymentMessage(event, options_.time_zone, options_.locale)};
  absl::Time start = absl::Now();
  SendResult result = sender_.Send(notification);
  send_seconds_.Observe(absl::ToDoubleSeconds(absl::Now() - start));

  if (result.ok()) {
    sent_.Increment();
    if (!Persist([&] { return store_.MarkSent(event_id); }, "recording delivery as sent",
                 event_id, stop)) {
      return Outcome::kRetry;  // stays SENDING: the next try will count it as uncertain
    }
    log::Info("notification sent", {{"event_id", event_id},
                                    {"reservation_id", notification.reservation_id},
                                    {"sender", sender_.name()},
                                    {"attempts", begin->attempts},
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
    return Undeliverable(event_id, "chat_gone", result.message, stop);
  }
  if (!Persist([&] { return store_.MarkFailed(event_id, result.message); },
               "recording delivery as failed", event_id, stop)) {
    return Outcome::kRetry;
  }
  // The attempt is our own send count, so that the retry-worker's row and this delivery record
  // agree (a resend after a crash is a send); the incoming number is a floor for an event this
  // database has no record of. A copy may be in the chat already when this send resumed one
  // found in flight, or timed out after the request went out.
  bool possibly_delivered = begin->uncertain || result.error_class == "timeout";
  return ToDlq(message, event_id, result.error_class, result.message,
               std::max(attempt, begin->attempts), possibly_delivered, stop);
}

absl::Status Notifier::Run(const absl::Notification& stop, std::function<void(bool)> on_health) {
  on_health_ = std::move(on_health);
  rebalancer_ = std::make_unique<Rebalancer>(*this);
  kafka::Config config =
      kafka::ConsumerConfig(options_.bootstrap_servers, options_.group_id, options_.client_id);
  ASSIGN_OR_RETURN(std::unique_ptr<RdKafka::Conf> conf, kafka::MakeConf(config));
  std::string error;
  if (conf->set("rebalance_cb", rebalancer_.get(), error) != RdKafka::Conf::CONF_OK) {
    return absl::InternalError(error);
  }
  consumer_.reset(RdKafka::KafkaConsumer::create(conf.get(), error));
  if (!consumer_) return absl::InvalidArgumentError(absl::StrCat("kafka consumer: ", error));
  RETURN_IF_ERROR(kafka::StatusFromError(consumer_->subscribe({options_.topic}), "subscribing"));
  log::Info("consuming", {{"topic", options_.topic}, {"group", options_.group_id},
                          {"dlq_topic", options_.dlq_topic}, {"sender", sender_.name()}});
  CheckHealth(/*force=*/true);

  absl::Duration backoff = absl::Milliseconds(100);
  while (!stop.HasBeenNotified()) {
    std::unique_ptr<RdKafka::Message> message(consumer_->consume(100));
    switch (message->err()) {
      case RdKafka::ERR_NO_ERROR: {
        if (!kafka_ok_) {
          kafka_ok_ = true;
          ReportHealth();
        }
        if (Process(*message, stop) == Outcome::kDone) {
          done_[message->partition()] = message->offset() + 1;
          backoff = absl::Milliseconds(100);
        } else {
          // Read it again after a pause; seek drops what was fetched after it.
          std::unique_ptr<RdKafka::TopicPartition> tp(RdKafka::TopicPartition::create(
              options_.topic, message->partition(), message->offset()));
          RdKafka::ErrorCode err = consumer_->seek(*tp, 5000);
          if (err != RdKafka::ERR_NO_ERROR) {
            log::Warn("seek back failed", {{"error", RdKafka::err2str(err)}});
          }
          Backoff(backoff, stop);
          backoff = std::min(backoff * 2, options_.max_backoff);
          CheckHealth(/*force=*/false);
        }
        break;
      }
      case RdKafka::ERR__TIMED_OUT:
      case RdKafka::ERR__PARTITION_EOF:
        CheckHealth(/*force=*/false);
        break;
      case RdKafka::ERR__ALL_BROKERS_DOWN:
      case RdKafka::ERR__TRANSPORT:
        log::Warn("kafka unavailable", {{"error", message->errstr()}});
        kafka_ok_ = false;
        ReportHealth();
        break;
      default:
        log::Warn("consumer error", {{"error", message->errstr()}});
        break;
    }
    if (absl::Now() - last_commit_ >= options_.commit_interval) CommitDone(nullptr);
  }
  log::Info("stopping: committing finished offsets and leaving the group");
  CommitDone(nullptr);
  consumer_->close();  // revokes through rebalance_cb, which commits again (no-op)
  consumer_.reset();
  return absl::OkStatus();
}

}  // namespace concert::notifier
