// What integration tests share: the real local Postgres and Kafka that `make test` starts
// (scripts/postgres.sh, scripts/kafka.sh), a scratch database per test, unique topic names,
// child processes of our binaries, and bounded waiting.
//
//   ScratchDatabase db("notifier");           // CREATE DATABASE test_notifier_<random>
//   std::string topic = UniqueName("events"); // a topic no other test uses
//   ChildProcess relay(BinaryPath("outbox-relay"), {}, {{"DATABASE_URL", db.url()}});
//   ASSERT_TRUE(WaitUntil([&] { return CountRows(...) == 10; }, absl::Seconds(30)));
//
// Override the endpoints with CONCERT_TEST_DATABASE_URL (an admin URL; scratch databases are
// created beside its database) and CONCERT_TEST_KAFKA.
#ifndef CONCERT_COMMON_TESTING_ENVIRONMENT_H_
#define CONCERT_COMMON_TESTING_ENVIRONMENT_H_

#include <sys/types.h>

#include <grpcpp/grpcpp.h>

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/time/time.h"

namespace concert::testing {

std::string AdminDatabaseUrl();
std::string KafkaBootstrap();

// "<prefix>_<random hex>", safe as a database, topic or group name.
std::string UniqueName(const std::string& prefix);
// "<prefix>_<32 random hex digits>": a shared secret as long as the services' settings want
// (AUTH_TOKEN_SECRET, INTERNAL_TOKEN: at least 32 bytes).
std::string UniqueSecret(const std::string& prefix);

// Where the built binaries are (build/bin of the build tree that built this test).
std::string BinaryPath(const std::string& name);
// The source tree's root (scripts/ lives there).
std::string SourceRoot();

// Polls `done` every `poll` until it returns true or `timeout` passes.
bool WaitUntil(const std::function<bool()>& done, absl::Duration timeout,
               absl::Duration poll = absl::Milliseconds(100));

// grpc.health.v1.Health/Check of `service` ("" is readiness, "liveness" liveness): 1 SERVING,
// 2 NOT_SERVING (the protocol's values), -1 when the call fails within 2 s.
int HealthStatus(const std::shared_ptr<grpc::Channel>& channel, const std::string& service = "");
int HealthStatus(const std::string& address, const std::string& service = "");

// The sum of the samples of metric `name` (lines whose labels contain `label_filter`) on the
// Prometheus endpoint at 127.0.0.1:`port`; -1 when the endpoint does not answer.
double ScrapeMetric(int port, const std::string& name, const std::string& label_filter = "");

// A database of its own for one test, dropped (with its connections) at destruction.
class ScratchDatabase {
 public:
  explicit ScratchDatabase(const std::string& prefix);
  ~ScratchDatabase();
  ScratchDatabase(const ScratchDatabase&) = delete;
  ScratchDatabase& operator=(const ScratchDatabase&) = delete;

  const std::string& name() const { return name_; }
  // A libpq URL for it, same credentials as the admin URL.
  const std::string& url() const { return url_; }

 private:
  std::string name_;
  std::string url_;
};

// A child process of ours; stdout and stderr go to a log file under the build tree. The
// destructor sends SIGTERM, waits up to 10 s, then SIGKILLs: no process outlives a test.
class ChildProcess {
 public:
  ChildProcess(const std::string& path, const std::vector<std::string>& args,
               const std::map<std::string, std::string>& env);
  ~ChildProcess();
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  pid_t pid() const { return pid_; }
  bool running();
  // Sends `signal` and waits up to `timeout` for the exit; returns the exit status as from
  // waitpid (use WIFEXITED etc.), or -1 if it did not exit in time.
  int Stop(int signal, absl::Duration timeout = absl::Seconds(10));
  const std::string& log_path() const { return log_path_; }
  std::string ReadLog() const;

 private:
  pid_t pid_ = -1;
  int status_ = -1;
  std::string log_path_;
};

// A Postgres or Kafka of one test's own, on free ports, with its state under the build tree:
// for tests that stop, kill or restart it without disturbing the shared instances. Started by
// the constructor; the destructor stops it and deletes its state.
class PrivatePostgres {
 public:
  // kOn: TLS on as well (scripts/postgres.sh PG_TLS=on), certificates of a CA of its own.
  enum class Tls { kOff, kOn };
  explicit PrivatePostgres(Tls tls = Tls::kOff);
  ~PrivatePostgres();
  // postgresql://concert:concert@127.0.0.1:<port>/concert
  std::string url() const;
  int port() const { return port_; }
  // With Tls::kOn: the CA that signed the server's certificate (for sslrootcert).
  std::string tls_ca_file() const { return dir_ + "/tls/ca.pem"; }
  bool Start();
  // `immediate` is a crash as far as the WAL is concerned (pg_ctl -m immediate).
  bool Stop(bool immediate = false);

 private:
  std::string Script(const std::string& verb) const;
  int port_;
  Tls tls_;
  std::string dir_;
};

class PrivateKafka {
 public:
  // kSecured: SASL_SSL and mTLS listeners as well (scripts/kafka.sh), with the SASL user
  // kSaslUser / kSaslPassword (PLAIN and SCRAM) and certificates of a CA of its own in
  // tls_dir().
  enum class Listeners { kPlaintext, kSecured };
  static constexpr char kSaslUser[] = "concert";
  static constexpr char kSaslPassword[] = "sasl-test-secret";

