// Lanes: the keyed, in-order worker pool under KeyedConsumer (common/kafka/consumer.h). Records
// pushed with the same key form a lane and are handled strictly one after another, in the order
// pushed; different lanes go in parallel on a bounded pool of workers. A record is handled by
// calling the injected function with a Completion: the lane's next record waits until that
// Completion is called, from the worker or later from any thread, so that a handler may park a
// record without holding a worker (a scheduler that waits for a busy chat, say).
//
//   Lanes lanes(/*workers=*/32, [&](Lanes::Job& job, Completion done) {
//     done(Handle(*job.message) ? Completion::kDone : Completion::kAbandoned);
//   });
//   lanes.Push("reservation-7", {std::move(message), assignment, offset});
//   for (const Lanes::Finished& f : lanes.TakeFinished()) ...;  // committable when f.done
//
// Thread-safe. A record of a cancelled Assignment is not started: it finishes abandoned.
#ifndef CONCERT_COMMON_KAFKA_LANES_H_
#define CONCERT_COMMON_KAFKA_LANES_H_

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include <librdkafka/rdkafkacpp.h>

#include "absl/synchronization/notification.h"
#include "absl/time/time.h"

namespace concert::kafka {

class Lanes;

// One partition's assignment, as the records of it see it.
class Assignment {
 public:
  explicit Assignment(int32_t partition) : partition_(partition) {}
  int32_t partition() const { return partition_; }
  // Notified at revoke and at stop: a handler ends its waits and finishes the record abandoned
  // (or done, if its outcome is known); unstarted records of it are dropped.
  const absl::Notification& cancelled() const { return cancelled_; }
  // Idempotent.
  void Cancel() {
    if (!cancelled_.HasBeenNotified()) cancelled_.Notify();
  }

 private:
  friend class Lanes;
  int32_t partition_;
  absl::Notification cancelled_;
  int busy_ = 0;  // records of it being handled (guarded by Lanes' mutex)
};

// How one record ends; call it exactly once, from any thread. Destroyed uncalled, the record
// ends abandoned. Move-only.
class Completion {
 public:
  enum Result {
    kDone,       // handled: its offset may be committed
    kAbandoned,  // not handled (stop, revoke): left uncommitted for the partition's next owner
  };
  Completion(Completion&& other) noexcept;
  Completion& operator=(Completion&&) = delete;
  ~Completion();
  void operator()(Result result);

 private:
  friend class Lanes;
  Completion(Lanes* lanes, std::string key) : lanes_(lanes), key_(std::move(key)) {}
  Lanes* lanes_;
  std::string key_;
};

class Lanes {
 public:
  struct Job {
    std::unique_ptr<RdKafka::Message> message;  // may be null in tests
    std::shared_ptr<Assignment> assignment;
    int64_t offset = 0;
  };
  struct Finished {
    std::shared_ptr<Assignment> assignment;
    int64_t offset = 0;
    bool done = false;  // false: abandoned, not to be committed
  };
  // Called on a worker. The Job stays put (and its message alive) until `done` is called.
  using Handler = std::function<void(Job& job, Completion done)>;

  Lanes(int workers, Handler handler);
  ~Lanes();  // Stop(), then Clear()

  void Push(const std::string& key, Job job);
  // The records finished since the last call, in the order they finished.
  std::vector<Finished> TakeFinished();
  // Waits until no record of `assignments` is being handled; false when `timeout` passed first.
  bool WaitIdle(const std::vector<std::shared_ptr<Assignment>>& assignments,
                absl::Duration timeout);
  // Workers take no further record; returns once every record being handled has completed.
  // The caller cancels the assignments first, so that handlers end their waits.
  void Stop();
  // Drops every record not started (their messages destroyed). After Stop().
  void Clear();

  int pending() const;    // pushed and not finished (in flight included)
  int in_flight() const;  // being handled

 private:
  friend class Completion;
  void Work();
  void Finish(const std::string& key, bool done);

  Handler handler_;
  mutable std::mutex mu_;
  std::condition_variable work_cv_;  // a lane became ready, or stopping
  std::condition_variable idle_cv_;  // a record finished
  std::unordered_map<std::string, std::deque<Job>> lanes_;  // key -> its records, in order
  std::deque<std::string> ready_;  // lanes whose first record is not being handled yet
  std::vector<Finished> finished_;
  int pending_ = 0;
  int in_flight_ = 0;
  bool stopping_ = false;
  std::vector<std::thread> workers_;
};

}  // namespace concert::kafka

#endif  // CONCERT_COMMON_KAFKA_LANES_H_
