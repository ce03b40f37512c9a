#include "tests/e2e/system.h"

#include <signal.h>
#include <sys/wait.h>

#include <regex>

#include <pqxx/pqxx>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "common/backoff.h"
#include "common/grpc_server.h"
#include "common/jwt.h"

namespace concert::e2e {
namespace {

using testing::BinaryPath;
using testing::ChildProcess;
using testing::FreePort;
using testing::UniqueName;
using testing::WaitUntil;

std::string Loopback(int port) { return absl::StrCat("127.0.0.1:", port); }

// Runs `binary args` to completion (bounded); OK iff it exited 0.
absl::Status RunToCompletion(const std::string& binary, const std::vector<std::string>& args,
                             const std::map<std::string, std::string>& env) {
  ChildProcess child(BinaryPath(binary), args, env);
  if (!WaitUntil([&] { return !child.running(); }, absl::Seconds(120))) {
    return absl::DeadlineExceededError(
        absl::StrCat(binary, " ", absl::StrJoin(args, " "), " did not finish; ", child.log_path()));
  }
  int status = child.Stop(SIGKILL);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    return absl::InternalError(absl::StrCat(binary, " ", absl::StrJoin(args, " "),
                                            " failed: ", child.ReadLog()));
  }
  return absl::OkStatus();
}

}  // namespace

const char* ServiceName(Service service) {
  switch (service) {
    case Service::kPaymentServer: return "payment-server";
    case Service::kRelay: return "outbox-relay";
    case Service::kNotifier: return "notifier";
    case Service::kRetryWorker: return "retry-worker";
  }
  return "?";
}

System::System(SystemOptions options)
    : options_(std::move(options)),
      topic_(UniqueName("e2e_payments")),
      dlq_topic_(UniqueName("e2e_dlq")),
      notifier_group_(UniqueName("e2e_notifier")),
      retry_group_(UniqueName("e2e_retry")),
      slot_(UniqueName("e2e_slot")),
      publication_(UniqueName("e2e_pub")),
      auth_secret_(testing::UniqueSecret("secret")),
      admin_token_(UniqueName("admin")),
      internal_token_(testing::UniqueSecret("internal")),
      bot_token_(UniqueName("bot")) {
  testing::FakeTelegram::Options fake;
  fake.token = bot_token_;
  fake.bot_username = kBotUsername;
  fake.profile = options_.telegram;
  telegram_ = std::make_unique<testing::FakeTelegram>(fake);
  auto add = [&](Service service, int index) {
    Instance instance;
    instance.service = service;
    instance.index = index;
    instance.grpc_address = Loopback(FreePort());
    instance.metrics_address = Loopback(FreePort());
    if (service == Service::kPaymentServer) instance.internal_address = Loopback(FreePort());
    instances_.push_back(std::move(instance));
  };
  add(Service::kPaymentServer, 0);
  add(Service::kRelay, 0);
  for (int i = 0; i < options_.notifiers; ++i) add(Service::kNotifier, i);
  add(Service::kRetryWorker, 0);
}

System::~System() {
  // Reverse order: consumers first, so nothing is mid-send when the fake goes away.
  for (auto it = instances_.rbegin(); it != instances_.rend(); ++it) it->process.reset();
  telegram_->Stop();
}

System::Instance& System::Find(Service service, int index) {
  for (Instance& instance : instances_) {
    if (instance.service == service && instance.index == index) return instance;
  }
  std::abort();  // a test asked for an instance it did not configure
}

std::vector<System::MetricsTarget> System::MetricsTargets() const {
  std::vector<MetricsTarget> targets;
  for (const Instance& instance : instances_) {
    targets.push_back({ServiceName(instance.service), instance.index, instance.metrics_address});
  }
  return targets;
}

std::string System::payment_address() const { return instances_[0].grpc_address; }

std::string System::admin_address() const { return instances_.back().grpc_address; }

