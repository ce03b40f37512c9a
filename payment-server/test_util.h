// Test-only helpers shared by payment-server's tests: calling grpc.health.v1.Health/Check
// without its generated code (Debian ships no health.proto), and counting rows.
#ifndef CONCERT_PAYMENT_SERVER_TEST_UTIL_H_
#define CONCERT_PAYMENT_SERVER_TEST_UTIL_H_

#include <grpcpp/grpcpp.h>
#include <grpcpp/impl/codegen/client_unary_call.h>
#include <grpcpp/impl/codegen/rpc_method.h>
#include <grpcpp/support/byte_buffer.h>

#include <memory>
#include <string>

#include <pqxx/pqxx>

#include "absl/time/time.h"
#include "common/grpc_server.h"

namespace concert::payment::testing {

// 1 SERVING, 2 NOT_SERVING (grpc.health.v1 enum values), -1 when the call failed.
inline int HealthStatus(const std::shared_ptr<grpc::Channel>& channel) {
  static const grpc::internal::RpcMethod kCheck("/grpc.health.v1.Health/Check",
                                                grpc::internal::RpcMethod::NORMAL_RPC);
  grpc::ClientContext context;
  context.set_deadline(Deadline(absl::Seconds(2)));
  grpc::Slice empty(std::string{});  // HealthCheckRequest{service: ""} is zero bytes
  grpc::ByteBuffer request(&empty, 1);
  grpc::ByteBuffer response;
  grpc::Status status = grpc::internal::BlockingUnaryCall<grpc::ByteBuffer, grpc::ByteBuffer>(
      channel.get(), kCheck, &context, request, &response);
  if (!status.ok()) return -1;
  std::vector<grpc::Slice> slices;
  if (!response.Dump(&slices).ok()) return -1;
  std::string bytes;
  for (const grpc::Slice& s : slices) bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  // HealthCheckResponse{status = 1: enum}: tag 0x08, then a one-byte varint.
  if (bytes.size() == 2 && bytes[0] == 0x08) return bytes[1];
  return bytes.empty() ? 0 : -1;
}

inline int64_t QueryInt(const std::string& url, const std::string& sql) {
  pqxx::connection conn(url);
  pqxx::nontransaction tx(conn);
  return tx.exec1(sql)[0].as<int64_t>();
}

inline std::string QueryString(const std::string& url, const std::string& sql) {
  pqxx::connection conn(url);
  pqxx::nontransaction tx(conn);
  pqxx::row row = tx.exec1(sql);
  return row[0].is_null() ? "" : row[0].as<std::string>();
}

inline void Exec(const std::string& url, const std::string& sql) {
  pqxx::connection conn(url);
  pqxx::nontransaction tx(conn);
  tx.exec(sql);
}

}  // namespace concert::payment::testing

#endif  // CONCERT_PAYMENT_SERVER_TEST_UTIL_H_
