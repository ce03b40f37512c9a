#include "common/testing/environment.h"

#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <random>
#include <sstream>
#include <thread>

#include <gtest/gtest.h>
#include <httplib.h>
#include <pqxx/pqxx>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "common/grpc_server.h"
#include "grpc/health/v1/health.grpc.pb.h"

namespace concert::testing {
namespace {

std::string EnvOr(const char* name, const char* fallback) {
  const char* value = std::getenv(name);
  return value != nullptr && *value != '\0' ? value : fallback;
}

}  // namespace

std::string AdminDatabaseUrl() {
  return EnvOr("CONCERT_TEST_DATABASE_URL", "postgresql://concert:concert@127.0.0.1:55432/concert");
}

std::string KafkaBootstrap() { return EnvOr("CONCERT_TEST_KAFKA", "127.0.0.1:9092"); }

std::string UniqueName(const std::string& prefix) {
  static std::mt19937_64 rng(std::random_device{}() ^ static_cast<uint64_t>(getpid()));
  static std::mutex mu;
  std::lock_guard lock(mu);
  std::ostringstream out;
  out << prefix << "_" << std::hex << (rng() & 0xffffffffffULL);
  return out.str();
}

std::string BinaryPath(const std::string& name) { return absl::StrCat(CONCERT_BIN_DIR, "/", name); }

std::string SourceRoot() { return CONCERT_SOURCE_DIR; }

bool WaitUntil(const std::function<bool()>& done, absl::Duration timeout, absl::Duration poll) {
  absl::Time deadline = absl::Now() + timeout;
  while (true) {
    if (done()) return true;
    if (absl::Now() >= deadline) return false;
    absl::SleepFor(poll);
  }
}

int HealthStatus(const std::shared_ptr<grpc::Channel>& channel, const std::string& service) {
  grpc::ClientContext context;
  context.set_deadline(Deadline(absl::Seconds(2)));
  grpc::health::v1::HealthCheckRequest request;
  request.set_service(service);
  grpc::health::v1::HealthCheckResponse response;
  grpc::Status status =
      grpc::health::v1::Health::NewStub(channel)->Check(&context, request, &response);
  return status.ok() ? response.status() : -1;
}

int HealthStatus(const std::string& address, const std::string& service) {
  return HealthStatus(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()), service);
}

std::string UniqueSecret(const std::string& prefix) {
  std::random_device random;
  std::string secret = prefix + "_";
  for (int i = 0; i < 16; ++i) {
    absl::StrAppend(&secret, absl::Hex(random() & 0xff, absl::kZeroPad2));
  }
  return secret;
}

ScratchDatabase::ScratchDatabase(const std::string& prefix) : name_(UniqueName("test_" + prefix)) {
  std::string admin = AdminDatabaseUrl();
  pqxx::connection conn(admin);
  pqxx::nontransaction tx(conn);
  tx.exec(absl::StrCat("CREATE DATABASE ", name_));
  std::string base = conn.dbname();
  size_t at = admin.rfind("/" + base);
  url_ = at == std::string::npos ? absl::StrCat(admin, " dbname=", name_)
                                 : absl::StrCat(admin.substr(0, at + 1), name_,
                                                admin.substr(at + 1 + base.size()));
}

ScratchDatabase::~ScratchDatabase() {
  try {
    pqxx::connection conn(AdminDatabaseUrl());
    pqxx::nontransaction tx(conn);
    // Slots pin a database; tests that make one drop it themselves, but be sure.
    tx.exec_params(
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
        "WHERE database = $1 AND NOT active",
        name_);
    tx.exec(absl::StrCat("DROP DATABASE IF EXISTS ", name_, " WITH (FORCE)"));
  } catch (const std::exception&) {
    // The server may be down at the end of a fault test; the name is unique, so a leftover
    // database harms no other test.
  }
}

