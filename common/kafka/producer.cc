#include "common/kafka/producer.h"

#include <chrono>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "common/status.h"

namespace concert::kafka {

class Producer::DeliveryReporter : public RdKafka::DeliveryReportCb {
 public:
  void dr_cb(RdKafka::Message& message) override {
    std::unique_ptr<Callback> done(static_cast<Callback*>(message.msg_opaque()));
    if (done) (*done)(StatusFromError(message.err(), "delivering to " + message.topic_name()));
  }
};

absl::StatusOr<std::unique_ptr<Producer>> Producer::Create(const Config& config) {
  ASSIGN_OR_RETURN(std::unique_ptr<RdKafka::Conf> conf, MakeConf(config));
  auto reporter = std::make_unique<DeliveryReporter>();
  std::string error;
  if (conf->set("dr_cb", reporter.get(), error) != RdKafka::Conf::CONF_OK) {
    return absl::InternalError(error);
  }
  std::unique_ptr<RdKafka::Producer> raw(RdKafka::Producer::create(conf.get(), error));
  if (!raw) return absl::InvalidArgumentError(absl::StrCat("kafka producer: ", error));
  std::unique_ptr<Producer> producer(new Producer(std::move(raw)));
  producer->reporter_ = std::move(reporter);
  return producer;
}

Producer::Producer(std::unique_ptr<RdKafka::Producer> producer) : producer_(std::move(producer)) {
  poller_ = std::thread([this] {
    while (!stop_.load()) producer_->poll(100);
  });
}

Producer::~Producer() {
  producer_->flush(10'000);
  stop_ = true;
  poller_.join();
  producer_->poll(0);  // callbacks of what failed during the flush
}

absl::Status Producer::Produce(Record record, Callback done) {
  RETURN_IF_ERROR(FatalError());
  auto* opaque = new Callback(std::move(done));
  RdKafka::Headers* headers = RdKafka::Headers::create();
  for (const auto& [name, value] : record.headers) headers->add(name, value.data(), value.size());
  while (true) {
    RdKafka::ErrorCode code = producer_->produce(
        record.topic, record.partition, RdKafka::Producer::RK_MSG_COPY,
        record.value.data(), record.value.size(), record.key.data(), record.key.size(),
        /*timestamp=*/0, headers, opaque);
    if (code == RdKafka::ERR_NO_ERROR) return absl::OkStatus();  // headers now owned by librdkafka
    if (code != RdKafka::ERR__QUEUE_FULL) {
      delete headers;
      delete opaque;
      return StatusFromError(code, absl::StrCat("producing to ", record.topic));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));  // the poll thread drains it
  }
}

absl::Status Producer::ProduceAndWait(Record record, absl::Duration timeout) {
  auto result = std::make_shared<std::pair<absl::Notification, absl::Status>>();
  RETURN_IF_ERROR(Produce(std::move(record), [result](const absl::Status& status) {
    result->second = status;
    result->first.Notify();
  }));
  if (!result->first.WaitForNotificationWithTimeout(timeout)) {
    return absl::DeadlineExceededError("no acknowledgement from Kafka in time");
  }
  return result->second;
}

absl::Status Producer::Flush(absl::Duration timeout) {
  return StatusFromError(producer_->flush(static_cast<int>(absl::ToInt64Milliseconds(timeout))),
                         "flushing producer");
}

absl::Status Producer::FatalError() {
  std::string reason;
  RdKafka::ErrorCode code = producer_->fatal_error(reason);
  if (code == RdKafka::ERR_NO_ERROR) return absl::OkStatus();
  return absl::InternalError(absl::StrCat("fatal producer error: ", reason));
}

}  // namespace concert::kafka