std::map<std::string, std::string> System::EnvFor(const Instance& instance) const {
  std::map<std::string, std::string> env = {
      {"DATABASE_URL", options_.database_url},
      {"KAFKA_BOOTSTRAP_SERVERS", options_.kafka_bootstrap},
      {"GRPC_ADDRESS", instance.grpc_address},
      {"METRICS_ADDRESS", instance.metrics_address},
      {"LOG_LEVEL", "info"},
      {"PAYMENT_COMPLETED_TOPIC", topic_},
      {"DLQ_TOPIC", dlq_topic_},
  };
  const std::map<std::string, std::string>* extra = nullptr;
  switch (instance.service) {
    case Service::kPaymentServer:
      env["AUTH_TOKEN_SECRET"] = auth_secret_;
      env["INTERNAL_TOKEN"] = internal_token_;
      env["INTERNAL_GRPC_ADDRESS"] = instance.internal_address;
      env["TELEGRAM_BOT_USERNAME"] = kBotUsername;
      extra = &options_.payment_env;
      break;
    case Service::kRelay:
      env["REPLICATION_SLOT"] = slot_;
      env["PUBLICATION"] = publication_;
      env["BACKOFF_MAX"] = "2s";
      extra = &options_.relay_env;
      break;
    case Service::kNotifier:
      env["KAFKA_GROUP_ID"] = notifier_group_;
      env["TELEGRAM_API_BASE"] = telegram_->base_url();
      env["TELEGRAM_BOT_TOKEN"] = bot_token_;
      env["TELEGRAM_CHAT_ID"] = kChatId;
      env["TELEGRAM_RETRIES"] = "1";
      env["TELEGRAM_RETRY_BACKOFF"] = "200ms";
      env["NOTIFICATIONS_FILE"] = "/dev/null";
      env["PAYMENT_SERVER_ADDRESS"] = instances_[0].internal_address;
      env["INTERNAL_TOKEN"] = internal_token_;
      // Short long polls: a poller notices a stop or a lost lock within this long.
      env["TELEGRAM_POLL_TIMEOUT"] = "2s";
      extra = &options_.notifier_env;
      break;
    case Service::kRetryWorker:
      env["KAFKA_GROUP_ID"] = retry_group_;
      env["ADMIN_TOKEN"] = admin_token_;
      env["RETRY_INTERVAL"] = "1s";
      env["RETRY_MAX_ATTEMPTS"] = "3";
      env["RETRY_BACKOFF_BASE"] = "1s";
      env["RETRY_BACKOFF_CAP"] = "4s";
      extra = &options_.retry_env;
      break;
  }
  for (const auto& [name, value] : *extra) env[name] = value;
  return env;
}

absl::Status System::Seed() {
  pqxx::connection conn(options_.database_url);
  pqxx::work tx(conn);
  seeded_.concert_title = "E2E Concert: Exactly Once";
  int64_t concert = tx.exec_params1("INSERT INTO payment.concerts (title) VALUES ($1) RETURNING id",
                                    seeded_.concert_title)[0]
                        .as<int64_t>();
  int64_t schedule =
      tx.exec_params1(
            "INSERT INTO payment.schedules (concert_id, starts_at) "
            "VALUES ($1, date_trunc('second', now()) + interval '30 days') RETURNING id",
            concert)[0]
          .as<int64_t>();
  pqxx::row seats = tx.exec_params1(
      "WITH s AS (INSERT INTO payment.seats (schedule_id, seat_number, price_won) "
      "SELECT $1, g, $2 FROM generate_series(1, $3) g RETURNING id) "
      "SELECT min(id), max(id), count(*) FROM s",
      schedule, options_.seat_price_won, options_.seats);
  seeded_.first_seat = seats[0].as<int64_t>();
  seeded_.last_seat = seats[1].as<int64_t>();
  if (seats[2].as<int64_t>() != seeded_.last_seat - seeded_.first_seat + 1) {
    return absl::InternalError("seat ids are not contiguous");
  }
  auto add_user = [&](const std::string& name, int64_t balance) {
    User user;
    user.mail = absl::StrCat(name, "@example.test");
    user.id = tx.exec_params1(
                    "INSERT INTO payment.users (name, mail, balance_won) VALUES ($1, $2, $3) "
                    "RETURNING id",
                    name, user.mail, balance)[0]
                  .as<int64_t>();
    user.token = jwt::MintHs256(auth_secret_,
                                {.subject = absl::StrCat(user.id),
                                 .expires_at = absl::Now() + absl::Hours(24)},
                                absl::Now());
    if (options_.link_chats) {
      user.chat_id = 7'000'000 + user.id;
      tx.exec_params("INSERT INTO payment.telegram_links (user_id, chat_id) VALUES ($1, $2)",
                     user.id, user.chat_id);
    }
    seeded_.users.push_back(user);
  };
  for (int i = 1; i <= options_.users; ++i) add_user(absl::StrCat("fan", i), options_.balance_won);
  if (options_.poor_user_payments > 0) {
    add_user("poorfan", options_.seat_price_won * options_.poor_user_payments);
  }
  tx.commit();
  next_seat_ = seeded_.first_seat;
  return absl::OkStatus();
}

