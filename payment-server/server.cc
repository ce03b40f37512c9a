#include "payment-server/server.h"

#include <algorithm>
#include <array>
#include <cstdlib>
#include <map>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/backoff.h"
#include "common/grpc_server.h"
#include "common/log.h"
#include "common/status.h"
#include "payment-server/schema.h"

namespace concert::payment {
namespace {

// While the database is down (or not migrated yet), it is probed again after 250 ms, then ever
// more seldom up to every 10 s.
constexpr absl::Duration kFirstBackoff = absl::Milliseconds(250);
constexpr absl::Duration kMaxBackoff = absl::Seconds(10);
// While the database stays down, repeat the warning at most this often.
constexpr absl::Duration kDownLogEvery = absl::Seconds(30);
metrics::Counter& RequestCounter(metrics::Registry& registry, const char* method,
                                 absl::StatusCode code) {
  return registry.GetCounter("payment_grpc_requests_total",
                             "gRPC requests by method and status code",
                             {{"method", method}, {"code", absl::StatusCodeToString(code)}});
}

metrics::Histogram& RequestLatency(metrics::Registry& registry, const char* method) {
  return registry.GetHistogram("payment_grpc_request_duration_seconds",
                               "gRPC request latency by method", metrics::LatencyBuckets(),
                               {{"method", method}});
}

// The request series of one method, each looked up in the registry once, when first needed: a
// lookup by labels allocates and locks, too much for every call. Thread-safe.
class MethodMetrics {
 public:
  MethodMetrics(metrics::Registry& registry, const char* method)
      : registry_(registry), method_(method) {}

  void Observe(absl::StatusCode code, double seconds) {
    Cached(latency_, [&] { return &RequestLatency(registry_, method_); })->Observe(seconds);
    size_t i = static_cast<size_t>(code);
    if (i >= kCodes) return RequestCounter(registry_, method_, code).Increment();
    Cached(by_code_[i], [&] { return &RequestCounter(registry_, method_, code); })->Increment();
  }

 private:
  static constexpr size_t kCodes = 17;  // absl::StatusCode's 0..16

  // Two threads may both look a series up: the registry returns the same one to both.
  template <typename T, typename Lookup>
  static T* Cached(std::atomic<T*>& slot, Lookup lookup) {
    T* found = slot.load(std::memory_order_acquire);
    if (found == nullptr) {
      found = lookup();
      slot.store(found, std::memory_order_release);
    }
    return found;
  }

  metrics::Registry& registry_;
  const char* const method_;
  std::atomic<metrics::Histogram*> latency_{nullptr};
  std::array<std::atomic<metrics::Counter*>, kCodes> by_code_{};
};

// Every method's MethodMetrics, made at start; read-only afterwards.
using MethodMetricsMap = std::map<std::string, std::unique_ptr<MethodMetrics>, std::less<>>;

// What every gRPC service needs: the domain, who calls, readiness and metrics.
struct ApiContext {
  Payments* payments;
  Callers* callers;
  const std::atomic<bool>* ready;
  const MethodMetricsMap* methods;
  AdmissionQueue* admission;
  // ADMISSION_MAX_WAIT: the deadline in the queue of a call that brought none.
  absl::Duration max_wait;

  absl::StatusOr<int64_t> Caller(const grpc::ServerContextBase& context) const {
    return callers->UserId(AuthorizationMetadata(context), absl::Now());
  }

  absl::Status CheckReady() const {
    if (ready->load()) return absl::OkStatus();
    return absl::UnavailableError("database not ready yet (starting); retry shortly");
  }

  // Runs one call, counts it by method and code, and times it.
  grpc::Status Observe(const char* method, const std::function<absl::Status()>& call) const {
    absl::Time start = absl::Now();
    return Finished(method, start, call());
  }

  // Counts a call that began at `start` by method and code, times it, logs what the server
  // should hear of, and converts its status for gRPC.
  grpc::Status Finished(const char* method, absl::Time start, const absl::Status& status) const {
    double seconds = absl::ToDoubleSeconds(absl::Now() - start);
    auto it = methods->find(absl::string_view(method));
    if (it == methods->end()) {  // cannot happen: PaymentServer makes every method's
      log::Error("no metrics for a method", {{"method", method}});
      std::abort();
    }
    it->second->Observe(status.code(), seconds);
    switch (status.code()) {
      case absl::StatusCode::kUnavailable:
      case absl::StatusCode::kInternal:
      case absl::StatusCode::kUnknown:
      case absl::StatusCode::kResourceExhausted:
        log::Warn("request failed", {{"method", method},
                                     {"code", absl::StatusCodeToString(status.code())},
                                     {"error", std::string(status.message())}});
        break;
      default:
        break;
    }
    return ToGrpcStatus(status);
  }

