// The fake Telegram Bot API: routes, faults, the getUpdates long poll, and the profile's latency,
// token buckets, flood waits and slow answers (see fake_telegram.h for what each does).
#include "tests/fake_telegram/fake_telegram.h"

#include <sys/socket.h>

#include <algorithm>
#include <cmath>
#include <fstream>

#include <httplib.h>
#include <nlohmann/json.hpp>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"

namespace concert::testing {
namespace {

using nlohmann::json;

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

std::string DecodeFormComponent(absl::string_view in) {
  std::string out;
  for (size_t i = 0; i < in.size(); ++i) {
    if (in[i] == '+') {
      out.push_back(' ');
    } else if (in[i] == '%' && i + 2 < in.size() && HexValue(in[i + 1]) >= 0 &&
               HexValue(in[i + 2]) >= 0) {
      out.push_back(static_cast<char>(HexValue(in[i + 1]) * 16 + HexValue(in[i + 2])));
      i += 2;
    } else {
      out.push_back(in[i]);
    }
  }
  return out;
}

std::map<std::string, std::string> ParseForm(absl::string_view body) {
  std::map<std::string, std::string> out;
  for (absl::string_view pair : absl::StrSplit(body, '&', absl::SkipEmpty())) {
    std::pair<absl::string_view, absl::string_view> kv = absl::StrSplit(pair, absl::MaxSplits('=', 1));
    out[DecodeFormComponent(kv.first)] = DecodeFormComponent(kv.second);
  }
  return out;
}

json ToJson(const TelegramMessage& m) {
  return json{{"chat_id", m.chat_id},
              {"text", m.text},
              {"token", m.token},
              {"received_at_ms", absl::ToUnixMillis(m.received_at)},
              {"accepted_at_ms", absl::ToUnixMillis(m.accepted_at)},
              {"paid_broadcast", m.paid_broadcast}};
}

// Telegram's retry_after: whole seconds, rounded up, at least 1.
int WholeSecondsAtLeastOne(absl::Duration d) {
  return std::max<int>(1, static_cast<int>(std::ceil(absl::ToDoubleSeconds(d))));
}

// Groups and channels have negative ids or are addressed as "@name"; private chats are positive.
bool IsGroupChat(const std::string& chat_id) {
  return !chat_id.empty() && (chat_id[0] == '-' || chat_id[0] == '@');
}

// The backlog that listen() gets after cpp-httplib's own (5, compiled into Debian's library):
// hundreds of clients may connect at once.
constexpr int kListenBacklog = 1024;

void Reply(httplib::Response& res, int status, const json& body) {
  res.status = status;
  res.set_content(body.dump(), "application/json");
}

void ReplyError(httplib::Response& res, int status, const std::string& description,
                const json& parameters = nullptr) {
  json body{{"ok", false}, {"error_code", status}, {"description", description}};
  if (!parameters.is_null()) body["parameters"] = parameters;
  Reply(res, status, body);
}

}  // namespace

Profile Profile::Telegram() {
  Profile p;
  p.latency_median = absl::Milliseconds(100);
  p.latency_spread = 0.5;
  p.latency_max = absl::Seconds(1);
  p.bot_per_second = 30;
  p.bot_burst = 30;
  p.paid_bot_per_second = 1000;
  p.paid_bot_burst = 1000;
  p.chat_per_second = 1;
  p.chat_burst = 3;
  p.group_per_minute = 20;
  p.group_burst = 5;
  return p;
}

class FakeTelegram::InFlight {
 public:
  explicit InFlight(FakeTelegram* fake) : fake_(fake) {
    std::lock_guard lock(fake_->mu_);
    ++fake_->requests_;
    fake_->peak_in_flight_ = std::max(fake_->peak_in_flight_, ++fake_->in_flight_);
  }
  ~InFlight() {
    std::lock_guard lock(fake_->mu_);
    --fake_->in_flight_;
  }
  InFlight(const InFlight&) = delete;
  InFlight& operator=(const InFlight&) = delete;

