#include "notifier/batcher.h"

namespace concert::notifier {

absl::StatusOr<bool> Batcher::Submit(const std::string& id) {
  std::unique_lock lock(mu_);
  if (open_ == nullptr) open_ = std::make_shared<Batch>();
  std::shared_ptr<Batch> batch = open_;
  batch->ids.push_back(id);
  while (!batch->done && running_) batch->cv.wait(lock);
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
    batch->cv.notify_all();
    // One caller of the batch that filled meanwhile runs it next.
    if (open_ != nullptr) open_->cv.notify_one();
  }
  if (!batch->answer.ok()) return batch->answer.status();
  return batch->answer->erase(id) > 0;
}

}  // namespace concert::notifier