absl::Status System::Start() {
  if (absl::Status s = telegram_->Start(); !s.ok()) return s;
  std::map<std::string, std::string> migrate_env = EnvFor(instances_[0]);
  if (absl::Status s = RunToCompletion("payment-server", {"migrate"}, migrate_env); !s.ok()) {
    return s;
  }
  try {
    if (absl::Status s = Seed(); !s.ok()) return s;
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("seeding: ", e.what()));
  }
  for (Instance& instance : instances_) Restart(instance.service, instance.index);
  if (!WaitHealthy(absl::Seconds(90))) {
    return absl::DeadlineExceededError(absl::StrCat(
        "services did not all become SERVING within 90 s:", NotServing(), "\nlogs: ", LogPaths()));
  }
  return absl::OkStatus();
}

std::string System::NotServing() {
  std::string report;
  for (Instance& instance : instances_) {
    int health = testing::HealthStatus(instance.grpc_address);
    if (health == 1) continue;
    absl::StrAppend(&report, "\n  ", ServiceName(instance.service), "[", instance.index,
                    "]: ", health == 2 ? "NOT_SERVING" : "no answer", "; its last lines:");
    std::string log = instance.process == nullptr ? "" : instance.process->ReadLog();
    std::vector<absl::string_view> lines = absl::StrSplit(log, '\n', absl::SkipEmpty());
    size_t from = lines.size() > 12 ? lines.size() - 12 : 0;
    for (size_t i = from; i < lines.size(); ++i) absl::StrAppend(&report, "\n    ", lines[i]);
  }
  return report;
}

void System::Kill(Service service, int index) {
  Instance& instance = Find(service, index);
  if (instance.process == nullptr) return;
  instance.process->Stop(SIGKILL, absl::Seconds(10));
  instance.old_logs.push_back(instance.process->log_path());
  instance.process.reset();
}

void System::Stop(Service service, int index) {
  Instance& instance = Find(service, index);
  if (instance.process == nullptr) return;
  instance.process->Stop(SIGTERM, absl::Seconds(15));
  instance.old_logs.push_back(instance.process->log_path());
  instance.process.reset();
}

void System::Restart(Service service, int index) {
  Instance& instance = Find(service, index);
  if (instance.process != nullptr) {
    instance.process->Stop(SIGTERM, absl::Seconds(15));
    instance.old_logs.push_back(instance.process->log_path());
  }
  instance.process =
      std::make_unique<ChildProcess>(BinaryPath(ServiceName(service)), std::vector<std::string>{},
                                     EnvFor(instance));
}

void System::Signal(Service service, int index, int signal) {
  Instance& instance = Find(service, index);
  if (instance.process != nullptr) kill(instance.process->pid(), signal);
}

std::vector<std::string> System::CheckUnexpectedExits() {
  std::vector<std::string> dead;
  for (Instance& instance : instances_) {
    if (instance.process != nullptr && !instance.process->running()) {
      dead.push_back(absl::StrCat(ServiceName(instance.service), "#", instance.index, " (log ",
                                  instance.process->log_path(), ")"));
      Restart(instance.service, instance.index);
    }
  }
  return dead;
}

double System::Metric(Service service, int index, const std::string& name,
                      const std::string& label_filter) {
  const std::string& address = Find(service, index).metrics_address;
  return testing::ScrapeMetric(std::stoi(address.substr(address.rfind(':') + 1)), name,
                               label_filter);
}

int System::Health(Service service, int index) {
  return testing::HealthStatus(Find(service, index).grpc_address);
}

bool System::WaitHealthy(absl::Duration timeout) {
  return WaitUntil(
      [&] {
        for (Instance& instance : instances_) {
          if (testing::HealthStatus(instance.grpc_address) != 1) return false;
        }
        return true;
      },
      timeout, absl::Milliseconds(500));
}

