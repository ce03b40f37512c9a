#include "common/kafka/headers.h"

namespace concert::kafka {

std::optional<std::string> HeaderValue(const RdKafka::Message& message, absl::string_view name) {
  // headers() is not const in librdkafka but does not modify the message.
  RdKafka::Headers* headers = const_cast<RdKafka::Message&>(message).headers();
  if (headers == nullptr) return std::nullopt;
  RdKafka::Headers::Header last = headers->get_last(std::string(name));
  if (last.err() != RdKafka::ERR_NO_ERROR || last.value() == nullptr) return std::nullopt;
  return std::string(static_cast<const char*>(last.value()), last.value_size());
}

Headers AllHeaders(const RdKafka::Message& message) {
  Headers out;
  // headers() is not const in librdkafka but does not modify the message.
  RdKafka::Headers* headers = const_cast<RdKafka::Message&>(message).headers();
  if (headers == nullptr) return out;
  for (const RdKafka::Headers::Header& h : headers->get_all()) {
    out.emplace_back(h.key(), h.value() == nullptr
                                  ? std::string()
                                  : std::string(static_cast<const char*>(h.value()), h.value_size()));
  }
  return out;
}

}  // namespace concert::kafka
