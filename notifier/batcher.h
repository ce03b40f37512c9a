// Batcher: one statement for many concurrent callers that each write one row (a group commit
// done by hand). With many sends in flight, the notifier's dedup writes would otherwise each
// wait for a commit of their own; batched, a burst of callers shares one statement and one WAL
// flush. No library in Debian does this for libpqxx, and it is small.
//
// The first caller that finds no batch running runs the open batch (its own id and whatever
// other callers added meanwhile); callers arriving during the run wait and go in the next one.
//
//   Batcher inserts([&](const std::vector<std::string>& ids) -> Batcher::Answer {
//     ... INSERT ... SELECT unnest($1::uuid[]) ... RETURNING event_id ...
//   });
//   absl::StatusOr<bool> mine = inserts.Submit(id);  // true: the statement returned `id`
//
// Thread-safe.
#ifndef CONCERT_NOTIFIER_BATCHER_H_
#define CONCERT_NOTIFIER_BATCHER_H_

#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"

namespace concert::notifier {

class Batcher {
 public:
  // The ids the statement returned (for statements that say which rows they wrote).
  using Answer = absl::StatusOr<absl::flat_hash_set<std::string>>;
  using Statement = std::function<Answer(const std::vector<std::string>& ids)>;

  explicit Batcher(Statement statement) : statement_(std::move(statement)) {}

  // Runs `id` in a batch; the statement's error, or whether it returned `id` (each returned id
  // answers true to one caller only, should two submit the same id at once).
  absl::StatusOr<bool> Submit(const std::string& id);

 private:
  struct Batch {
    std::vector<std::string> ids;
    bool done = false;
    Answer answer;
    // Its callers wait here: for the answer, or (the open batch) for a turn to run it. One
    // per batch, so that an answer wakes only the callers it answers.
    std::condition_variable cv;
  };

  Statement statement_;
  std::mutex mu_;
  std::shared_ptr<Batch> open_;
  bool running_ = false;
};

}  // namespace concert::notifier

#endif  // CONCERT_NOTIFIER_BATCHER_H_
