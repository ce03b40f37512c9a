// gRPC over TLS as an operator sees it: payment-server and the retry-worker's admin API started
// with a certificate made by openssl at test time (scripts/tls.sh), called with grpcurl -cacert
// (and -cert/-key under mTLS); plaintext refused on the TLS port; grpc.health.v1 answering in
// plaintext on the health port (what Kubernetes probes), which serves nothing else; bad TLS
// settings exit 2 (the notifier's too, as payment-server's client).
#include <stdlib.h>
#include <sys/wait.h>

#include <fstream>
#include <sstream>

#include <gtest/gtest.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "common/testing/environment.h"
#include "notifier/link_client.h"

namespace concert {
namespace {

using ::concert::testing::BinaryPath;
using ::concert::testing::ChildProcess;
using ::concert::testing::CommandOutput;
using ::concert::testing::FreePort;
using ::concert::testing::HealthStatus;
using ::concert::testing::KafkaBootstrap;
using ::concert::testing::RunCommand;
using ::concert::testing::RunCommandCapturing;
using ::concert::testing::ScratchDatabase;
using ::concert::testing::SourceRoot;
using ::concert::testing::UniqueName;
using ::concert::testing::WaitUntil;

constexpr char kSecret[] = "tls-test-secret-of-at-least-32-bytes";
constexpr char kAdminToken[] = "tls-test-admin-token";
constexpr char kInternalToken[] = "tls-test-internal-token-of-32-bytes";

// A CA and two certificates it signed (for 127.0.0.1 and localhost), made by scripts/tls.sh in a
// temporary folder removed at the end: "server" for the services, "client" for grpcurl.
class Certificates {
 public:
  Certificates() {
    char tmpl[] = "/tmp/concert-tls-XXXXXX";
    dir_ = mkdtemp(tmpl);
    std::string tls = absl::StrCat(SourceRoot(), "/scripts/tls.sh");
    ok_ = RunCommand(absl::StrCat(tls, " ca ", dir_, " ca && ", tls, " cert ", dir_,
                                  " ca server && ", tls, " cert ", dir_, " ca client")) == 0;
  }
  ~Certificates() { RunCommand(absl::StrCat("rm -rf '", dir_, "'")); }

  bool ok() const { return ok_; }
  std::string Path(const std::string& file) const { return absl::StrCat(dir_, "/", file); }
  std::string Read(const std::string& file) const {
    std::ifstream in(Path(file));
    std::stringstream content;
    content << in.rdbuf();
    return content.str();
  }

 private:
  std::string dir_;
  bool ok_ = false;
};

// grpcurl (installed by scripts/install-deps.sh) with a bounded wait; stderr merged.
CommandOutput Grpcurl(const std::string& args) {
  return RunCommandCapturing(
      absl::StrCat(SourceRoot(), "/.local/bin/grpcurl -max-time 10 ", args, " 2>&1"));
}

std::string Address(int port) { return absl::StrCat("127.0.0.1:", port); }

class GrpcTlsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(certs_.ok()) << "scripts/tls.sh failed";
    ASSERT_EQ(RunCommand(absl::StrCat("test -x ", SourceRoot(), "/.local/bin/grpcurl")), 0)
        << "grpcurl missing: run scripts/install-deps.sh gotools";
  }

  // The flags that make grpcurl trust the test CA (and, with `client_cert`, present the
  // client certificate).
  std::string Tls(bool client_cert = false) const {
    std::string flags = absl::StrCat("-cacert ", certs_.Path("ca.pem"));
    if (client_cert) {
      absl::StrAppend(&flags, " -cert ", certs_.Path("client.pem"), " -key ",
                      certs_.Path("client.key"));
    }
    return flags;
  }

  std::map<std::string, std::string> TlsEnv(bool mutual, int health_port) const {
    std::map<std::string, std::string> env = {
        {"GRPC_TLS_CERT_FILE", certs_.Path("server.pem")},
        {"GRPC_TLS_KEY_FILE", certs_.Path("server.key")},
        {"GRPC_HEALTH_ADDRESS", Address(health_port)}};
    if (mutual) env["GRPC_TLS_CLIENT_CA_FILE"] = certs_.Path("ca.pem");
    return env;
  }