  // What every call does: Observe it, authenticate the caller, refuse it before the schema is
  // ready, then run `body` for the caller's user id.
  grpc::Status Authenticated(const char* method, const grpc::ServerContext& context,
                             const std::function<absl::Status(int64_t user_id)>& body) const {
    return Observe(method, [&]() -> absl::Status { return AsCaller(context, body); });
  }

  // Authenticated for the callback API: the call waits in the admission queue (as long as its
  // deadline allows), then the same steps run on one of the queue's workers, never on gRPC's
  // callback threads (token keys may be fetched, the database blocks). A full queue refuses at
  // once with a retry pushback for clients with a retry policy.
  grpc::ServerUnaryReactor* Admitted(const char* method, grpc::CallbackServerContext* context,
                                     std::function<absl::Status(int64_t user_id)> body) const {
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    absl::Time start = absl::Now();
    absl::Time deadline = context->deadline() == std::chrono::system_clock::time_point::max()
                              ? start + max_wait
                              : absl::FromChrono(context->deadline());
    absl::Status queued = admission->Submit(
        deadline, [this, method, context, reactor, start,
                   body = std::move(body)](absl::Status admitted) {
          absl::Status status = admitted;
          if (status.ok() && context->IsCancelled()) {
            status = absl::CancelledError("the caller cancelled the call while it waited");
          }
          if (status.ok()) status = AsCaller(*context, body);
          reactor->Finish(Finished(method, start, status));
        });
    if (!queued.ok()) {
      context->AddTrailingMetadata(
          "grpc-retry-pushback-ms",
          absl::StrCat(absl::ToInt64Milliseconds(admission->RetryPushback())));
      reactor->Finish(Finished(method, start, queued));
    }
    return reactor;
  }

 private:
  absl::Status AsCaller(const grpc::ServerContextBase& context,
                        const std::function<absl::Status(int64_t user_id)>& body) const {
    ASSIGN_OR_RETURN(int64_t user_id, Caller(context));
    RETURN_IF_ERROR(CheckReady());
    return body(user_id);
  }
};

}  // namespace

// PayConcert and ReserveSeat, the calls of a concert's opening, use the callback API and wait in
// the admission queue; the others stay on the synchronous API (GRPC_MAX_THREADS), on purpose:
// they are not what thousands of fans call at once, in the queue they would wait in line with
// (and behind) payments for the same connections, and while PayConcert is under load the
// synchronous server's idle threads were measured to cost nothing (no CPU, no switches).
class PaymentServer::PaymentApi final
    : public v1::PaymentService::WithCallbackMethod_PayConcert<v1::PaymentService::Service> {
 public:
  explicit PaymentApi(ApiContext context) : c_(std::move(context)) {}

  grpc::ServerUnaryReactor* PayConcert(grpc::CallbackServerContext* context,
                                       const v1::PayConcertRequest* request,
                                       v1::Payment* response) override {
    auto pay = [this, context, request, response](int64_t user_id) -> absl::Status {
      std::string traceparent;
      const auto& metadata = context->client_metadata();
      if (auto it = metadata.find("traceparent"); it != metadata.end()) {
        traceparent.assign(it->second.data(), it->second.size());
      }
      ASSIGN_OR_RETURN(*response,
                       c_.payments->PayConcert(user_id, request->reservation_id(), traceparent));
      return absl::OkStatus();
    };
    return c_.Admitted("PayConcert", context, std::move(pay));
  }

  grpc::Status GetPayment(grpc::ServerContext* context, const v1::GetPaymentRequest* request,
                          v1::Payment* response) override {
    return c_.Authenticated("GetPayment", *context, [&](int64_t user_id) -> absl::Status {
      ASSIGN_OR_RETURN(*response, c_.payments->GetPayment(user_id, request->payment_id()));
      return absl::OkStatus();
    });
  }

  grpc::Status ListPayments(grpc::ServerContext* context, const v1::ListPaymentsRequest* request,
                            v1::ListPaymentsResponse* response) override {
    return c_.Authenticated("ListPayments", *context, [&](int64_t user_id) -> absl::Status {
      ASSIGN_OR_RETURN(*response, c_.payments->ListPayments(user_id, *request));
      return absl::OkStatus();
    });
  }

 private:
  ApiContext c_;
};

class PaymentServer::ReservationApi final
    : public v1::ReservationService::WithCallbackMethod_ReserveSeat<
          v1::ReservationService::Service> {
 public:
  explicit ReservationApi(ApiContext context) : c_(std::move(context)) {}

  grpc::ServerUnaryReactor* ReserveSeat(grpc::CallbackServerContext* context,
                                        const v1::ReserveSeatRequest* request,
                                        v1::Reservation* response) override {
    auto reserve = [this, request, response](int64_t user_id) -> absl::Status {
      ASSIGN_OR_RETURN(*response, c_.payments->ReserveSeat(user_id, request->seat_id()));
      return absl::OkStatus();
    };
    return c_.Admitted("ReserveSeat", context, std::move(reserve));
  }

 private:
  ApiContext c_;
};

class PaymentServer::ConcertApi final : public v1::ConcertService::Service {
 public:
  explicit ConcertApi(ApiContext context) : c_(std::move(context)) {}