ChildProcess::ChildProcess(const std::string& path, const std::vector<std::string>& args,
                           const std::map<std::string, std::string>& env) {
  std::string base = path.substr(path.rfind('/') + 1);
  log_path_ = absl::StrCat(CONCERT_BIN_DIR, "/../test-logs/", UniqueName(base), ".log");
  RunCommand(absl::StrCat("mkdir -p ", CONCERT_BIN_DIR, "/../test-logs"));
  pid_ = fork();
  if (pid_ == 0) {
    // Signals blocked by the test harness must not stay blocked in the child.
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    FILE* log = std::fopen(log_path_.c_str(), "w");
    if (log != nullptr) {
      dup2(fileno(log), STDOUT_FILENO);
      dup2(fileno(log), STDERR_FILENO);
    }
    for (const auto& [name, value] : env) setenv(name.c_str(), value.c_str(), 1);
    std::vector<char*> argv;
    argv.push_back(const_cast<char*>(path.c_str()));
    for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    execv(path.c_str(), argv.data());
    std::perror("execv");
    _exit(127);
  }
}

ChildProcess::~ChildProcess() {
  if (running() && Stop(SIGTERM) == -1) Stop(SIGKILL);
}

bool ChildProcess::running() {
  if (pid_ <= 0 || status_ != -1) return false;
  int status = 0;
  if (waitpid(pid_, &status, WNOHANG) == pid_) {
    status_ = status;
    return false;
  }
  return true;
}

int ChildProcess::Stop(int signal, absl::Duration timeout) {
  if (!running()) return status_;
  kill(pid_, signal);
  WaitUntil([&] { return !running(); }, timeout, absl::Milliseconds(20));
  return status_;
}

std::string ChildProcess::ReadLog() const {
  std::ifstream in(log_path_);
  std::stringstream out;
  out << in.rdbuf();
  return out.str();
}

int RunCommand(const std::string& command) {
  int status = std::system(command.c_str());
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

CommandOutput RunCommandCapturing(const std::string& command) {
  CommandOutput run;
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) return run;
  char buffer[4096];
  size_t n;
  while ((n = fread(buffer, 1, sizeof buffer, pipe)) > 0) run.out.append(buffer, n);
  int status = pclose(pipe);
  run.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return run;
}

}  // namespace concert::testing

namespace concert::testing {

int FreePort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  socklen_t len = sizeof addr;
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  close(fd);
  return ntohs(addr.sin_port);
}

namespace {
std::string StateDir(const std::string& prefix) {
  return absl::StrCat(CONCERT_BIN_DIR, "/../test-state/", UniqueName(prefix));
}
}  // namespace

PrivatePostgres::PrivatePostgres(Tls tls)
    : port_(FreePort()), tls_(tls), dir_(StateDir("postgres")) {
  if (!Start()) ADD_FAILURE() << "private Postgres did not start; see " << dir_ << "/server.log";
}

PrivatePostgres::~PrivatePostgres() {
  Stop(/*immediate=*/true);
  RunCommand("rm -rf " + dir_);
}

std::string PrivatePostgres::url() const {
  return absl::StrCat("postgresql://concert:concert@127.0.0.1:", port_, "/concert");
}

std::string PrivatePostgres::Script(const std::string& verb) const {
  return absl::StrCat("PG_PORT=", port_, " PG_DIR=", dir_,
                      tls_ == Tls::kOn ? " PG_TLS=on " : " ", SourceRoot(),
                      "/scripts/postgres.sh ", verb, " >/dev/null 2>&1");
}

bool PrivatePostgres::Start() { return RunCommand(Script("start")) == 0; }

bool PrivatePostgres::Stop(bool immediate) {
  return RunCommand(Script(immediate ? "stop immediate" : "stop")) == 0;
}

PrivateKafka::PrivateKafka(Listeners listeners)
    : port_(FreePort()), controller_port_(FreePort()), dir_(StateDir("kafka")) {
  if (listeners == Listeners::kSecured) {
    sasl_ssl_port_ = FreePort();
    mtls_port_ = FreePort();
  }
  if (!Start()) ADD_FAILURE() << "private Kafka did not start; see " << dir_;
}

PrivateKafka::~PrivateKafka() {
  Kill();
  RunCommand("rm -rf " + dir_);
}

std::string PrivateKafka::bootstrap() const { return absl::StrCat("127.0.0.1:", port_); }
std::string PrivateKafka::sasl_ssl_bootstrap() const {
  return absl::StrCat("127.0.0.1:", sasl_ssl_port_);
}
std::string PrivateKafka::mtls_bootstrap() const { return absl::StrCat("127.0.0.1:", mtls_port_); }