  // payment-server serving on `grpc_port` with TLS, against a scratch database with the demo
  // data; returns once its plaintext health port says SERVING.
  std::unique_ptr<ChildProcess> StartPaymentServer(const ScratchDatabase& db, bool mutual,
                                                   int grpc_port, int health_port) {
    std::string seed =
        absl::StrCat("env -i DATABASE_URL='", db.url(), "' ", BinaryPath("payment-server"),
                     " seed-demo >/dev/null 2>&1");
    EXPECT_EQ(RunCommand(seed), 0);
    std::map<std::string, std::string> env = TlsEnv(mutual, health_port);
    env.insert({{"DATABASE_URL", db.url()},
                {"AUTH_TOKEN_SECRET", kSecret},
                {"INTERNAL_TOKEN", kInternalToken},
                {"GRPC_ADDRESS", Address(grpc_port)},
                {"INTERNAL_GRPC_ADDRESS", Address(internal_port_)},
                {"METRICS_ADDRESS", Address(FreePort())}});
    auto server = std::make_unique<ChildProcess>(BinaryPath("payment-server"),
                                                 std::vector<std::string>{}, env);
    EXPECT_TRUE(WaitUntil([&] { return HealthStatus(Address(health_port)) == 1; },
                          absl::Seconds(30)))
        << server->ReadLog();
    return server;
  }

  std::string Bearer() const {
    CommandOutput token = RunCommandCapturing(
        absl::StrCat("env -i AUTH_TOKEN_SECRET=", kSecret, " ", BinaryPath("payment-server"),
                     " mint-token --user-id=1"));
    EXPECT_EQ(token.exit_code, 0);
    return absl::StrCat("-H 'authorization: Bearer ",
                        absl::StripAsciiWhitespace(token.out), "'");
  }

  Certificates certs_;
  // payment-server's TelegramLinkService (INTERNAL_GRPC_ADDRESS).
  int internal_port_ = FreePort();
};

TEST_F(GrpcTlsTest, PaymentServerServesTlsAndHealthInPlaintextApart) {
  ScratchDatabase db("grpc_tls");
  int grpc_port = FreePort(), health_port = FreePort();
  auto server = StartPaymentServer(db, /*mutual=*/false, grpc_port, health_port);
  EXPECT_TRUE(absl::StrContains(server->ReadLog(), "\"tls\":true")) << server->ReadLog();

  CommandOutput list = Grpcurl(absl::StrCat(Tls(), " ", Address(grpc_port), " list"));
  EXPECT_EQ(list.exit_code, 0) << list.out;
  EXPECT_TRUE(absl::StrContains(list.out, "concert.v1.PaymentService")) << list.out;
  CommandOutput concerts =
      Grpcurl(absl::StrCat(Tls(), " ", Bearer(), " -d '{}' ", Address(grpc_port),
                           " concert.v1.ConcertService/ListConcerts"));
  EXPECT_EQ(concerts.exit_code, 0) << concerts.out;
  EXPECT_TRUE(absl::StrContains(concerts.out, "\"schedule_id\"")) << concerts.out;
  // The name the certificate carries works too.
  CommandOutput by_name = Grpcurl(absl::StrCat(Tls(), " localhost:", grpc_port, " list"));
  EXPECT_EQ(by_name.exit_code, 0) << by_name.out;

  // Plaintext, or TLS without trusting the CA, gets nothing from the TLS port.
  CommandOutput plaintext =
      Grpcurl(absl::StrCat("-plaintext ", Bearer(), " -d '{}' ", Address(grpc_port),
                           " concert.v1.ConcertService/ListConcerts"));
  EXPECT_NE(plaintext.exit_code, 0) << plaintext.out;
  EXPECT_FALSE(absl::StrContains(plaintext.out, "schedule_id")) << plaintext.out;
  CommandOutput untrusted = Grpcurl(absl::StrCat(Address(grpc_port), " list"));
  EXPECT_NE(untrusted.exit_code, 0) << untrusted.out;
  EXPECT_TRUE(absl::StrContains(untrusted.out, "certificate")) << untrusted.out;

  // The health port: grpc.health.v1 in plaintext, and nothing else.
  CommandOutput health = Grpcurl(absl::StrCat("-plaintext ", Address(health_port),
                                              " grpc.health.v1.Health/Check"));
  EXPECT_EQ(health.exit_code, 0) << health.out;
  EXPECT_TRUE(absl::StrContains(health.out, "\"SERVING\"")) << health.out;
  EXPECT_EQ(HealthStatus(Address(health_port), "liveness"), 1);
  CommandOutput api_on_health =
      Grpcurl(absl::StrCat("-plaintext ", Bearer(), " -d '{}' ", Address(health_port),
                           " concert.v1.ConcertService/ListConcerts"));
  EXPECT_NE(api_on_health.exit_code, 0) << api_on_health.out;
  EXPECT_TRUE(absl::StrContains(api_on_health.out, "Unimplemented")) << api_on_health.out;

  int status = server->Stop(SIGTERM);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << server->ReadLog();
}