  grpc::Status ListConcerts(grpc::ServerContext* context, const v1::ListConcertsRequest* request,
                            v1::ListConcertsResponse* response) override {
    return c_.Authenticated("ListConcerts", *context, [&](int64_t) -> absl::Status {
      ASSIGN_OR_RETURN(*response, c_.payments->ListConcerts(*request));
      return absl::OkStatus();
    });
  }

  grpc::Status ListSeats(grpc::ServerContext* context, const v1::ListSeatsRequest* request,
                         v1::ListSeatsResponse* response) override {
    return c_.Authenticated("ListSeats", *context, [&](int64_t) -> absl::Status {
      ASSIGN_OR_RETURN(*response, c_.payments->ListSeats(*request));
      return absl::OkStatus();
    });
  }

 private:
  ApiContext c_;
};

class PaymentServer::AccountApi final : public v1::AccountService::Service {
 public:
  explicit AccountApi(ApiContext context) : c_(std::move(context)) {}

  grpc::Status GetAccount(grpc::ServerContext* context, const v1::GetAccountRequest*,
                          v1::Account* response) override {
    return c_.Authenticated("GetAccount", *context, [&](int64_t user_id) -> absl::Status {
      ASSIGN_OR_RETURN(*response, c_.payments->GetAccount(user_id));
      return absl::OkStatus();
    });
  }

  grpc::Status LinkTelegram(grpc::ServerContext* context, const v1::LinkTelegramRequest*,
                            v1::TelegramLink* response) override {
    return c_.Authenticated("LinkTelegram", *context, [&](int64_t user_id) -> absl::Status {
      ASSIGN_OR_RETURN(*response, c_.payments->LinkTelegram(user_id));
      return absl::OkStatus();
    });
  }

  grpc::Status UnlinkTelegram(grpc::ServerContext* context, const v1::UnlinkTelegramRequest*,
                              v1::UnlinkTelegramResponse* response) override {
    return c_.Authenticated("UnlinkTelegram", *context, [&](int64_t user_id) -> absl::Status {
      ASSIGN_OR_RETURN(*response, c_.payments->UnlinkTelegram(user_id));
      return absl::OkStatus();
    });
  }

 private:
  ApiContext c_;
};

// Called by the notifier only, with the shared INTERNAL_TOKEN instead of a user's token.
class PaymentServer::TelegramLinkApi final : public internal::v1::TelegramLinkService::Service {
 public:
  TelegramLinkApi(ApiContext context, std::string internal_token)
      : c_(std::move(context)), internal_token_(std::move(internal_token)) {}

  grpc::Status ConfirmLink(grpc::ServerContext* context,
                           const internal::v1::ConfirmLinkRequest* request,
                           internal::v1::ConfirmLinkResponse* response) override {
    return Internal("ConfirmLink", *context, [&]() -> absl::Status {
      ASSIGN_OR_RETURN(*response, c_.payments->ConfirmLink(*request));
      return absl::OkStatus();
    });
  }

  grpc::Status UnlinkChat(grpc::ServerContext* context,
                          const internal::v1::UnlinkChatRequest* request,
                          internal::v1::UnlinkChatResponse* response) override {
    return Internal("UnlinkChat", *context, [&]() -> absl::Status {
      ASSIGN_OR_RETURN(*response, c_.payments->UnlinkChat(*request));
      return absl::OkStatus();
    });
  }