std::string System::Log(Service service, int index) {
  const Instance& instance = Find(service, index);
  return instance.process == nullptr ? "" : instance.process->ReadLog();
}

std::vector<std::string> System::LogFiles() const {
  std::vector<std::string> paths;
  for (const Instance& instance : instances_) {
    for (const std::string& old : instance.old_logs) paths.push_back(old);
    if (instance.process != nullptr) paths.push_back(instance.process->log_path());
  }
  return paths;
}

std::string System::LogPaths() const { return absl::StrJoin(LogFiles(), " "); }

int64_t System::NextSeat() {
  int64_t seat = next_seat_.fetch_add(1);
  return seat <= seeded_.last_seat ? seat : 0;
}

int64_t ReservationIn(const std::string& text) {
  static const std::regex kReservation("(?:Reservation|예약 번호): #([0-9]+)");
  std::smatch match;
  return std::regex_search(text, match, kReservation) ? std::stoll(match[1].str()) : 0;
}

std::map<int64_t, int> System::MessagesByReservation() const {
  std::map<int64_t, int> counts;
  for (const testing::TelegramMessage& m : telegram_->messages()) ++counts[ReservationIn(m.text)];
  return counts;
}

PaymentClient::PaymentClient(const std::string& address, absl::Duration call_timeout,
                             absl::Duration pay_retry_for)
    : channel_(grpc::CreateChannel(address, grpc::InsecureChannelCredentials())),
      reservations_(v1::ReservationService::NewStub(channel_)),
      payments_(v1::PaymentService::NewStub(channel_)),
      accounts_(v1::AccountService::NewStub(channel_)),
      call_timeout_(call_timeout),
      pay_retry_for_(pay_retry_for) {}

grpc::Status PaymentClient::Reserve(const User& user, int64_t seat_id,
                                    v1::Reservation* reservation) {
  grpc::ClientContext context;
  context.set_deadline(Deadline(call_timeout_));
  context.AddMetadata("authorization", absl::StrCat("Bearer ", user.token));
  v1::ReserveSeatRequest request;
  request.set_seat_id(seat_id);
  return reservations_->ReserveSeat(&context, request, reservation);
}

grpc::Status PaymentClient::Pay(const User& user, int64_t reservation_id, v1::Payment* payment) {
  grpc::ClientContext context;
  context.set_deadline(Deadline(call_timeout_));
  context.AddMetadata("authorization", absl::StrCat("Bearer ", user.token));
  v1::PayConcertRequest request;
  request.set_reservation_id(reservation_id);
  return payments_->PayConcert(&context, request, payment);
}

grpc::Status PaymentClient::LinkTelegram(const User& user, v1::TelegramLink* link) {
  grpc::ClientContext context;
  context.set_deadline(Deadline(call_timeout_));
  context.AddMetadata("authorization", absl::StrCat("Bearer ", user.token));
  return accounts_->LinkTelegram(&context, v1::LinkTelegramRequest(), link);
}

grpc::Status PaymentClient::GetAccount(const User& user, v1::Account* account) {
  grpc::ClientContext context;
  context.set_deadline(Deadline(call_timeout_));
  context.AddMetadata("authorization", absl::StrCat("Bearer ", user.token));
  return accounts_->GetAccount(&context, v1::GetAccountRequest(), account);
}

grpc::Status PaymentClient::UnlinkTelegram(const User& user,
                                           v1::UnlinkTelegramResponse* response) {
  grpc::ClientContext context;
  context.set_deadline(Deadline(call_timeout_));
  context.AddMetadata("authorization", absl::StrCat("Bearer ", user.token));
  return accounts_->UnlinkTelegram(&context, v1::UnlinkTelegramRequest(), response);
}

std::string StartCommand(const v1::TelegramLink& link) {
  size_t at = link.link().find("?start=");
  if (at == std::string::npos) return "/start";
  return absl::StrCat("/start ", link.link().substr(at + 7));
}

