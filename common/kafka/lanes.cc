#include "common/kafka/lanes.h"

#include <algorithm>
#include <utility>

namespace concert::kafka {

Completion::Completion(Completion&& other) noexcept
    : lanes_(std::exchange(other.lanes_, nullptr)), key_(std::move(other.key_)) {}

Completion::~Completion() {
  if (lanes_ != nullptr) (*this)(kAbandoned);
}

void Completion::operator()(Result result) {
  if (lanes_ == nullptr) return;  // called twice: the first call counts
  std::exchange(lanes_, nullptr)->Finish(key_, result == kDone);
}

Lanes::Lanes(int workers, Handler handler) : handler_(std::move(handler)) {
  for (int i = 0; i < workers; ++i) workers_.emplace_back([this] { Work(); });
}

Lanes::~Lanes() {
  Stop();
  Clear();
}

void Lanes::Push(const std::string& key, Job job) {
  std::lock_guard lock(mu_);
  std::deque<Job>& lane = lanes_[key];
  lane.push_back(std::move(job));
  ++pending_;
  if (lane.size() == 1) {
    ready_.push_back(key);
    work_cv_.notify_one();
  }
}

void Lanes::Work() {
  std::unique_lock lock(mu_);
  while (true) {
    work_cv_.wait(lock, [&] { return stopping_ || !ready_.empty(); });
    if (stopping_) return;
    std::string key = std::move(ready_.front());
    ready_.pop_front();
    Job& job = lanes_[key].front();  // stays put: only its Completion pops this lane
    ++in_flight_;
    ++job.assignment->busy_;
    if (job.assignment->cancelled().HasBeenNotified()) {
      lock.unlock();
      Completion(this, key)(Completion::kAbandoned);
    } else {
      lock.unlock();
      handler_(job, Completion(this, key));
    }
    lock.lock();
  }
}

void Lanes::Finish(const std::string& key, bool done) {
  std::lock_guard lock(mu_);
  std::deque<Job>& lane = lanes_[key];
  Job& job = lane.front();
  --in_flight_;
  --job.assignment->busy_;
  finished_.push_back({job.assignment, job.offset, done});
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

std::vector<Lanes::Finished> Lanes::TakeFinished() {
  std::vector<Finished> finished;
  std::lock_guard lock(mu_);
  finished.swap(finished_);
  return finished;
}

bool Lanes::WaitIdle(const std::vector<std::shared_ptr<Assignment>>& assignments,
                     absl::Duration timeout) {
  std::unique_lock lock(mu_);
  return idle_cv_.wait_for(lock, absl::ToChronoMilliseconds(timeout), [&] {
    return std::all_of(assignments.begin(), assignments.end(),
                       [](const auto& a) { return a->busy_ == 0; });
  });
}

void Lanes::Stop() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  work_cv_.notify_all();
  for (std::thread& worker : workers_) worker.join();
  workers_.clear();
  std::unique_lock lock(mu_);
  idle_cv_.wait(lock, [&] { return in_flight_ == 0; });
}

void Lanes::Clear() {
  std::lock_guard lock(mu_);
  lanes_.clear();
  ready_.clear();
  pending_ = 0;
}

int Lanes::pending() const {
  std::lock_guard lock(mu_);
  return pending_;
}

int Lanes::in_flight() const {
  std::lock_guard lock(mu_);
  return in_flight_;
}

}  // namespace concert::kafka
