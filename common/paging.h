// Keyset pagination as every list call of our APIs does it: the page_size rule, and opaque
// page tokens that carry the key of the last row a page returned (the next page starts after
// it), so that pages stay stable under concurrent inserts, unlike OFFSET.
//
//   ASSIGN_OR_RETURN(int page_size, PageSize(request.page_size()));
//   ASSIGN_OR_RETURN(std::optional<int64_t> after,
//                    DecodePageToken("concerts", request.page_token(), 1, INT64_MAX));
//   ... SELECT ... WHERE id > after ORDER BY id LIMIT page_size + 1 ...
//   if (rows.size() > page_size) next_page_token = EncodePageToken("concerts", last_id);
//
// A token is base64url of "<list>:<key>". It is opaque to clients, but not secret and not
// signed: a forged token only moves the caller's own cursor, so every query must still filter
// by what the caller may see. Thread-safe (pure functions).
#ifndef CONCERT_COMMON_PAGING_H_
#define CONCERT_COMMON_PAGING_H_

#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace concert {

inline constexpr int kDefaultPageSize = 50;
inline constexpr int kMaxPageSize = 500;

// 0 (unset) gives kDefaultPageSize; 1..kMaxPageSize is taken as is; anything else is
// INVALID_ARGUMENT, so that a caller asking for more than a page can hold learns it.
absl::StatusOr<int> PageSize(int32_t requested);

// The token of the page that follows the row with key `last_key` in list `list` ("concerts",
// "seats/7": naming the schedule makes a token of one schedule invalid for another).
std::string EncodePageToken(absl::string_view list, int64_t last_key);

// The key `token` carries; nullopt for "" (the first page). INVALID_ARGUMENT unless the token
// is EncodePageToken(list, k) for some k in [min_key, max_key]: the range is the key column's
// (e.g. a Postgres int), so that no forged key can make a query fail inside the database.
absl::StatusOr<std::optional<int64_t>> DecodePageToken(absl::string_view list,
                                                       absl::string_view token, int64_t min_key,
                                                       int64_t max_key);

}  // namespace concert

#endif  // CONCERT_COMMON_PAGING_H_