  explicit PrivateKafka(Listeners listeners = Listeners::kPlaintext);
  ~PrivateKafka();
  std::string bootstrap() const;
  // With Listeners::kSecured: SASL_SSL (SCRAM) and SSL requiring a client certificate.
  std::string sasl_ssl_bootstrap() const;
  std::string mtls_bootstrap() const;
  // ca.pem (trust it), client.pem + client.key (a client certificate it signed).
  std::string tls_dir() const { return dir_ + "/tls"; }
  bool Start();
  bool Stop();  // clean shutdown
  bool Kill();  // SIGKILL

 private:
  std::string Script(const std::string& verb) const;
  int port_, controller_port_;
  int sasl_ssl_port_ = 0, mtls_port_ = 0;
  std::string dir_;
};

// Three Kafka nodes on loopback, each a combined broker and controller (a controller quorum of
// three: any two keep the cluster's metadata going), one cluster (scripts/kafka.sh with
// KAFKA_NODE_ID / KAFKA_QUORUM / KAFKA_CLUSTER_ID), internal topics replicated three times.
// Topic defaults stay at one replica so that what a topic gets comes from whoever created it.
// Node n (0, 1, 2) listens on base_port + 2n, its controller on base_port + 2n + 1: fixed
// ports, since a restarted node must come back where the clients know it. The constructor
// starts all three (together: a node answers only once a majority is up); the destructor
// SIGKILLs them (paused ones too) and deletes their state, which is kept when the test failed.
class KafkaCluster {
 public:
  static constexpr int kNodes = 3;
  explicit KafkaCluster(int base_port);
  ~KafkaCluster();
  KafkaCluster(const KafkaCluster&) = delete;
  KafkaCluster& operator=(const KafkaCluster&) = delete;

  // All three nodes, comma-separated.
  std::string bootstrap() const;
  // Node n's node.id (n + 1) and address.
  int node_id(int node) const { return node + 1; }
  std::string address(int node) const;
  // scripts/kafka.sh verbs on node n; true when the script succeeded. Start waits until the
  // node answers a metadata request.
  bool Start(int node);
  bool StartAll();
  bool Stop(int node);  // clean shutdown (SIGTERM)
  bool Kill(int node);  // SIGKILL
  bool Pause(int node);   // SIGSTOP
  bool Resume(int node);  // SIGCONT
  // Kafka's own TopicCommand --describe of `topic` (stdout and stderr).
  std::string Describe(const std::string& topic) const;
  // Where the nodes keep their state and logs.
  const std::string& dir() const { return dir_; }

 private:
  std::string Script(int node, const std::string& verb) const;
  int base_port_;
  std::string cluster_id_;
  std::string dir_;
};

// A PostgreSQL primary with a streaming standby made from it by pg_basebackup, synchronous
// replication both ways (whichever is primary waits for the other to have each commit), on
// two fixed loopback ports (the services' URL names both). The constructor starts server 0 as
// the primary and server 1 as its standby; the destructor stops both and deletes their state,
// which is kept when the test failed.
class PostgresPair {
 public:
  PostgresPair(int port0, int port1);
  ~PostgresPair();
  PostgresPair(const PostgresPair&) = delete;
  PostgresPair& operator=(const PostgresPair&) = delete;

  // Both servers, the writable one chosen by libpq (target_session_attrs=read-write).
  std::string url(const std::string& database = "concert") const;
  // One server alone (for checks of what a single server holds).
  std::string server_url(int server, const std::string& database = "concert") const;
  // A new database on the primary (replicated like everything else), "<prefix>_<random>";
  // returns its name.
  std::string CreateDatabase(const std::string& prefix) const;
  int primary() const { return primary_; }
  int standby() const { return 1 - primary_; }
  // The steps of a failover, for the test to time and interleave: SIGKILL of the primary
  // (scripts/postgres.sh kill), promotion of the standby, and the old primary copied afresh from
  // the new one and started as its standby (scripts/postgres.sh rebuild). After Promote(),
  // primary() is the promoted server.
  bool KillPrimary();
  bool PromoteStandby();
  bool RebuildStandby();
  // One server alone, in its current role (scripts/postgres.sh stop / start).
  bool Stop(int server);
  bool Start(int server);
  const std::string& dir() const { return dir_; }

 private:
  std::string Script(int server, const std::string& verb) const;
  int ports_[2];
  int primary_ = 0;
  std::string dir_;
};

// A TCP port on 127.0.0.1 that nothing listens on right now.
int FreePort();

// Runs a shell command (for scripts/kafka.sh and scripts/postgres.sh); returns its exit code.
int RunCommand(const std::string& command);

struct CommandOutput {
  int exit_code = -1;  // -1: it could not start, or a signal ended it
  std::string out;     // its standard output (redirect within `command` to pick streams)
};
// Runs a shell command and collects what it prints.
CommandOutput RunCommandCapturing(const std::string& command);

}  // namespace concert::testing

#endif  // CONCERT_COMMON_TESTING_ENVIRONMENT_H_