 private:
  grpc::Status Internal(const char* method, const grpc::ServerContext& context,
                        const std::function<absl::Status()>& body) const {
    return c_.Observe(method, [&]() -> absl::Status {
      RETURN_IF_ERROR(VerifySharedBearer(context, internal_token_, "INTERNAL_TOKEN"));
      RETURN_IF_ERROR(c_.CheckReady());
      return body();
    });
  }

  ApiContext c_;
  std::string internal_token_;
};

struct PaymentServer::Methods {
  MethodMetricsMap by_name;
};

PaymentServer::PaymentServer(ServerOptions options) : options_(std::move(options)) {
  if (options_.registry == nullptr) {
    own_registry_ = std::make_unique<metrics::Registry>();
    registry_ = own_registry_.get();
  } else {
    registry_ = options_.registry;
  }
  pool_ = std::make_unique<PgPool>(PgPool::Options{.url = options_.database_url,
                                                   .size = options_.db_pool_size,
                                                   .acquire_timeout = options_.db_acquire_timeout,
                                                   .prepare = &Payments::Prepare,
                                                   .max_attempts = options_.db_max_attempts});
  payments_ = std::make_unique<Payments>(
      *pool_, PaymentsOptions{.reservation_hold = options_.reservation_hold,
                              .before_commit_for_test = options_.before_commit_for_test,
                              .telegram_bot_username = options_.telegram_bot_username,
                              .telegram_link_ttl = options_.telegram_link_ttl});
  verifier_ = std::make_unique<jwt::Verifier>(options_.auth);
  callers_ = std::make_unique<Callers>(*verifier_, Callers::Options{});
  methods_ = std::make_unique<Methods>();
  for (const char* method : {"PayConcert", "GetPayment", "ListPayments", "ReserveSeat",
                             "ListConcerts", "ListSeats", "GetAccount", "LinkTelegram",
                             "UnlinkTelegram", "ConfirmLink", "UnlinkChat"}) {
    methods_->by_name.emplace(method, std::make_unique<MethodMetrics>(*registry_, method));
  }
  admission_ = std::make_unique<AdmissionQueue>(
      AdmissionQueue::Options{.workers = options_.db_pool_size,
                              .capacity = options_.admission_queue_size,
                              .max_retry_pushback = options_.admission_retry_pushback},
      *registry_);
  ApiContext context{.payments = payments_.get(),
                     .callers = callers_.get(),
                     .ready = &ready_,
                     .methods = &methods_->by_name,
                     .admission = admission_.get(),
                     .max_wait = options_.admission_max_wait};
  payment_api_ = std::make_unique<PaymentApi>(context);
  reservation_api_ = std::make_unique<ReservationApi>(context);
  concert_api_ = std::make_unique<ConcertApi>(context);
  account_api_ = std::make_unique<AccountApi>(context);
  if (!options_.internal_token.empty()) {
    telegram_link_api_ = std::make_unique<TelegramLinkApi>(context, options_.internal_token);
  }

  // What the alerts and the dashboard read exists from the start at 0, since increase() never
  // sees the first call of a series that appears with it: PayConcert's latency, its OK and the
  // server-side codes PayConcertErrors counts.
  for (absl::StatusCode code :
       {absl::StatusCode::kOk, absl::StatusCode::kUnavailable, absl::StatusCode::kInternal,
        absl::StatusCode::kUnknown, absl::StatusCode::kResourceExhausted,
        absl::StatusCode::kDeadlineExceeded, absl::StatusCode::kDataLoss}) {
    RequestCounter(*registry_, "PayConcert", code);
  }
  RequestLatency(*registry_, "PayConcert");

  metrics::Gauge& in_use =
      registry_->GetGauge("payment_db_pool_in_use", "Postgres connections in use");
  metrics::Gauge& waiting =
      registry_->GetGauge("payment_db_pool_waiting", "calls waiting for a Postgres connection");
  metrics::Gauge& size = registry_->GetGauge("payment_db_pool_size", "Postgres connections at most");
  registry_->GetGauge("payment_db_up", "1 when the last database probe succeeded");
  PgPool* pool = pool_.get();
  registry_->OnCollect([pool, &in_use, &waiting, &size] {
    in_use.Set(pool->in_use());
    waiting.Set(pool->waiting());
    size.Set(pool->size());
  });
}

PaymentServer::~PaymentServer() { Stop(); }

absl::Status PaymentServer::Start() {
  RETURN_IF_ERROR(verifier_->Start());
  int max_threads = options_.grpc_max_threads;
  auto limit_threads = [max_threads](grpc::ServerBuilder& builder) {
    grpc::ResourceQuota quota("payment-server");
    quota.SetMaxThreads(max_threads);
    builder.SetResourceQuota(quota);
  };
  ASSIGN_OR_RETURN(endpoint_,
                   GrpcEndpoint::Start(options_.grpc_address,
                                       {payment_api_.get(), reservation_api_.get(),
                                        concert_api_.get(), account_api_.get()},
                                       options_.tls, limit_threads));
  if (telegram_link_api_ != nullptr) {
    // Same certificate and client CA as the API; the probes' plaintext health port is the API's.
    GrpcTls internal_tls = options_.tls;
    internal_tls.health_address.clear();
    absl::StatusOr<std::unique_ptr<GrpcEndpoint>> internal = GrpcEndpoint::Start(
        options_.internal_grpc_address, {telegram_link_api_.get()}, internal_tls, limit_threads);
    if (!internal.ok()) {
      endpoint_.reset();
      return absl::Status(internal.status().code(),
                          absl::StrCat("INTERNAL_GRPC_ADDRESS: ", internal.status().message()));
    }
    internal_endpoint_ = *std::move(internal);
  }
  watcher_ = std::thread([this] { WatchDatabase(); });
  return absl::OkStatus();
}

void PaymentServer::WatchDatabase() {
  metrics::Gauge& up = registry_->GetGauge("payment_db_up", "1 when the last database probe succeeded");
  Backoff backoff(kFirstBackoff, kMaxBackoff);
  bool first = true;
  bool serving = false;
  absl::Time last_down_log = absl::InfinitePast();
  while (!stop_.HasBeenNotified()) {
    absl::Status status;
    if (!ready_.load()) {
      status = MigrateSchema(options_.database_url);
      if (status.ok()) {
        ready_.store(true);
        log::Info("schema ready", {{"schema", kSchema}});
      }
    } else {
      status = pool_->Transact([](pqxx::work& tx) {
        tx.exec("SELECT 1");
        return absl::OkStatus();
      });
    }
    bool healthy = status.ok();
    up.Set(healthy ? 1 : 0);
    if (healthy != serving || first) {
      endpoint_->SetServing(healthy);
      if (internal_endpoint_ != nullptr) internal_endpoint_->SetServing(healthy);
    }
    if (healthy) {
      if (!serving) log::Info("serving", {{"address", options_.grpc_address}});
      backoff.Reset();
    } else if (serving || first || absl::Now() - last_down_log >= kDownLogEvery) {
      log::Warn("database unavailable; NOT_SERVING, retrying with backoff",
                {{"error", std::string(status.message())}});
      last_down_log = absl::Now();
    }
    serving = healthy;
    first = false;
    stop_.WaitForNotificationWithTimeout(healthy ? options_.health_check_interval
                                                 : backoff.Next());
  }
}

void PaymentServer::Stop() {
  if (stopped_ || endpoint_ == nullptr) return;
  stopped_ = true;
  stop_.Notify();
  log::Info("stopping: NOT_SERVING, finishing in-flight calls",
            {{"grace_ms", absl::ToInt64Milliseconds(options_.shutdown_grace)}});
  // One after the other: a link call still in flight when the API is done gets the grace left.
  absl::Time deadline = absl::Now() + options_.shutdown_grace;
  endpoint_->Shutdown(options_.shutdown_grace);
  if (internal_endpoint_ != nullptr) {
    internal_endpoint_->Shutdown(std::max(deadline - absl::Now(), absl::ZeroDuration()));
  }
  if (watcher_.joinable()) watcher_.join();
  log::Info("stopped");
}

absl::Status Serve(const ServerOptions& options, const absl::Notification& stop) {
  ServerOptions with_registry = options;
  if (with_registry.registry == nullptr) with_registry.registry = &metrics::Default();
  PaymentServer server(with_registry);
  RETURN_IF_ERROR(server.Start());
  metrics::HttpServer metrics_http(*with_registry.registry);
  if (absl::Status s = metrics_http.Start(options.metrics_address); !s.ok()) {
    server.Stop();
    return s;
  }
  log::Info("metrics listening", {{"address", options.metrics_address}});
  stop.WaitForNotification();
  server.Stop();
  metrics_http.Stop();
  return absl::OkStatus();
}

}  // namespace concert::payment
