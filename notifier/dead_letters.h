// DeadLetters: the notifier's way to the DLQ topic. A dead letter is the original record (key,
// value, headers) plus Spring Kafka's kafka_dlt-* headers naming where it came from and why it
// failed, the attempt, and kafka_dlt-possibly-delivered when a copy may be in the chat.
//
//   DeadLetters dlq(options, [&] { return kafka::Producer::Create(config); });
//   absl::Status s = dlq.Send(message, {.event_id = id, .error_class = "telegram_5xx",
//                                       .error = "HTTP 502", .attempt = 2}, stop);
//
// - Send() returns once Kafka acknowledged the dead letter. A delivery that failed is produced
//   again with backoff until acknowledged, never while librdkafka still holds an earlier copy
//   (waiting longer is how a slow Kafka is handled: no duplicate dead letters from impatience).
// - A dead letter Kafka refuses for its size (the original value was near the main topic's
//   limit) is set aside by reference: an empty value, the original size in a header, error class
//   "poison" and the reason, so the stage goes on and the retry-worker parks it where an
//   operator sees it; the original stays readable at its topic, partition and offset.
// - After a fatal producer error (the idempotent producer lost its sequence) the producer is
//   recreated from the factory.
//
// Thread-safe: many workers send at once.
#ifndef CONCERT_NOTIFIER_DEAD_LETTERS_H_
#define CONCERT_NOTIFIER_DEAD_LETTERS_H_

#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <string>

#include <librdkafka/rdkafkacpp.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "common/kafka/producer.h"

namespace concert::notifier {

// Header with the byte size of a value too large to copy into the DLQ.
inline constexpr char kOriginalValueBytesHeader[] = "kafka_dlt-original-value-bytes";

struct DeadLetter {
  std::string event_id;  // for logs; may be empty for poison
  std::string error_class;
  std::string error;
  int attempt = 1;
  bool possibly_delivered = false;
};

class DeadLetters {
 public:
  using ProducerFactory = std::function<absl::StatusOr<std::unique_ptr<kafka::Producer>>()>;
  struct Options {
    std::string topic = "payment-notification-dlq";
    std::string group_id = "notification-group";  // kafka_dlt-original-consumer-group
    absl::Duration max_backoff = absl::Seconds(5);
    // After stop, how long Send still waits for an acknowledgement already on its way.
    absl::Duration stop_grace = absl::Seconds(5);
  };

  DeadLetters(Options options, ProducerFactory factory);

  // OK once acknowledged; CANCELLED when `stop` came first (the dead letter may or may not be
  // written: the caller must not commit the original's offset). `letter` may be rewritten for a
  // dead letter set aside by reference (error_class "poison").
  absl::Status Send(const RdKafka::Message& original, DeadLetter& letter,
                    const absl::Notification& stop);
  // False while the last produce failed.
  bool healthy() const { return healthy_.load(); }

 private:
  kafka::Record Build(const RdKafka::Message& original, const DeadLetter& letter) const;
  // The current producer, created when there is none; null when creating failed.
  std::shared_ptr<kafka::Producer> Producer();
  void Recreate(const std::shared_ptr<kafka::Producer>& broken);

  Options options_;
  ProducerFactory factory_;
  std::mutex mu_;
  std::shared_ptr<kafka::Producer> producer_;
  std::atomic<bool> healthy_{true};
};

}  // namespace concert::notifier

#endif  // CONCERT_NOTIFIER_DEAD_LETTERS_H_