 private:
  FakeTelegram* fake_;
};

bool ParseFaultMode(const std::string& name, FaultMode* mode) {
  static const std::map<std::string, FaultMode> kModes = {{"off", FaultMode::kOff},
                                                         {"5xx", FaultMode::k5xx},
                                                         {"429", FaultMode::k429},
                                                         {"400", FaultMode::k400},
                                                         {"403", FaultMode::k403},
                                                         {"chat_not_found", FaultMode::kChatNotFound},
                                                         {"stall", FaultMode::kStall},
                                                         {"gateway_5xx", FaultMode::kGateway5xx}};
  auto it = kModes.find(name);
  if (it == kModes.end()) return false;
  *mode = it->second;
  return true;
}

FakeTelegram::FakeTelegram(Options options)
    : options_(std::move(options)),
      server_(std::make_unique<httplib::Server>()),
      random_(std::random_device{}()) {}

FakeTelegram::~FakeTelegram() { Stop(); }

std::string FakeTelegram::base_url() const {
  return absl::StrCat("http://", options_.host, ":", port_);
}

absl::Status FakeTelegram::Start() {
  server_->Post(R"(/bot([^/]*)/sendMessage)",
                [this](const httplib::Request& req, httplib::Response& res) { HandleSend(req, res); });
  auto get_me = [this](const httplib::Request& req, httplib::Response& res) {
    if (!options_.token.empty() && req.matches[1] != options_.token) {
      ReplyError(res, 401, "Unauthorized");
      return;
    }
    Reply(res, 200,
          json{{"ok", true},
               {"result",
                {{"id", 1}, {"is_bot", true}, {"first_name", "Fake Concert Bot"},
                 {"username", options_.bot_username}}}});
  };
  server_->Get(R"(/bot([^/]*)/getMe)", get_me);
  server_->Post(R"(/bot([^/]*)/getMe)", get_me);
  auto get_updates = [this](const httplib::Request& req, httplib::Response& res) {
    HandleGetUpdates(req, res);
  };
  server_->Get(R"(/bot([^/]*)/getUpdates)", get_updates);
  server_->Post(R"(/bot([^/]*)/getUpdates)", get_updates);
  server_->Post("/control/updates", [this](const httplib::Request& req, httplib::Response& res) {
    json body = json::parse(req.body, nullptr, /*allow_exceptions=*/false);
    if (!body.is_object() || !body.contains("chat_id") || !body["chat_id"].is_number_integer() ||
        !body.contains("text") || !body["text"].is_string()) {
      Reply(res, 400, json{{"ok", false},
                           {"description", "want {\"chat_id\": N, \"text\": \"..\"}"}});
      return;
    }
    int64_t id = InjectUserMessage(body["chat_id"].get<int64_t>(), body["text"].get<std::string>());
    Reply(res, 200, json{{"ok", true}, {"update_id", id}});
  });
  server_->Post("/control/fail",
                [this](const httplib::Request& req, httplib::Response& res) { HandleFail(req, res); });
  server_->Get("/control/messages", [this](const httplib::Request& req, httplib::Response& res) {
    json all = json::array();
    bool one_chat = req.has_param("chat_id");
    for (const TelegramMessage& m :
         one_chat ? MessagesTo(req.get_param_value("chat_id")) : messages()) {
      all.push_back(ToJson(m));
    }
    Reply(res, 200, all);
  });
  server_->Get("/control/stats", [this](const httplib::Request&, httplib::Response& res) {
    std::lock_guard lock(mu_);
    const RateLimited& r = rate_limited_;
    Reply(res, 200,
          json{{"requests", requests_},
               {"accepted", messages_.size()},
               {"faulted", faulted_},
               {"rate_limited",
                {{"bot", r.bot},
                 {"paid_bot", r.paid_bot},
                 {"chat", r.chat},
                 {"group", r.group},
                 {"blocked", r.blocked},
                 {"total", r.total()}}},
               {"slow_answers", slow_answers_},
               {"in_flight", in_flight_},
               {"peak_in_flight", peak_in_flight_},
               {"get_updates", get_updates_},
               {"conflicts", conflicts_}});
  });
  server_->Post("/control/reset", [this](const httplib::Request&, httplib::Response& res) {
    Reset();
    Reply(res, 200, json{{"ok", true}});
  });

  // Many clients at once: a pool as large as the connections we mean to serve (each kept-alive
  // connection holds a thread), connections kept for many requests (cpp-httplib closes one after
  // 5 by default), and a listen backlog that does not drop a burst of connects. An idle
  // kept-alive connection still holds its thread for cpp-httplib's 5 s keep-alive timeout, which
  // Stop() waits for too.
  const size_t threads = static_cast<size_t>(std::max(1, options_.threads));
  server_->new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  server_->set_keep_alive_max_count(1000000);
  // Without it a kept-alive connection waits for the client's delayed ACK (40 ms) per answer.
  server_->set_tcp_nodelay(true);
  int listen_fd = -1;
  server_->set_socket_options([&listen_fd](int fd) {
    httplib::default_socket_options(fd);
    listen_fd = fd;
  });
  if (options_.port == 0) {
    port_ = server_->bind_to_any_port(options_.host);
    if (port_ <= 0) return absl::UnavailableError("fake telegram: cannot bind a port");
  } else {
    if (!server_->bind_to_port(options_.host, options_.port)) {
      return absl::UnavailableError(absl::StrCat("fake telegram: cannot bind port ", options_.port));
    }
    port_ = options_.port;
  }
  // Listening again on a listening socket only changes its backlog.
  if (listen_fd >= 0) ::listen(listen_fd, kListenBacklog);
  server_->set_socket_options(httplib::default_socket_options);
  thread_ = std::thread([this] { server_->listen_after_bind(); });
  // listen_after_bind() marks the server running from its thread; wait for it (bounded).
  for (int i = 0; i < 500 && !server_->is_running(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return absl::OkStatus();
}

void FakeTelegram::Stop() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  stop_cv_.notify_all();
  updates_cv_.notify_all();
  server_->stop();
  if (thread_.joinable()) thread_.join();
}

void FakeTelegram::SetFault(const Fault& fault) {
  std::lock_guard lock(mu_);
  if (fault.chat_id.empty()) {
    if (fault.mode == FaultMode::kOff) {
      any_chat_fault_.reset();
      chat_faults_.clear();
    } else {
      any_chat_fault_ = fault;
    }
  } else if (fault.mode == FaultMode::kOff) {
    chat_faults_.erase(fault.chat_id);
  } else {
    chat_faults_[fault.chat_id] = fault;
  }
}

void FakeTelegram::ClearFaults() {
  std::lock_guard lock(mu_);
  any_chat_fault_.reset();
  chat_faults_.clear();
}

void FakeTelegram::Reset() {
  std::lock_guard lock(mu_);
  any_chat_fault_.reset();
  chat_faults_.clear();
  messages_.clear();
  requests_ = 0;
  faulted_ = 0;
  slow_answers_ = 0;
  peak_in_flight_ = in_flight_;
  rate_limited_ = {};
  bots_.clear();
  updates_.clear();
  update_ids_.clear();
  conflicts_ = 0;
  get_updates_ = 0;
}

std::vector<TelegramMessage> FakeTelegram::messages() const {
  std::lock_guard lock(mu_);
  return messages_;
}

std::vector<TelegramMessage> FakeTelegram::MessagesTo(const std::string& chat_id) const {
  std::lock_guard lock(mu_);
  std::vector<TelegramMessage> out;
  for (const TelegramMessage& m : messages_) {
    if (m.chat_id == chat_id) out.push_back(m);
  }
  return out;
}

int64_t FakeTelegram::InjectUserMessage(int64_t chat_id, const std::string& text) {
  int64_t id;
  {
    std::lock_guard lock(mu_);
    id = next_update_id_++;
    json chat{{"id", chat_id}, {"type", "private"}, {"first_name", "Fan"}};
    json update{{"update_id", id},
                {"message",
                 {{"message_id", id},
                  {"date", absl::ToUnixSeconds(absl::Now())},
                  {"from", {{"id", chat_id}, {"is_bot", false}, {"first_name", "Fan"}}},
                  {"chat", chat},
                  {"text", text}}}};
    updates_.push_back(update.dump());
    update_ids_.push_back(id);
  }
  updates_cv_.notify_all();
  return id;
}

int FakeTelegram::get_updates() const {
  std::lock_guard lock(mu_);
  return get_updates_;
}

int FakeTelegram::conflicts() const {
  std::lock_guard lock(mu_);
  return conflicts_;
}

void FakeTelegram::HandleGetUpdates(const httplib::Request& req, httplib::Response& res) {
  std::string token = req.matches.size() > 1 ? std::string(req.matches[1]) : "";
  if (!options_.token.empty() && token != options_.token) {
    ReplyError(res, 401, "Unauthorized");
    return;
  }
  int64_t offset = 0;
  int64_t timeout = 0;
  json body = json::parse(req.body, nullptr, /*allow_exceptions=*/false);
  auto param = [&](const std::string& name, int64_t* out) {
    if (body.is_object() && body.contains(name) && body[name].is_number_integer()) {
      *out = body[name].get<int64_t>();
    } else if (req.has_param(name)) {
      absl::SimpleAtoi(req.get_param_value(name), out);
    } else if (absl::StartsWith(req.get_header_value("Content-Type"),
                                "application/x-www-form-urlencoded")) {
      auto form = ParseForm(req.body);
      if (auto it = form.find(name); it != form.end()) absl::SimpleAtoi(it->second, out);
    }
  };
  param("offset", &offset);
  param("timeout", &timeout);
  std::unique_lock lock(mu_);
  ++get_updates_;
  // The newest request is the poll; an older one still waiting ends with 409 (below).
  const int64_t poll = ++current_poll_;
  updates_cv_.notify_all();
  // Acknowledged updates are forgotten, as Telegram does.
  while (!update_ids_.empty() && update_ids_.front() < offset) {
    update_ids_.erase(update_ids_.begin());
    updates_.erase(updates_.begin());
  }
  updates_cv_.wait_for(lock, std::chrono::seconds(std::max<int64_t>(timeout, 0)), [&] {
    return stopping_ || !updates_.empty() || current_poll_ != poll;
  });
  if (current_poll_ != poll) {
    ++conflicts_;
    lock.unlock();
    ReplyError(res, 409,
               "Conflict: terminated by other getUpdates request; make sure that only one bot "
               "instance is running");
    return;
  }
  json result = json::array();
  for (const std::string& u : updates_) result.push_back(json::parse(u));
  lock.unlock();
  Reply(res, 200, json{{"ok", true}, {"result", result}});
}

int FakeTelegram::requests() const {
  std::lock_guard lock(mu_);
  return requests_;
}

int FakeTelegram::faulted() const {
  std::lock_guard lock(mu_);
  return faulted_;
}

int FakeTelegram::accepted() const {
  std::lock_guard lock(mu_);
  return static_cast<int>(messages_.size());
}

int FakeTelegram::slow_answers() const {
  std::lock_guard lock(mu_);
  return slow_answers_;
}

RateLimited FakeTelegram::rate_limited() const {
  std::lock_guard lock(mu_);
  return rate_limited_;
}

int FakeTelegram::peak_in_flight() const {
  std::lock_guard lock(mu_);
  return peak_in_flight_;
}

absl::Duration FakeTelegram::SampleLatency() {
  const Profile& p = options_.profile;
  if (p.latency_median <= absl::ZeroDuration()) return absl::ZeroDuration();
  absl::Duration latency = p.latency_median;
  if (p.latency_spread > 0) {
    latency *= std::exp(p.latency_spread * std::normal_distribution<double>(0, 1)(random_));
  }
  if (p.latency_max > absl::ZeroDuration()) latency = std::min(latency, p.latency_max);
  return latency;
}

FakeTelegram::Admission FakeTelegram::Admit(const std::string& token, const std::string& chat_id,
                                            bool paid, absl::Time now) {
  const Profile& p = options_.profile;
  Bot& bot = bots_[token];
  if (now < bot.blocked_until) {
    return {Scope::kBlocked, WholeSecondsAtLeastOne(bot.blocked_until - now)};
  }
  struct Need {
    Bucket* bucket;
    double per_second;
    double capacity;
    Scope scope;
  };
  std::vector<Need> needs;
  double bot_rate = paid ? p.paid_bot_per_second : p.bot_per_second;
  if (bot_rate > 0) {
    double capacity = std::max(1, paid ? p.paid_bot_burst : p.bot_burst);
    std::optional<Bucket>& b = paid ? bot.paid : bot.bot;
    if (!b) b = Bucket{capacity, now};
    needs.push_back({&*b, bot_rate, capacity, paid ? Scope::kPaidBot : Scope::kBot});
  }
  bool group = IsGroupChat(chat_id);
  double chat_rate = group ? p.group_per_minute / 60 : p.chat_per_second;
  if (chat_rate > 0) {
    double capacity = std::max(1, group ? p.group_burst : p.chat_burst);
    Bucket& b = bot.chats.try_emplace(chat_id, Bucket{capacity, now}).first->second;
    needs.push_back({&b, chat_rate, capacity, group ? Scope::kGroup : Scope::kChat});
  }

  Admission admission;
  double longest_wait = 0;  // seconds
  for (Need& n : needs) {
    double elapsed = std::max(0.0, absl::ToDoubleSeconds(now - n.bucket->updated));
    n.bucket->tokens = std::min(n.capacity, n.bucket->tokens + elapsed * n.per_second);
    n.bucket->updated = now;
    if (n.bucket->tokens < 1) {
      double wait = (1 - n.bucket->tokens) / n.per_second;
      if (wait > longest_wait) longest_wait = wait, admission.refused_by = n.scope;
    }
  }
  if (admission.refused_by != Scope::kNone) {
    // Nothing taken; the whole bot waits, as Telegram's flood wait is read by careful clients.
    admission.retry_after_seconds = WholeSecondsAtLeastOne(absl::Seconds(longest_wait));
    bot.blocked_until = now + absl::Seconds(admission.retry_after_seconds);
    return admission;
  }
  for (Need& n : needs) n.bucket->tokens -= 1;

  // A bench may write to many chats once each: forget the buckets that have refilled (an absent
  // bucket is a full one) whenever the map has doubled since the last sweep.
  if (bot.chats.size() > bot.prune_at) {
    for (auto it = bot.chats.begin(); it != bot.chats.end();) {
      bool is_group = IsGroupChat(it->first);
      double rate = is_group ? p.group_per_minute / 60 : p.chat_per_second;
      double capacity = std::max(1, is_group ? p.group_burst : p.chat_burst);
      double elapsed = std::max(0.0, absl::ToDoubleSeconds(now - it->second.updated));
      if (it->second.tokens + elapsed * rate >= capacity) {
        it = bot.chats.erase(it);
      } else {
        ++it;
      }
    }
    bot.prune_at = std::max<size_t>(1024, 2 * bot.chats.size());
  }
  return admission;
}

std::optional<Fault> FakeTelegram::TakeFault(const std::string& chat_id) {
  std::lock_guard lock(mu_);
  auto take = [&](Fault& f) -> std::optional<Fault> {
    Fault copy = f;
    if (f.count > 0 && --f.count == 0) f.mode = FaultMode::kOff;  // used up
    return copy;
  };
  auto it = chat_faults_.find(chat_id);
  if (it != chat_faults_.end() && it->second.mode != FaultMode::kOff) return take(it->second);
  if (any_chat_fault_ && any_chat_fault_->mode != FaultMode::kOff) return take(*any_chat_fault_);
  return std::nullopt;
}

void FakeTelegram::Stall(absl::Duration d) {
  std::unique_lock lock(mu_);
  stop_cv_.wait_for(lock, absl::ToChronoMilliseconds(d), [&] { return stopping_; });
}

void FakeTelegram::HandleSend(const httplib::Request& req, httplib::Response& res) {
  InFlight in_flight(this);
  absl::Time received_at = absl::Now();
  absl::Duration latency;
  {
    std::lock_guard lock(mu_);
    latency = SampleLatency();
  }
  // The request's way to Telegram and back, for every answer; the limits are decided after it.
  if (latency > absl::ZeroDuration()) Stall(latency);

  std::string token = req.matches.size() > 1 ? std::string(req.matches[1]) : "";
  std::string chat_id, text;
  bool have_chat = false, have_text = false, paid = false;
  std::string content_type = req.get_header_value("Content-Type");
  if (absl::StartsWith(content_type, "application/x-www-form-urlencoded")) {
    auto form = ParseForm(req.body);
    if (auto it = form.find("chat_id"); it != form.end()) chat_id = it->second, have_chat = true;
    if (auto it = form.find("text"); it != form.end()) text = it->second, have_text = true;
    if (auto it = form.find("allow_paid_broadcast"); it != form.end()) {
      paid = absl::EqualsIgnoreCase(it->second, "true");
    }
  } else {
    json body = json::parse(req.body, nullptr, /*allow_exceptions=*/false);
    if (body.is_discarded() || !body.is_object()) {
      ReplyError(res, 400, "Bad Request: can't parse JSON body");
      return;
    }
    if (body.contains("chat_id")) {
      const json& c = body["chat_id"];
      if (c.is_string()) chat_id = c.get<std::string>(), have_chat = true;
      if (c.is_number_integer()) chat_id = std::to_string(c.get<int64_t>()), have_chat = true;
    }
    if (body.contains("text") && body["text"].is_string()) {
      text = body["text"].get<std::string>();
      have_text = true;
    }
    paid = body.contains("allow_paid_broadcast") && body["allow_paid_broadcast"].is_boolean() &&
           body["allow_paid_broadcast"].get<bool>();
  }
  if (!options_.token.empty() && token != options_.token) {
    ReplyError(res, 401, "Unauthorized");
    return;
  }
  if (!have_chat || chat_id.empty()) {
    ReplyError(res, 400, "Bad Request: chat_id is empty");
    return;
  }
  if (!have_text || text.empty()) {
    ReplyError(res, 400, "Bad Request: message text is empty");
    return;
  }

  // Set for kGateway5xx: the status the gateway answers once the message is delivered.
  int gateway_status = 0;
  if (std::optional<Fault> fault = TakeFault(chat_id)) {
    if (fault->mode != FaultMode::kStall) {
      std::lock_guard lock(mu_);
      ++faulted_;
    }
    switch (fault->mode) {
      case FaultMode::k5xx:
        ReplyError(res, fault->status, "Internal Server Error (injected)");
        return;
      case FaultMode::k429:
        ReplyError(res, 429,
                   absl::StrCat("Too Many Requests: retry after ", fault->retry_after_seconds),
                   json{{"retry_after", fault->retry_after_seconds}});
        return;
      case FaultMode::k400:
        ReplyError(res, 400, "Bad Request: message text is malformed (injected)");
        return;
      case FaultMode::kChatNotFound:
        ReplyError(res, 400, "Bad Request: chat not found");
        return;
      case FaultMode::k403:
        ReplyError(res, 403, "Forbidden: bot was blocked by the user");
        return;
      case FaultMode::kStall:
        Stall(fault->stall);
        break;  // then answer normally: the caller may have given up by now
      case FaultMode::kGateway5xx:
        gateway_status = fault->status;
        break;  // delivered below, then the gateway's page instead of the answer
      case FaultMode::kOff:
        break;
    }
  }

  TelegramMessage message{chat_id, text, token, received_at, absl::InfinitePast(), paid};
  int64_t message_id;
  bool slow = false;
  {
    std::lock_guard lock(mu_);
    if (stopping_) {
      ReplyError(res, 503, "Service Unavailable: stopping");
      return;
    }
    message.accepted_at = absl::Now();
    Admission admission = Admit(token, chat_id, paid, message.accepted_at);
    switch (admission.refused_by) {
      case Scope::kNone: break;
      case Scope::kBot: ++rate_limited_.bot; break;
      case Scope::kPaidBot: ++rate_limited_.paid_bot; break;
      case Scope::kChat: ++rate_limited_.chat; break;
      case Scope::kGroup: ++rate_limited_.group; break;
      case Scope::kBlocked: ++rate_limited_.blocked; break;
    }
    if (admission.refused_by != Scope::kNone) {
      ReplyError(res, 429,
                 absl::StrCat("Too Many Requests: retry after ", admission.retry_after_seconds),
                 json{{"retry_after", admission.retry_after_seconds}});
      return;
    }
    message_id = next_message_id_++;
    messages_.push_back(message);
    if (!options_.record_path.empty()) {
      std::ofstream out(options_.record_path, std::ios::app);
      out << ToJson(message).dump() << "\n";
      out.flush();
    }
    double p = options_.profile.slow_answer_probability;
    slow = p > 0 && std::uniform_real_distribution<double>(0, 1)(random_) < p;
    if (slow) ++slow_answers_;
  }
  // Delivered, but the answer comes after the client has given up.
  if (slow) Stall(options_.profile.slow_answer_delay);
  if (gateway_status != 0) {
    res.status = gateway_status;
    res.set_content(absl::StrCat("<html><head><title>", gateway_status,
                                 "</title></head><body><center><h1>", gateway_status,
                                 " Gateway Error</h1></center><hr><center>nginx</center></body>"
                                 "</html>\n"),
                    "text/html");
    return;
  }
  json chat_json = chat_id;
  int64_t numeric_chat;
  if (absl::SimpleAtoi(chat_id, &numeric_chat)) chat_json = numeric_chat;
  Reply(res, 200,
        json{{"ok", true},
             {"result",
              {{"message_id", message_id},
               {"date", absl::ToUnixSeconds(message.accepted_at)},
               {"chat", {{"id", chat_json}}},
               {"text", text}}}});
}

void FakeTelegram::HandleFail(const httplib::Request& req, httplib::Response& res) {
  json body = json::parse(req.body, nullptr, /*allow_exceptions=*/false);
  if (body.is_discarded() || !body.is_object() || !body.contains("mode") ||
      !body["mode"].is_string()) {
    Reply(res, 400,
          json{{"ok", false},
               {"description",
                "want {\"mode\": \"5xx|gateway_5xx|429|400|403|chat_not_found|stall|off\"}"}});
    return;
  }
  Fault fault;
  if (!ParseFaultMode(body["mode"].get<std::string>(), &fault.mode)) {
    Reply(res, 400, json{{"ok", false}, {"description", "unknown mode"}});
    return;
  }
  fault.count = body.value("count", 0);
  fault.status = body.value("status", 500);
  fault.retry_after_seconds = body.value("retry_after", 1);
  fault.stall = absl::Milliseconds(body.value("stall_ms", 5000));
  if (body.contains("chat_id")) {
    const json& c = body["chat_id"];
    fault.chat_id = c.is_string() ? c.get<std::string>() : c.dump();
  }
  SetFault(fault);
  Reply(res, 200, json{{"ok", true}});
}

}  // namespace concert::testing
