#include "common/paging.h"

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace concert {

absl::StatusOr<int> PageSize(int32_t requested) {
  if (requested == 0) return kDefaultPageSize;
  if (requested < 0 || requested > kMaxPageSize) {
    return absl::InvalidArgumentError(
        absl::StrCat("page_size must be between 1 and ", kMaxPageSize, " (0 means ",
                     kDefaultPageSize, "), not ", requested));
  }
  return requested;
}

std::string EncodePageToken(absl::string_view list, int64_t last_key) {
  return absl::WebSafeBase64Escape(absl::StrCat(list, ":", last_key));
}

absl::StatusOr<std::optional<int64_t>> DecodePageToken(absl::string_view list,
                                                       absl::string_view token, int64_t min_key,
                                                       int64_t max_key) {
  if (token.empty()) return std::nullopt;
  std::string decoded;
  std::string prefix = absl::StrCat(list, ":");
  int64_t key = 0;
  // SimpleAtoi refuses what does not fit an int64_t, so a key past 2^63 is refused here too.
  if (!absl::WebSafeBase64Unescape(token, &decoded) || !absl::StartsWith(decoded, prefix) ||
      !absl::SimpleAtoi(absl::string_view(decoded).substr(prefix.size()), &key) ||
      key < min_key || key > max_key) {
    return absl::InvalidArgumentError(
        "page_token is not one this call returned (pass next_page_token unchanged, with the "
        "same request otherwise)");
  }
  return key;
}

}  // namespace concert