std::string PrivateKafka::Script(const std::string& verb) const {
  std::string secured =
      sasl_ssl_port_ == 0
          ? ""
          : absl::StrCat(" KAFKA_SASL_SSL_PORT=", sasl_ssl_port_, " KAFKA_MTLS_PORT=", mtls_port_,
                         " KAFKA_SASL_USERS=", kSaslUser, ":", kSaslPassword);
  return absl::StrCat("KAFKA_PORT=", port_, " KAFKA_CONTROLLER_PORT=", controller_port_, secured,
                      " KAFKA_DIR=", dir_, " ", SourceRoot(), "/scripts/kafka.sh ", verb,
                      " >/dev/null 2>&1");
}

bool PrivateKafka::Start() { return RunCommand(Script("start")) == 0; }
bool PrivateKafka::Stop() { return RunCommand(Script("stop")) == 0; }
bool PrivateKafka::Kill() { return RunCommand(Script("kill")) == 0; }

namespace {
// A cluster id as Kafka's StorageTool wants it: 16 random bytes, URL-safe base64, no padding.
std::string RandomClusterId() {
  std::random_device random;
  std::string bytes(16, '\0');
  for (char& b : bytes) b = static_cast<char>(random() & 0xff);
  return absl::WebSafeBase64Escape(bytes);
}

// Removes a private server's state, unless the test failed: then it is evidence.
void RemoveStateUnlessFailed(const std::string& dir) {
  if (::testing::Test::HasFailure() || ::testing::UnitTest::GetInstance()->Failed()) {
    std::cerr << "state and logs kept in " << dir << "\n";
    return;
  }
  RunCommand("rm -rf " + dir);
}
}  // namespace

KafkaCluster::KafkaCluster(int base_port)
    : base_port_(base_port), cluster_id_(RandomClusterId()), dir_(StateDir("kafka-cluster")) {
  RunCommand("mkdir -p " + dir_);
  if (!StartAll()) ADD_FAILURE() << "Kafka cluster did not start; see " << dir_;
}

KafkaCluster::~KafkaCluster() {
  for (int n = 0; n < kNodes; ++n) Kill(n);  // SIGKILL stops a paused node as well
  RemoveStateUnlessFailed(dir_);
}

std::string KafkaCluster::address(int node) const {
  return absl::StrCat("127.0.0.1:", base_port_ + 2 * node);
}

std::string KafkaCluster::bootstrap() const {
  std::vector<std::string> all;
  for (int n = 0; n < kNodes; ++n) all.push_back(address(n));
  return absl::StrJoin(all, ",");
}

std::string KafkaCluster::Script(int node, const std::string& verb) const {
  std::vector<std::string> voters;
  for (int n = 0; n < kNodes; ++n) {
    voters.push_back(absl::StrCat(node_id(n), "@127.0.0.1:", base_port_ + 2 * n + 1));
  }
  return absl::StrCat("KAFKA_PORT=", base_port_ + 2 * node,
                      " KAFKA_CONTROLLER_PORT=", base_port_ + 2 * node + 1,
                      " KAFKA_NODE_ID=", node_id(node), " KAFKA_QUORUM=", absl::StrJoin(voters, ","),
                      " KAFKA_CLUSTER_ID=", cluster_id_, " KAFKA_INTERNAL_RF=", kNodes,
                      " KAFKA_DIR=", dir_, "/node", node, " ", SourceRoot(), "/scripts/kafka.sh ",
                      verb, " >>", dir_, "/scripts.log 2>&1");
}

bool KafkaCluster::Start(int node) { return RunCommand(Script(node, "start")) == 0; }
bool KafkaCluster::Stop(int node) { return RunCommand(Script(node, "stop")) == 0; }
bool KafkaCluster::Kill(int node) { return RunCommand(Script(node, "kill")) == 0; }
bool KafkaCluster::Pause(int node) { return RunCommand(Script(node, "pause")) == 0; }
bool KafkaCluster::Resume(int node) { return RunCommand(Script(node, "resume")) == 0; }

