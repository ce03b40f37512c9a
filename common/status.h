// absl::Status helpers shared by every service: early-return macros (Abseil 20220623 has none)
// and the one mapping from absl::Status to grpc::Status used at the API edge.
//
//   absl::StatusOr<Payment> Pay(...) {
//     RETURN_IF_ERROR(CheckToken(token));
//     ASSIGN_OR_RETURN(Reservation r, LoadReservation(id));
//     ...
//   }
#ifndef CONCERT_COMMON_STATUS_H_
#define CONCERT_COMMON_STATUS_H_

#include <grpcpp/support/status.h>

#include "absl/strings/string_view.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define CONCERT_STATUS_CONCAT_INNER_(a, b) a##b
#define CONCERT_STATUS_CONCAT_(a, b) CONCERT_STATUS_CONCAT_INNER_(a, b)

// Returns from the enclosing function when `expr` (an absl::Status) is not OK.
#define RETURN_IF_ERROR(expr)                         \
  do {                                                \
    if (::absl::Status _st = (expr); !_st.ok()) {     \
      return _st;                                     \
    }                                                 \
  } while (0)

// `ASSIGN_OR_RETURN(T v, StatusOrExpr)`: declares/assigns `v` or returns the error.
#define ASSIGN_OR_RETURN(lhs, expr) \
  CONCERT_ASSIGN_OR_RETURN_IMPL_(CONCERT_STATUS_CONCAT_(_status_or_, __LINE__), lhs, expr)
#define CONCERT_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                                   \
  if (!tmp.ok()) return std::move(tmp).status();       \
  lhs = std::move(tmp).value()

namespace concert {

// Same code and message; absl and gRPC share the canonical code numbering.
grpc::Status ToGrpcStatus(const absl::Status& status);

// Prefixes the message with `context` ("loading reservation 7: <message>"), keeping the code.
absl::Status Annotate(const absl::Status& status, absl::string_view context);

}  // namespace concert

#endif  // CONCERT_COMMON_STATUS_H_
