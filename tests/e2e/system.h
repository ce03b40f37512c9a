// The whole system for end-to-end and fault tests: the four services as real child processes
// (payment-server, outbox-relay, one or more notifiers, retry-worker) on free loopback ports,
// wired to one Postgres database and one Kafka with topic, group and slot names of their own,
// and the fake Telegram in-process. Plus what the tests need to drive and observe it: a paying
// gRPC client, the admin API, and reads of Postgres and of the fake Telegram's record.
//
//   System system({.database_url = db.url(), .kafka_bootstrap = KafkaBootstrap()});
//   ASSERT_TRUE(system.Start().ok());
//   PaymentClient client(system);
//   PayOutcome paid = client.ReserveAndPay(system.users()[0], system.NextSeat());
//   ASSERT_TRUE(WaitUntil([&] { return system.MessagesByReservation().size() == 1; }, ...));
//
// A service can be SIGKILLed and restarted with the same settings and ports (Kill, Restart), so
// clients simply reconnect. Thread-safety: System's process control (Start, Kill, Restart,
// CheckUnexpectedExits) is for one thread; NextSeat, the queries and the fake Telegram are
// thread-safe; a PaymentClient is thread-safe (gRPC stubs are).
#ifndef CONCERT_TESTS_E2E_SYSTEM_H_
#define CONCERT_TESTS_E2E_SYSTEM_H_

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/testing/environment.h"
#include "concert/ops/v1/failed_messages.grpc.pb.h"
#include "concert/v1/account.grpc.pb.h"
#include "concert/v1/payment.grpc.pb.h"
#include "concert/v1/reservation.grpc.pb.h"
#include "tests/fake_telegram/fake_telegram.h"

namespace concert::e2e {

enum class Service { kPaymentServer, kRelay, kNotifier, kRetryWorker };
const char* ServiceName(Service service);

struct SystemOptions {
  std::string database_url;
  std::string kafka_bootstrap;
  // How many notifiers share the consumer group.
  int notifiers = 1;
  // Demo data: users with `balance_won` each, plus (when poor_user_payments > 0) one more user
  // who can afford only that many seats, so that some payments are refused.
  int users = 5;
  int64_t balance_won = 100'000'000;
  int poor_user_payments = 0;
  int seats = 1000;
  int64_t seat_price_won = 50'000;
  // Each user's Telegram chat linked at seeding (User::chat_id), so that payments go to the
  // payers' own chats instead of the operator's.
  bool link_chats = false;
  // How the fake Telegram behaves: by default like the real one (answer latency, per bot, chat
  // and group limits, 429 with retry_after), without answers slower than the notifier's timeout.
  testing::Profile telegram = testing::Profile::Telegram();
  // Extra settings per service (override the defaults below).
  std::map<std::string, std::string> payment_env, relay_env, notifier_env, retry_env;
};

// A user of the seeded data and a bearer token for it.
struct User {
  int64_t id = 0;
  std::string mail;
  std::string token;
  int64_t chat_id = 0;  // with SystemOptions::link_chats
};

struct Seeded {
  std::string concert_title;
  int64_t first_seat = 0;
  int64_t last_seat = 0;
  std::vector<User> users;  // the poor user, when there is one, is last
};

class System {
 public:
  explicit System(SystemOptions options);
  // Stops every service (SIGTERM, then SIGKILL) and the fake Telegram.
  ~System();
  System(const System&) = delete;
  System& operator=(const System&) = delete;

  // Starts the fake Telegram, migrates and seeds the payment schema, starts every service and
  // waits (bounded) until each one's health answers SERVING.
  absl::Status Start();

  // SIGKILLs one instance (`index` picks the notifier) and forgets it; Restart starts it again
  // with the same settings and ports.
  void Kill(Service service, int index = 0);
  void Restart(Service service, int index = 0);
  // Stops one instance as an orchestrator would (SIGTERM, SIGKILL if it is not gone in 15 s)
  // and forgets it; Restart starts it again. A notifier stopped so leaves its consumer group at
  // once: records published meanwhile wait in the topic for the next one, e.g. as a backlog.
  void Stop(Service service, int index = 0);
  // Sends `signal` to one running instance without waiting (SIGSTOP and SIGCONT freeze and wake
  // it, as a suspended VM or a throttled container would).
  void Signal(Service service, int index, int signal);
  // Restarts any service that exited without Kill(); returns the names of those found dead.
  std::vector<std::string> CheckUnexpectedExits();
  // 1 SERVING, 2 NOT_SERVING, -1 no answer.
  int Health(Service service, int index = 0);
  // A metric of one instance (see testing::ScrapeMetric); -1 when it does not answer.
  double Metric(Service service, int index, const std::string& name,
                const std::string& label_filter = "");
  bool WaitHealthy(absl::Duration timeout);
  // Each instance not SERVING now, with the last lines of its log; "" when all are.
  std::string NotServing();
  // Every child's log file, those of killed or restarted instances included.
  std::vector<std::string> LogFiles() const;
  // The same, space-separated, for failure messages.
  std::string LogPaths() const;
  // What one running instance has logged so far.
  std::string Log(Service service, int index = 0);
  // Every instance's metrics endpoint ("host:port"), fixed for the System's life (a restart
  // keeps it), so that a Prometheus can be pointed at them once.
  struct MetricsTarget {
    std::string service;  // ServiceName()
    int index = 0;
    std::string address;
  };
  std::vector<MetricsTarget> MetricsTargets() const;

