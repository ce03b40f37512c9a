// The built payment-server binary as an operator runs it: configuration errors, seed-demo,
// mint-token tokens accepted by `serve` (by every service it registers), an identity provider's
// JWKS and its rotation, /metrics, and SIGTERM.
#include <signal.h>
#include <sys/wait.h>

#include <cstdio>
#include <fstream>

#include <gtest/gtest.h>
#include <httplib.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/testing/environment.h"
#include "common/testing/jwt_issuer.h"
#include "concert/v1/account.grpc.pb.h"
#include "concert/v1/concert.grpc.pb.h"
#include "concert/v1/payment.grpc.pb.h"
#include "concert/v1/reservation.grpc.pb.h"
#include "payment-server/test_util.h"

namespace concert::payment {
namespace {

using ::concert::testing::BinaryPath;
using ::concert::testing::ChildProcess;
using ::concert::testing::CommandOutput;
using ::concert::testing::FreePort;
using ::concert::testing::RunCommandCapturing;
using ::concert::testing::TestIssuer;
using ::concert::testing::ScratchDatabase;
using ::concert::testing::WaitUntil;

constexpr char kSecret[] = "process-test-secret-of-at-least-32-bytes";

// Runs `payment-server <args>` through the shell with only the given environment (plus PATH).
CommandOutput RunBinary(const std::string& env, const std::string& args, bool merge_stderr) {
  return RunCommandCapturing(absl::StrCat("env -i PATH=/usr/bin:/bin ", env, " ",
                                          BinaryPath("payment-server"), " ", args,
                                          merge_stderr ? " 2>&1" : " 2>/dev/null"));
}

TEST(PaymentServerProcessTest, MissingDatabaseUrlExitsTwoNamingIt) {
  CommandOutput run = RunBinary(absl::StrCat("AUTH_TOKEN_SECRET=", kSecret), "", true);
  EXPECT_EQ(run.exit_code, 2);
  EXPECT_TRUE(absl::StrContains(run.out, "DATABASE_URL")) << run.out;
  EXPECT_EQ(absl::StripTrailingAsciiWhitespace(run.out).find('\n'), absl::string_view::npos)
      << "expected one line: " << run.out;
}

TEST(PaymentServerProcessTest, BadSettingsExitTwoNamingThem) {
  struct Case {
    std::string env, setting;
  };
  for (const Case& c : std::vector<Case>{
           {"DB_POOL_SIZE=0", "DB_POOL_SIZE"},
           {"GRPC_ADDRESS=not-an-address", "GRPC_ADDRESS"},
           {"RESERVATION_HOLD=soon", "RESERVATION_HOLD"},
           {"LOG_LEVEL=chatty", "LOG_LEVEL"},
           {"AUTH_TOKEN_SECRET=", "AUTH_TOKEN_SECRET"},
       }) {
    CommandOutput run = RunBinary(
        absl::StrCat("DATABASE_URL=postgresql://x@127.0.0.1:1/x AUTH_TOKEN_SECRET=", kSecret, " ",
                     c.env),
        "", true);
    EXPECT_EQ(run.exit_code, 2) << c.env << ": " << run.out;
    EXPECT_TRUE(absl::StrContains(run.out, c.setting)) << run.out;
    EXPECT_EQ(absl::StripTrailingAsciiWhitespace(run.out).find('\n'), absl::string_view::npos)
        << run.out;
  }
  CommandOutput unknown = RunBinary(absl::StrCat("AUTH_TOKEN_SECRET=", kSecret),
                                    "mint-token --user-id=1 --bogus=1", true);
  EXPECT_EQ(unknown.exit_code, 2);
  EXPECT_TRUE(absl::StrContains(unknown.out, "bogus")) << unknown.out;
  CommandOutput no_user = RunBinary(absl::StrCat("AUTH_TOKEN_SECRET=", kSecret), "mint-token", true);
  EXPECT_EQ(no_user.exit_code, 2);
  EXPECT_TRUE(absl::StrContains(no_user.out, "USER_ID")) << no_user.out;
}

TEST(PaymentServerProcessTest, SeedMintServePayAndStopOnSigterm) {
  ScratchDatabase db("payment_process");
  std::string db_env = absl::StrCat("DATABASE_URL='", db.url(), "'");

  CommandOutput seeded = RunBinary(db_env, "seed-demo", false);
  ASSERT_EQ(seeded.exit_code, 0) << seeded.out;
  EXPECT_TRUE(absl::StrContains(seeded.out, "seats ")) << seeded.out;
  EXPECT_TRUE(absl::StrContains(seeded.out, "user 1 <user1@example.com> balance 1000000 won"))
      << seeded.out;
  CommandOutput again = RunBinary(db_env, "seed-demo", false);
  EXPECT_EQ(again.exit_code, 0);
  EXPECT_EQ(again.out, seeded.out);  // idempotent
  EXPECT_EQ(testing::QueryInt(db.url(), "SELECT count(*) FROM payment.seats"), 50);
  EXPECT_EQ(testing::QueryInt(db.url(), "SELECT count(*) FROM payment.users"), 3);
  EXPECT_EQ(testing::QueryInt(db.url(), "SELECT count(*) FROM payment.concerts"), 1);
  int64_t seat = testing::QueryInt(db.url(), "SELECT min(id) FROM payment.seats");

  CommandOutput token =
      RunBinary(absl::StrCat("AUTH_TOKEN_SECRET=", kSecret), "mint-token --user-id=2 --ttl=1h", false);
  ASSERT_EQ(token.exit_code, 0);
  std::string bearer(absl::StripAsciiWhitespace(token.out));
  std::vector<std::string> parts = absl::StrSplit(bearer, '.');
  ASSERT_EQ(parts.size(), 3u) << "not a JWT: " << token.out;
  EXPECT_EQ(bearer.find('\n'), std::string::npos);

  int grpc_port = FreePort();
  int metrics_port = FreePort();
  ChildProcess server(BinaryPath("payment-server"), {},
                      {{"DATABASE_URL", db.url()},
                       {"AUTH_TOKEN_SECRET", kSecret},
                       {"GRPC_ADDRESS", absl::StrCat("127.0.0.1:", grpc_port)},
                       {"METRICS_ADDRESS", absl::StrCat("127.0.0.1:", metrics_port)}});
  auto channel = grpc::CreateChannel(absl::StrCat("127.0.0.1:", grpc_port),
                                     grpc::InsecureChannelCredentials());
  ASSERT_TRUE(WaitUntil([&] { return concert::testing::HealthStatus(channel) == 1; }, absl::Seconds(30)))
      << server.ReadLog();

  auto reservations = v1::ReservationService::NewStub(channel);
  auto payments = v1::PaymentService::NewStub(channel);
  v1::Reservation reservation;
  {
    grpc::ClientContext context;
    context.AddMetadata("authorization", "Bearer " + bearer);
    v1::ReserveSeatRequest request;
    request.set_seat_id(seat);
    grpc::Status s = reservations->ReserveSeat(&context, request, &reservation);
    ASSERT_TRUE(s.ok()) << s.error_message();
  }
  v1::Payment payment;
  {
    grpc::ClientContext context;
    context.AddMetadata("authorization", "Bearer " + bearer);
    v1::PayConcertRequest request;
    request.set_reservation_id(reservation.reservation_id());
    grpc::Status s = payments->PayConcert(&context, request, &payment);
    ASSERT_TRUE(s.ok()) << s.error_message();
  }
  EXPECT_EQ(payment.user_id(), 2);
  EXPECT_EQ(payment.balance_won(), 950000);
  {
    // What a client app reads before and after: the seeded concert and the debited account.
    grpc::ClientContext list_context;
    list_context.AddMetadata("authorization", "Bearer " + bearer);
    v1::ListConcertsResponse concerts;
    grpc::Status s = v1::ConcertService::NewStub(channel)->ListConcerts(
        &list_context, v1::ListConcertsRequest(), &concerts);
    ASSERT_TRUE(s.ok()) << s.error_message();
    ASSERT_EQ(concerts.concerts_size(), 1);
    ASSERT_EQ(concerts.concerts(0).schedules_size(), 1);
    EXPECT_EQ(concerts.concerts(0).schedules(0).free_seat_count(), 49);
    grpc::ClientContext account_context;
    account_context.AddMetadata("authorization", "Bearer " + bearer);
    v1::Account account;
    s = v1::AccountService::NewStub(channel)->GetAccount(&account_context,
                                                         v1::GetAccountRequest(), &account);
    ASSERT_TRUE(s.ok()) << s.error_message();
    EXPECT_EQ(account.user_id(), 2);
    EXPECT_EQ(account.balance_won(), 950000);
  }
  {
    // A token minted with another secret is refused by this server.
    grpc::ClientContext context;
    CommandOutput other = RunBinary("AUTH_TOKEN_SECRET=another-secret-of-at-least-32-bytes",
                                    "mint-token --user-id=2", false);
    context.AddMetadata("authorization",
                        "Bearer " + std::string(absl::StripAsciiWhitespace(other.out)));
    v1::GetPaymentRequest request;
    request.set_payment_id(payment.payment_id());
    v1::Payment ignored;
    EXPECT_EQ(payments->GetPayment(&context, request, &ignored).error_code(),
              grpc::StatusCode::UNAUTHENTICATED);
  }

  httplib::Client http("127.0.0.1", metrics_port);
  auto response = http.Get("/metrics");
  ASSERT_TRUE(response) << "no /metrics answer";
  EXPECT_TRUE(absl::StrContains(
      response->body, "payment_grpc_requests_total{code=\"OK\",method=\"PayConcert\"} 1"))
      << response->body;
  EXPECT_TRUE(absl::StrContains(response->body, "payment_db_pool_in_use"));

  int status = server.Stop(SIGTERM, absl::Seconds(20));
  ASSERT_NE(status, -1) << "did not exit after SIGTERM";
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  std::string log = server.ReadLog();
  EXPECT_TRUE(absl::StrContains(log, "\"payment completed\"")) << log;
  EXPECT_TRUE(absl::StrContains(log, payment.event_id())) << log;
  EXPECT_TRUE(absl::StrContains(log, "\"stopped\"")) << log;
}

// An identity provider's tokens, as a production deployment authenticates users: RS256 and ES256
// from a JWKS file, refused with UNAUTHENTICATED when wrong, and a key added to the file is
// accepted without a restart.
TEST(PaymentServerProcessTest, AcceptsTokensOfAnIdentityProvidersRotatingJwks) {
  ScratchDatabase db("payment_jwks");
  ASSERT_EQ(RunBinary(absl::StrCat("DATABASE_URL='", db.url(), "'"), "seed-demo", false).exit_code,
            0);
  TestIssuer idp;
  idp.AddKey("rsa-1", TestIssuer::kRs256);
  idp.AddKey("ec-1", TestIssuer::kEs256);
  std::string jwks = ::testing::TempDir() + "/" + concert::testing::UniqueName("jwks") + ".json";
  auto write_jwks = [&] {
    std::ofstream(jwks + ".tmp") << idp.Jwks();
    std::rename((jwks + ".tmp").c_str(), jwks.c_str());
  };
  write_jwks();
  constexpr char kIssuer[] = "https://idp.example.test/realms/concert";
  int grpc_port = FreePort();
  ChildProcess server(BinaryPath("payment-server"), {},
                      {{"DATABASE_URL", db.url()},
                       {"AUTH_JWKS_FILE", jwks},
                       {"AUTH_ISSUER", kIssuer},
                       {"AUTH_AUDIENCE", "concert"},
                       {"GRPC_ADDRESS", absl::StrCat("127.0.0.1:", grpc_port)},
                       {"METRICS_ADDRESS", "127.0.0.1:0"}});
  auto channel = grpc::CreateChannel(absl::StrCat("127.0.0.1:", grpc_port),
                                     grpc::InsecureChannelCredentials());
  ASSERT_TRUE(WaitUntil([&] { return concert::testing::HealthStatus(channel) == 1; },
                        absl::Seconds(30)))
      << server.ReadLog();
  auto accounts = v1::AccountService::NewStub(channel);
  auto get_account = [&](const std::string& token, v1::Account* account) {
    grpc::ClientContext context;
    context.AddMetadata("authorization", "Bearer " + token);
    return accounts->GetAccount(&context, v1::GetAccountRequest(), account);
  };
  int64_t exp = absl::ToUnixSeconds(absl::Now() + absl::Minutes(10));
  nlohmann::json claims = {{"sub", "3"}, {"iss", kIssuer}, {"aud", "concert"}, {"exp", exp}};

  for (const char* kid : {"rsa-1", "ec-1"}) {
    v1::Account account;
    grpc::Status s = get_account(idp.Sign(kid, claims), &account);
    ASSERT_TRUE(s.ok()) << kid << ": " << s.error_message();
    EXPECT_EQ(account.user_id(), 3);
  }
  nlohmann::json wrong_issuer = claims;
  wrong_issuer["iss"] = "https://elsewhere.example.test/";
  nlohmann::json not_a_user = claims;
  not_a_user["sub"] = "alice";
  TestIssuer forger;
  forger.AddKey("rsa-1", TestIssuer::kRs256);
  std::string unsigned_token = absl::StrCat(TestIssuer::Base64Url(R"({"alg":"none"})"), ".",
                                            TestIssuer::Base64Url(claims.dump()), ".");
  for (const std::string& bad : {idp.Sign("rsa-1", wrong_issuer), idp.Sign("rsa-1", not_a_user),
                                 forger.Sign("rsa-1", claims), unsigned_token}) {
    v1::Account account;
    EXPECT_EQ(get_account(bad, &account).error_code(), grpc::StatusCode::UNAUTHENTICATED) << bad;
  }

  // The identity provider rotates: a new key in the file, tokens signed with it. Their unknown
  // kid reloads the file (at most every 10 s, so a forged kid cannot make every call read it).
  idp.AddKey("rsa-2", TestIssuer::kRs256);
  write_jwks();
  std::string rotated = idp.Sign("rsa-2", claims);
  v1::Account account;
  EXPECT_TRUE(WaitUntil([&] { return get_account(rotated, &account).ok(); }, absl::Seconds(30)))
      << get_account(rotated, &account).error_message() << "\n" << server.ReadLog();
  EXPECT_TRUE(absl::StrContains(server.ReadLog(), "rsa-2")) << "the reload is logged";
}

}  // namespace
}  // namespace concert::payment
