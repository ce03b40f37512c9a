#include "notifier/batcher.h"

namespace concert::notifier {

absl::StatusOr<bool> Batcher::Submit(const std::string& id) {
  std::unique_lock lock(mu_);
  if (open_ == nullptr) open_ = std::make_shared<Batch>();
  std::shared_ptr<Batch> batch = open_;
  batch->ids.push_back(id);
  cv_.wait(lock, [&] { return batch->done || !running_; });
  if (!batch->done) {
    // Nobody is running a batch: run the open one, ours included.
    running_ = true;
    open_ = nullptr;
    lock.unlock();
    Answer answer = statement_(batch->ids);
    lock.lock();
    batch->answer = std::move(answer);
    batch->done = true;
    running_ = false;
    cv_.notify_all();
  }
  if (!batch->answer.ok()) return batch->answer.status();
  return batch->answer->erase(id) > 0;
}

}  // namespace concert::notifier