  testing::FakeTelegram& telegram() { return *telegram_; }
  const Seeded& seeded() const { return seeded_; }
  const SystemOptions& options() const { return options_; }
  const std::string& topic() const { return topic_; }
  const std::string& dlq_topic() const { return dlq_topic_; }
  const std::string& notifier_group() const { return notifier_group_; }
  const std::string& admin_token() const { return admin_token_; }
  std::string payment_address() const;
  std::string admin_address() const;

  // A seat nobody reserved yet, or 0 when all are used.
  int64_t NextSeat();

  // Fake Telegram's accepted messages, counted per reservation id (ReservationIn); texts
  // without one are counted under id 0.
  std::map<int64_t, int> MessagesByReservation() const;

 private:
  struct Instance {
    Service service;
    int index;
    std::string grpc_address;
    std::string metrics_address;
    std::string internal_address;  // payment-server's TelegramLinkService
    std::unique_ptr<testing::ChildProcess> process;
    std::vector<std::string> old_logs;
  };
  Instance& Find(Service service, int index);
  std::map<std::string, std::string> EnvFor(const Instance& instance) const;
  absl::Status Seed();

  SystemOptions options_;
  std::unique_ptr<testing::FakeTelegram> telegram_;
  std::string topic_, dlq_topic_, notifier_group_, retry_group_, slot_, publication_;
  std::string auth_secret_, admin_token_, internal_token_, bot_token_;
  std::vector<Instance> instances_;
  Seeded seeded_;
  std::atomic<int64_t> next_seat_{0};
};

// The reservation a notification is about ("예약 번호: #<id>", or "Reservation: #<id>" in
// English); 0 when the text names none.
int64_t ReservationIn(const std::string& text);

// The operator's chat the notifiers are configured for (TELEGRAM_CHAT_ID): payers without a
// linked chat are announced there.
inline constexpr char kChatId[] = "4242";
// The fake bot's username (payment-server's TELEGRAM_BOT_USERNAME).
inline constexpr char kBotUsername[] = "e2e_concert_bot";

// What a paying client saw for one seat.
struct PayOutcome {
  enum class Kind {
    kAcked,     // PayConcert returned OK (payment_id set)
    kRejected,  // a definite refusal (e.g. FAILED_PRECONDITION: balance); must not commit
    kUnknown,   // no answer or a transient error even after retries: may or may not commit
    kNoReservation,  // ReserveSeat did not succeed; nothing to pay
  };
  Kind kind = Kind::kUnknown;
  int64_t user_id = 0;
  int64_t reservation_id = 0;
  int64_t payment_id = 0;
  int pay_calls = 0;
  absl::Time finished;  // when the client had its outcome
  grpc::StatusCode code = grpc::StatusCode::OK;
  std::string message;
};

class PaymentClient {
 public:
  // `call_timeout` bounds each call; a PayConcert that fails transiently is repeated (it is
  // idempotent) for up to `pay_retry_for`.
  PaymentClient(const std::string& address, absl::Duration call_timeout = absl::Seconds(5),
                absl::Duration pay_retry_for = absl::Seconds(20));

  PayOutcome ReserveAndPay(const User& user, int64_t seat_id);
  grpc::Status Reserve(const User& user, int64_t seat_id, v1::Reservation* reservation);
  grpc::Status Pay(const User& user, int64_t reservation_id, v1::Payment* payment);
  grpc::Status LinkTelegram(const User& user, v1::TelegramLink* link);
  grpc::Status GetAccount(const User& user, v1::Account* account);
  grpc::Status UnlinkTelegram(const User& user, v1::UnlinkTelegramResponse* response);

 private:
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::ReservationService::Stub> reservations_;
  std::unique_ptr<v1::PaymentService::Stub> payments_;
  std::unique_ptr<v1::AccountService::Stub> accounts_;
  absl::Duration call_timeout_;
  absl::Duration pay_retry_for_;
};

// What the user sends when pressing Start on a LinkTelegram link: "/start <code>".
std::string StartCommand(const v1::TelegramLink& link);

// concert.ops.v1.FailedMessageService with `authorization: Bearer <token>`.
class AdminClient {
 public:
  AdminClient(const std::string& address, const std::string& token);
  grpc::Status List(ops::v1::FailedMessageStatus status,
                    std::vector<ops::v1::FailedMessage>* out);
  grpc::Status Retry(int64_t id, const std::string& reason, ops::v1::FailedMessage* out);

 private:
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<ops::v1::FailedMessageService::Stub> stub_;
  std::string token_;
};

// Small Postgres reads for assertions; throw on connection errors (tests catch or let fail).
int64_t QueryInt(const std::string& url, const std::string& sql);
std::vector<std::vector<std::string>> QueryRows(const std::string& url, const std::string& sql);

}  // namespace concert::e2e

#endif  // CONCERT_TESTS_E2E_SYSTEM_H_