TEST_F(GrpcTlsTest, MutualTlsRefusesClientsWithoutTheCertificate) {
  ScratchDatabase db("grpc_mtls");
  int grpc_port = FreePort(), health_port = FreePort();
  auto server = StartPaymentServer(db, /*mutual=*/true, grpc_port, health_port);
  EXPECT_TRUE(absl::StrContains(server->ReadLog(), "\"client_certificates\":true"))
      << server->ReadLog();

  std::string call = absl::StrCat(" ", Bearer(), " -d '{}' ", Address(grpc_port),
                                  " concert.v1.ConcertService/ListConcerts");
  CommandOutput without = Grpcurl(absl::StrCat(Tls(), call));
  EXPECT_NE(without.exit_code, 0) << without.out;
  EXPECT_FALSE(absl::StrContains(without.out, "schedule_id")) << without.out;
  CommandOutput with = Grpcurl(absl::StrCat(Tls(/*client_cert=*/true), call));
  EXPECT_EQ(with.exit_code, 0) << with.out;
  EXPECT_TRUE(absl::StrContains(with.out, "\"schedule_id\"")) << with.out;
  // Probes need no certificate.
  EXPECT_EQ(HealthStatus(Address(health_port)), 1);

  // The notifier's calls to TelegramLinkService (PAYMENT_SERVER_TLS_*) on its own port, with
  // and without its client certificate; the API's port does not serve it.
  notifier::LinkClientOptions link_options{.address = absl::StrCat("localhost:", internal_port_),
                                           .token = kInternalToken,
                                           .tls_ca = certs_.Read("ca.pem")};
  notifier::LinkClient anonymous(link_options, metrics::Default());
  EXPECT_EQ(anonymous.UnlinkChat(700001, "tls test").code(), absl::StatusCode::kUnavailable);
  link_options.tls_cert = certs_.Read("client.pem");
  link_options.tls_key = certs_.Read("client.key");
  notifier::LinkClient notifier(link_options, metrics::Default());
  EXPECT_TRUE(notifier.UnlinkChat(700001, "tls test").ok());
  link_options.address = absl::StrCat("localhost:", grpc_port);
  notifier::LinkClient on_public_port(link_options, metrics::Default());
  EXPECT_EQ(on_public_port.UnlinkChat(700001, "tls test").code(),
            absl::StatusCode::kUnimplemented);
}