PayOutcome PaymentClient::ReserveAndPay(const User& user, int64_t seat_id) {
  PayOutcome outcome;
  outcome.user_id = user.id;
  v1::Reservation reservation;
  grpc::Status reserved = Reserve(user, seat_id, &reservation);
  if (!reserved.ok()) {
    outcome.kind = PayOutcome::Kind::kNoReservation;
    outcome.code = reserved.error_code();
    outcome.message = reserved.error_message();
    outcome.finished = absl::Now();
    return outcome;
  }
  outcome.reservation_id = reservation.reservation_id();
  absl::Time give_up = absl::Now() + pay_retry_for_;
  Backoff backoff(absl::Milliseconds(200), absl::Seconds(2));
  while (true) {
    v1::Payment payment;
    grpc::Status paid = Pay(user, outcome.reservation_id, &payment);
    ++outcome.pay_calls;
    outcome.code = paid.error_code();
    outcome.message = paid.error_message();
    if (paid.ok()) {
      outcome.kind = PayOutcome::Kind::kAcked;
      outcome.payment_id = payment.payment_id();
      outcome.finished = absl::Now();
      return outcome;
    }
    switch (paid.error_code()) {
      case grpc::StatusCode::FAILED_PRECONDITION:
      case grpc::StatusCode::PERMISSION_DENIED:
      case grpc::StatusCode::NOT_FOUND:
      case grpc::StatusCode::INVALID_ARGUMENT:
      case grpc::StatusCode::UNAUTHENTICATED:
        outcome.kind = PayOutcome::Kind::kRejected;
        outcome.finished = absl::Now();
        return outcome;
      default:
        break;  // no answer or transient: the outcome is unknown, PayConcert may be repeated
    }
    absl::Duration wait = backoff.Next();
    if (absl::Now() + wait > give_up) {
      outcome.kind = PayOutcome::Kind::kUnknown;
      outcome.finished = absl::Now();
      return outcome;
    }
    absl::SleepFor(wait);
  }
}

AdminClient::AdminClient(const std::string& address, const std::string& token)
    : channel_(grpc::CreateChannel(address, grpc::InsecureChannelCredentials())),
      stub_(ops::v1::FailedMessageService::NewStub(channel_)),
      token_(token) {}

grpc::Status AdminClient::List(ops::v1::FailedMessageStatus status,
                               std::vector<ops::v1::FailedMessage>* out) {
  out->clear();
  std::string page_token;
  for (int page = 0; page < 100; ++page) {
    grpc::ClientContext context;
    context.set_deadline(Deadline(absl::Seconds(5)));
    context.AddMetadata("authorization", absl::StrCat("Bearer ", token_));
    ops::v1::ListFailedMessagesRequest request;
    request.set_status(status);
    request.set_page_size(500);
    request.set_page_token(page_token);
    ops::v1::ListFailedMessagesResponse response;
    grpc::Status s = stub_->List(&context, request, &response);
    if (!s.ok()) return s;
    for (const ops::v1::FailedMessage& m : response.messages()) out->push_back(m);
    page_token = response.next_page_token();
    if (page_token.empty()) return grpc::Status::OK;
  }
  return grpc::Status(grpc::StatusCode::INTERNAL, "List kept returning pages");
}

grpc::Status AdminClient::Retry(int64_t id, const std::string& reason,
                                ops::v1::FailedMessage* out) {
  grpc::ClientContext context;
  context.set_deadline(Deadline(absl::Seconds(5)));
  context.AddMetadata("authorization", absl::StrCat("Bearer ", token_));
  ops::v1::RetryFailedMessageRequest request;
  request.set_id(id);
  request.set_reason(reason);
  return stub_->Retry(&context, request, out);
}

int64_t QueryInt(const std::string& url, const std::string& sql) {
  pqxx::connection conn(url);
  pqxx::nontransaction tx(conn);
  pqxx::row row = tx.exec1(sql);
  return row[0].is_null() ? 0 : row[0].as<int64_t>();
}

std::vector<std::vector<std::string>> QueryRows(const std::string& url, const std::string& sql) {
  pqxx::connection conn(url);
  pqxx::nontransaction tx(conn);
  std::vector<std::vector<std::string>> rows;
  for (const pqxx::row& row : tx.exec(sql)) {
    std::vector<std::string> fields;
    for (const pqxx::field& f : row) fields.push_back(f.is_null() ? "" : f.as<std::string>());
    rows.push_back(std::move(fields));
  }
  return rows;
}

}  // namespace concert::e2e
