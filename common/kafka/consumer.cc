#include "common/kafka/consumer.h"

#include <algorithm>
#include <mutex>
#include <unordered_map>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/log.h"

namespace concert::kafka {

ConsumerGauges::ConsumerGauges(metrics::Registry& registry, const std::string& prefix)
    : in_flight(registry.GetGauge(prefix + "_in_flight",
                                  "Records being handled: started and not finished")),
      pending(registry.GetGauge(
          prefix + "_pending", "Records read from Kafka and not finished (in flight included)")),
      lag(registry.GetGauge(
          prefix + "_consumer_lag",
          "Records of the assigned partitions not finished: high watermark - committable offset")),
      oldest_age(registry.GetGauge(
          prefix + "_oldest_pending_age_seconds",
          "Age (since the record's Kafka timestamp) of the oldest record read and not finished; "
          "0 when none")),
      unsettled(registry.GetGauge(
          prefix + "_consumer_unsettled_seconds",
          "How long the consumer has been without its group coordinator or outside a settled "
          "assignment (joining, rebalancing); 0 while settled")),
      kafka_up(registry.GetGauge(prefix + "_kafka_up",
                                 "1 while the Kafka cluster answers the consumer")) {}

// Eager rebalancing: on revoke, finish or drop what the handler has of those partitions, commit
// what is finished, then let go.
class KeyedConsumer::Rebalancer : public RdKafka::RebalanceCb {
 public:
  explicit Rebalancer(KeyedConsumer& consumer) : consumer_(consumer) {}

  void rebalance_cb(RdKafka::KafkaConsumer* consumer, RdKafka::ErrorCode err,
                    std::vector<RdKafka::TopicPartition*>& partitions) override {
    std::vector<int32_t> ids;
    for (const RdKafka::TopicPartition* p : partitions) ids.push_back(p->partition());
    if (err == RdKafka::ERR__ASSIGN_PARTITIONS) {
      consumer_.Assign(ids);
      consumer->assign(partitions);
      log::Info("partitions assigned", {{"partitions", ids}});
      consumer_.handler_.OnAssigned(ids);
    } else {
      // Lost (the session timed out, another member may own them already): nothing to commit,
      // and nothing to wait for before rejoining.
      consumer_.Revoke(ids, consumer->assignment_lost());
      consumer->unassign();
      log::Info("partitions revoked", {{"partitions", ids}});
      consumer_.handler_.OnRevoked(ids);
    }
    consumer_.ReportHealth();
  }