TEST_F(GrpcTlsTest, MissingOrUnpairedTlsFilesExitTwoNamingTheSetting) {
  struct Case {
    std::string env, setting;
  };
  for (const Case& c : std::vector<Case>{
           {absl::StrCat("GRPC_TLS_CERT_FILE=", certs_.Path("missing.pem"),
                         " GRPC_TLS_KEY_FILE=", certs_.Path("server.key")),
            "GRPC_TLS_CERT_FILE"},
           {absl::StrCat("GRPC_TLS_CERT_FILE=", certs_.Path("server.pem")), "GRPC_TLS_KEY_FILE"},
           {absl::StrCat("GRPC_TLS_CLIENT_CA_FILE=", certs_.Path("ca.pem")),
            "GRPC_TLS_CLIENT_CA_FILE"},
       }) {
    for (const char* binary : {"payment-server", "retry-worker"}) {
      CommandOutput run = RunCommandCapturing(absl::StrCat(
          "env -i DATABASE_URL=postgresql://x@127.0.0.1:1/x AUTH_TOKEN_SECRET=", kSecret,
          " ADMIN_TOKEN=x ", c.env, " ", BinaryPath(binary), " 2>&1"));
      EXPECT_EQ(run.exit_code, 2) << binary << " " << c.env << ": " << run.out;
      EXPECT_TRUE(absl::StrContains(run.out, c.setting)) << run.out;
      EXPECT_EQ(absl::StripTrailingAsciiWhitespace(run.out).find('\n'), absl::string_view::npos)
          << "expected one line: " << run.out;
    }
  }
  // The notifier as payment-server's client (TelegramLinkService).
  CommandOutput notifier = RunCommandCapturing(
      absl::StrCat("env -i DATABASE_URL=postgresql://x@127.0.0.1:1/x PAYMENT_SERVER_TLS_CA_FILE=",
                   certs_.Path("missing.pem"), " ", BinaryPath("notifier"), " 2>&1"));
  EXPECT_EQ(notifier.exit_code, 2) << notifier.out;
  EXPECT_TRUE(absl::StrContains(notifier.out, "PAYMENT_SERVER_TLS_CA_FILE")) << notifier.out;
}

TEST_F(GrpcTlsTest, RetryWorkerAdminApiServesTlsAndHealthInPlaintext) {
  ScratchDatabase db("grpc_tls_retry");
  int grpc_port = FreePort(), health_port = FreePort();
  std::map<std::string, std::string> env = TlsEnv(/*mutual=*/true, health_port);
  env.insert({{"DATABASE_URL", db.url()},
              {"KAFKA_BOOTSTRAP_SERVERS", KafkaBootstrap()},
              {"KAFKA_GROUP_ID", UniqueName("retry-group")},
              {"DLQ_TOPIC", UniqueName("dlq")},
              {"ADMIN_TOKEN", kAdminToken},
              {"GRPC_ADDRESS", Address(grpc_port)},
              {"METRICS_ADDRESS", Address(FreePort())}});
  ChildProcess worker(BinaryPath("retry-worker"), {}, env);
  ASSERT_TRUE(
      WaitUntil([&] { return HealthStatus(Address(health_port)) == 1; }, absl::Seconds(60)))
      << worker.ReadLog();

  std::string call = absl::StrCat(" -H 'authorization: Bearer ", kAdminToken, "' -d '{}' ",
                                   Address(grpc_port), " concert.ops.v1.FailedMessageService/List");
  CommandOutput with = Grpcurl(absl::StrCat(Tls(/*client_cert=*/true), call));
  EXPECT_EQ(with.exit_code, 0) << with.out;
  CommandOutput without = Grpcurl(absl::StrCat(Tls(), call));
  EXPECT_NE(without.exit_code, 0) << without.out;
  CommandOutput plaintext = Grpcurl(absl::StrCat("-plaintext", call));
  EXPECT_NE(plaintext.exit_code, 0) << plaintext.out;
  CommandOutput health = Grpcurl(absl::StrCat("-plaintext ", Address(health_port),
                                              " grpc.health.v1.Health/Check"));
  EXPECT_TRUE(absl::StrContains(health.out, "\"SERVING\"")) << health.out;

  int status = worker.Stop(SIGTERM);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << worker.ReadLog();
}

}  // namespace
}  // namespace concert