bool KafkaCluster::StartAll() {
  bool ok[kNodes] = {};
  std::vector<std::thread> starting;
  for (int n = 0; n < kNodes; ++n) starting.emplace_back([this, n, &ok] { ok[n] = Start(n); });
  for (std::thread& t : starting) t.join();
  return ok[0] && ok[1] && ok[2];
}

std::string KafkaCluster::Describe(const std::string& topic) const {
  return RunCommandCapturing(
             absl::StrCat(SourceRoot(),
                          "/scripts/kafka.sh run-class org.apache.kafka.tools.TopicCommand "
                          "--bootstrap-server ",
                          bootstrap(), " --describe --topic ", topic, " 2>&1"))
      .out;
}

PostgresPair::PostgresPair(int port0, int port1)
    : ports_{port0, port1}, dir_(StateDir("postgres-pair")) {
  RunCommand("mkdir -p " + dir_);
  if (RunCommand(Script(0, "start")) != 0 || RunCommand(Script(1, "start")) != 0) {
    ADD_FAILURE() << "Postgres primary and standby did not start; see " << dir_;
  }
}

PostgresPair::~PostgresPair() {
  for (int server = 0; server < 2; ++server) RunCommand(Script(server, "stop immediate"));
  RemoveStateUnlessFailed(dir_);
}

std::string PostgresPair::url(const std::string& database) const {
  return absl::StrCat("postgresql://concert:concert@127.0.0.1:", ports_[0], ",127.0.0.1:",
                      ports_[1], "/", database, "?target_session_attrs=read-write");
}

std::string PostgresPair::server_url(int server, const std::string& database) const {
  return absl::StrCat("postgresql://concert:concert@127.0.0.1:", ports_[server], "/", database);
}

std::string PostgresPair::CreateDatabase(const std::string& prefix) const {
  std::string name = UniqueName(prefix);
  pqxx::connection conn(url());
  pqxx::nontransaction tx(conn);
  // Applied on the standby too before this returns: libpq tries the next host of a multi-host
  // URL when a server is down, not when it refuses the connection (no such database yet).
  tx.exec("SET synchronous_commit = remote_apply");
  tx.exec("CREATE DATABASE " + name + " OWNER concert");
  return name;
}

// Server s is named pg<s>; as a primary it waits for the other, as a standby it follows it.
std::string PostgresPair::Script(int server, const std::string& verb) const {
  int other = 1 - server;
  return absl::StrCat("PG_PORT=", ports_[server], " PG_DIR=", dir_, "/pg", server,
                      " PG_NAME=pg", server, " PG_SYNC_STANDBY=pg", other,
                      server == primary_ ? "" : absl::StrCat(" PG_PRIMARY_PORT=", ports_[other]),
                      " ", SourceRoot(), "/scripts/postgres.sh ", verb, " >>", dir_,
                      "/scripts.log 2>&1");
}

bool PostgresPair::KillPrimary() { return RunCommand(Script(primary_, "kill")) == 0; }

bool PostgresPair::PromoteStandby() {
  if (RunCommand(Script(standby(), "promote")) != 0) return false;
  primary_ = standby();
  return true;
}

bool PostgresPair::RebuildStandby() { return RunCommand(Script(standby(), "rebuild")) == 0; }
bool PostgresPair::Stop(int server) { return RunCommand(Script(server, "stop")) == 0; }
bool PostgresPair::Start(int server) { return RunCommand(Script(server, "start")) == 0; }

double ScrapeMetric(int port, const std::string& name, const std::string& label_filter) {
  httplib::Client client("127.0.0.1", port);
  client.set_connection_timeout(1);
  client.set_read_timeout(5);
  auto r = client.Get("/metrics");
  if (!r || r->status != 200) return -1;
  double total = 0;
  for (absl::string_view line : absl::StrSplit(r->body, '\n')) {
    if (!absl::StartsWith(line, name) || absl::StartsWith(line, "#")) continue;
    absl::string_view rest = line.substr(name.size());
    if (!rest.empty() && rest[0] != ' ' && rest[0] != '{') continue;
    if (!label_filter.empty() && !absl::StrContains(rest, label_filter)) continue;
    double v = 0;
    if (absl::SimpleAtod(rest.substr(rest.rfind(' ') + 1), &v)) total += v;
  }
  return total;
}

}  // namespace concert::testing