 private:
  KeyedConsumer& consumer_;
};

namespace {

// librdkafka names a client to its statistics callback only by its handle: every KeyedConsumer
// with gauges is found here, for as long as its client lives.
std::mutex statistics_mu;
std::unordered_map<const rd_kafka_t*, KeyedConsumer*>& StatisticsReaders() {
  static auto* readers = new std::unordered_map<const rd_kafka_t*, KeyedConsumer*>();
  return *readers;
}

}  // namespace

int KeyedConsumer::OnStatistics(rd_kafka_t* client, char* json, size_t size, void*) {
  KeyedConsumer* consumer = nullptr;
  {
    std::lock_guard lock(statistics_mu);
    auto it = StatisticsReaders().find(client);
    if (it != StatisticsReaders().end()) consumer = it->second;
  }
  if (consumer != nullptr) consumer->ReadGroupState(std::string(json, size));
  return 0;  // librdkafka frees `json`
}

void KeyedConsumer::ReadGroupState(const std::string& json) {
  nlohmann::json stats = nlohmann::json::parse(json, nullptr, /*allow_exceptions=*/false);
  if (!stats.is_object() || !stats.contains("cgrp")) return;
  const nlohmann::json& group = stats["cgrp"];
  bool settled = group.value("state", "") == "up" && group.value("join_state", "") == "steady";
  absl::Time now = absl::Now();
  if (settled) {
    if (unsettled_since_ != absl::InfiniteFuture() && now - unsettled_since_ > absl::Seconds(2)) {
      log::Info("consumer group settled",
                {{"unsettled_ms", absl::ToInt64Milliseconds(now - unsettled_since_)}});
    }
    unsettled_since_ = absl::InfiniteFuture();
  } else if (unsettled_since_ == absl::InfiniteFuture()) {
    unsettled_since_ = now;
  }
  gauges_->unsettled.Set(settled ? 0.0 : absl::ToDoubleSeconds(now - unsettled_since_));
}

void KeyedConsumer::CloseClient() {
  if (consumer_ == nullptr) return;
  consumer_->close();
  {
    std::lock_guard lock(statistics_mu);
    StatisticsReaders().erase(consumer_->c_ptr());
  }
  consumer_.reset();
}

absl::StatusOr<std::unique_ptr<KeyedConsumer>> KeyedConsumer::Create(
    KeyedConsumerOptions options, RecordHandler& handler, metrics::Registry& registry) {
  std::unique_ptr<KeyedConsumer> self(new KeyedConsumer(std::move(options), handler, registry));
  absl::StatusOr<std::unique_ptr<RdKafka::Conf>> conf = MakeConf(self->options_.config);
  if (!conf.ok()) return conf.status();
  std::string error;
  if ((*conf)->set("rebalance_cb", self->rebalancer_.get(), error) != RdKafka::Conf::CONF_OK) {
    return absl::InternalError(error);
  }
  if (self->gauges_ != nullptr) {
    if ((*conf)->set("statistics.interval.ms", "1000", error) != RdKafka::Conf::CONF_OK) {
      return absl::InternalError(error);
    }
    rd_kafka_conf_set_stats_cb((*conf)->c_ptr_global(), &KeyedConsumer::OnStatistics);
  }
  self->consumer_.reset(RdKafka::KafkaConsumer::create(conf->get(), error));
  if (!self->consumer_) return absl::InvalidArgumentError(absl::StrCat("kafka consumer: ", error));
  if (self->gauges_ != nullptr) {
    std::lock_guard lock(statistics_mu);
    StatisticsReaders()[self->consumer_->c_ptr()] = self.get();
  }
  absl::Status subscribed = StatusFromError(self->consumer_->subscribe({self->options_.topic}),
                                            "subscribing to " + self->options_.topic);
  if (!subscribed.ok()) return subscribed;
  return self;
}

KeyedConsumer::KeyedConsumer(KeyedConsumerOptions options, RecordHandler& handler,
                             metrics::Registry& registry)
    : options_(std::move(options)),
      handler_(handler),
      gauges_(options_.metrics_prefix.empty()
                  ? nullptr
                  : std::make_unique<ConsumerGauges>(registry, options_.metrics_prefix)),
      rebalancer_(std::make_unique<Rebalancer>(*this)),
      lanes_(options_.concurrency, [this](Lanes::Job& job, Completion done) {
        handler_.Handle(*job.message, *job.assignment, std::move(done));
      }) {}

KeyedConsumer::~KeyedConsumer() {
  if (consumer_ == nullptr) return;
  lanes_.Stop();
  lanes_.Clear();  // closing waits until every message librdkafka handed out is destroyed
  CloseClient();
}

void KeyedConsumer::Assign(const std::vector<int32_t>& partitions) {
  for (int32_t id : partitions) {
    PartitionState& state = partitions_[id];
    state = PartitionState();
    state.assignment = std::make_shared<Assignment>(id);
  }
  paused_ = false;
  kafka_ok_ = true;
}

void KeyedConsumer::Enqueue(std::unique_ptr<RdKafka::Message> message) {
  auto it = partitions_.find(message->partition());
  if (it == partitions_.end()) return;  // not ours (any more): it will be read again
  PartitionState& state = it->second;
  int64_t offset = message->offset();
  state.unfinished.emplace(offset, message->timestamp().timestamp);
  state.next = std::max(state.next, offset + 1);
  std::string key = message->key() != nullptr
                        ? *message->key()
                        : absl::StrCat("\x01", message->partition(), ":", offset);
  lanes_.Push(key, {std::move(message), state.assignment, offset});
}

void KeyedConsumer::TakeFinished() {
  for (const Lanes::Finished& f : lanes_.TakeFinished()) {
    if (!f.done) continue;
    auto it = partitions_.find(f.assignment->partition());
    if (it == partitions_.end() || it->second.assignment != f.assignment) continue;
    it->second.unfinished.erase(f.offset);
  }
}

void KeyedConsumer::FlowControl() {
  int pending = lanes_.pending();
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

void KeyedConsumer::CommitDone(const std::vector<int32_t>* only_partitions, Commit how) {
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
  RdKafka::ErrorCode err = how == Commit::kInBackground ? consumer_->commitAsync(offsets)
                                                        : consumer_->commitSync(offsets);
  if (err != RdKafka::ERR_NO_ERROR) {
    // Nothing is lost: the next commit carries the offsets; if the partition moves elsewhere
    // first, its records are redelivered (the handler finds them done).
    log::Warn("offset commit failed", {{"error", RdKafka::err2str(err)}});
  } else if (how == Commit::kWait) {
    for (const RdKafka::TopicPartition* p : offsets) {
      if (p->err() == RdKafka::ERR_NO_ERROR) partitions_[p->partition()].committed = p->offset();
    }
  }
  RdKafka::TopicPartition::destroy(offsets);
}

void KeyedConsumer::Revoke(const std::vector<int32_t>& partitions, bool lost) {
  std::vector<std::shared_ptr<Assignment>> revoked;
  for (int32_t id : partitions) {
    auto it = partitions_.find(id);
    if (it == partitions_.end()) continue;
    it->second.assignment->Cancel();  // unstarted records are dropped
    revoked.push_back(it->second.assignment);
  }
  if (lost) {
    log::Warn("partitions lost: the group went on without this member",
              {{"partitions", partitions}});
  } else {
    // Records being handled finish here, so the next owner does not find them in flight.
    if (!lanes_.WaitIdle(revoked, options_.revoke_timeout)) {
      log::Warn("revoking partitions with records still being handled");
    }
    CommitDone(&partitions, Commit::kWait);
  }
  for (int32_t id : partitions) partitions_.erase(id);
}

void KeyedConsumer::ReportHealth(bool probe) {
  nlohmann::json details = {{"kafka_ok", kafka_ok_}};
  bool healthy = handler_.Healthy(probe, details) && kafka_ok_;
  if (reported_health_ == static_cast<int>(healthy)) return;
  reported_health_ = healthy;
  log::Info(healthy ? "healthy" : "unhealthy", details);
  if (on_health_) on_health_(healthy);
}

void KeyedConsumer::CheckHealth(bool force) {
  absl::Time now = absl::Now();
  if (!force && now - last_health_check_ < options_.health_interval) return;
  last_health_check_ = now;
  RdKafka::Metadata* metadata = nullptr;
  RdKafka::ErrorCode err = consumer_->metadata(/*all_topics=*/false, nullptr, &metadata, 2000);
  delete metadata;
  kafka_ok_ = err == RdKafka::ERR_NO_ERROR;
  ReportHealth(/*probe=*/true);
}

void KeyedConsumer::UpdateGauges() {
  absl::Time now = absl::Now();
  if (gauges_ == nullptr || now - last_gauges_ < absl::Milliseconds(500)) return;
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
      if (timestamp_ms > 0 && (oldest_ms == 0 || timestamp_ms < oldest_ms)) {
        oldest_ms = timestamp_ms;
      }
    }
  }
  gauges_->lag.Set(static_cast<double>(lag));
  gauges_->kafka_up.Set(kafka_ok_ ? 1 : 0);
  gauges_->oldest_age.Set(
      oldest_ms == 0 ? 0.0
                     : std::max(0.0, absl::ToDoubleSeconds(now - absl::FromUnixMillis(oldest_ms))));
  gauges_->in_flight.Set(lanes_.in_flight());
  gauges_->pending.Set(lanes_.pending());
}

void KeyedConsumer::Run(const absl::Notification& stop, std::function<void(bool)> on_health) {
  on_health_ = std::move(on_health);
  auto group = options_.config.find("group.id");
  log::Info("consuming", {{"topic", options_.topic},
                          {"group", group == options_.config.end() ? "" : group->second},
                          {"concurrency", options_.concurrency}});
  CheckHealth(/*force=*/true);
  while (!stop.HasBeenNotified()) {
    std::unique_ptr<RdKafka::Message> message(
        consumer_->consume(static_cast<int>(absl::ToInt64Milliseconds(options_.poll_timeout))));
    switch (message->err()) {
      case RdKafka::ERR_NO_ERROR:
        kafka_ok_ = true;
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
  log::Info("stopping: finishing the records being handled, committing, leaving the group");
  for (auto& [partition, state] : partitions_) state.assignment->Cancel();
  lanes_.Stop();
  CommitDone(nullptr, Commit::kWait);
  lanes_.Clear();  // closing waits until every message librdkafka handed out is destroyed
  CloseClient();  // revokes through rebalance_cb: nothing busy, commits again (no-op)
}

}  // namespace concert::kafka
