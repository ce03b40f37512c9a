#include "payment-server/payments.h"

#include <algorithm>
#include <cstdint>
#include <limits>
#include <unordered_map>
#include <vector>

#include <nlohmann/json.hpp>
#include <openssl/rand.h>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/log.h"
#include "common/paging.h"
#include "common/status.h"

namespace concert::payment {
namespace {

// Timestamps travel as microseconds since the epoch so that no text parsing is involved.
#define CONCERT_MICROS(column) "(extract(epoch FROM " column ") * 1000000)::bigint"
// A concert postponed with no date starts at 'infinity' (or '-infinity'), which no bigint
// holds: NULL then, and the API leaves the start unset.
#define CONCERT_START_MICROS(column) \
  "CASE WHEN isfinite(" column ") THEN " CONCERT_MICROS(column) " END"

constexpr char kPay[] = "payment_pay";
constexpr char kPaymentById[] = "payment_by_id";
constexpr char kUserExists[] = "payment_user_exists";
constexpr char kReserve[] = "payment_reserve";
constexpr char kPaymentsOfUser[] = "payment_payments_of_user";
constexpr char kAccount[] = "payment_account";
constexpr char kConcertsPage[] = "payment_concerts_page";
constexpr char kSchedulesOfConcerts[] = "payment_schedules_of_concerts";
constexpr char kScheduleExists[] = "payment_schedule_exists";
constexpr char kSeatsPage[] = "payment_seats_page";
constexpr char kInsertLinkCode[] = "payment_insert_link_code";
constexpr char kForgetOldLinkCodes[] = "payment_forget_old_link_codes";
constexpr char kLockLinkCode[] = "payment_lock_link_code";
constexpr char kUseLinkCode[] = "payment_use_link_code";
constexpr char kLinkOfUser[] = "payment_link_of_user";
constexpr char kFreeChat[] = "payment_free_chat";
constexpr char kUpsertLink[] = "payment_upsert_link";
constexpr char kUnlinkUser[] = "payment_unlink_user";
constexpr char kUnlinkChat[] = "payment_unlink_chat";

// 32 random bytes: 43 characters of base64url, within Telegram's 64 for a start parameter.
constexpr size_t kLinkCodeBytes = 32;
constexpr size_t kMaxLinkCodeLength = 64;
// Expired codes are kept this long so that a late Start hears "expired", not "unknown".
constexpr char kKeepExpiredCodes[] = "1 day";

// Page tokens: the list each belongs to and the range of its key column. Ids are positive
// bigserials; seats are paged by seat_number, a Postgres int.
constexpr char kConcertsList[] = "concerts";
constexpr char kPaymentsList[] = "payments";
constexpr int64_t kMaxId = std::numeric_limits<int64_t>::max();
constexpr int64_t kMinSeatNumber = std::numeric_limits<int32_t>::min();
constexpr int64_t kMaxSeatNumber = std::numeric_limits<int32_t>::max();

constexpr size_t kMaxTraceparentLength = 256;

google::protobuf::Timestamp TimestampFromMicros(int64_t micros) {
  google::protobuf::Timestamp t;
  int64_t seconds = micros / 1000000;
  int64_t rest = micros % 1000000;
  if (rest < 0) {
    rest += 1000000;
    --seconds;
  }
  t.set_seconds(seconds);
  t.set_nanos(static_cast<int32_t>(rest * 1000));
  return t;
}

// Columns: id, reservation_id, user_id, amount_won, paid_at micros, event_id, balance_won.
v1::Payment PaymentFromRow(const pqxx::row& row) {
  v1::Payment p;
  p.set_payment_id(row[0].as<int64_t>());
  p.set_reservation_id(row[1].as<int64_t>());
  p.set_user_id(row[2].as<int64_t>());
  p.set_amount_won(row[3].as<int64_t>());
  *p.mutable_paid_at() = TimestampFromMicros(row[4].as<int64_t>());
  p.set_event_id(row[5].as<std::string>());
  p.set_balance_won(row[6].as<int64_t>());
  return p;
}

// A token of one schedule's seats is refused for another schedule's.
std::string SeatsList(int64_t schedule_id) { return absl::StrCat("seats/", schedule_id); }

// List queries fetch page_size + 1 rows: the extra row only tells that another page follows,
// which starts after the last row kept (its key in column `key_column`).
size_t RowsInPage(const pqxx::result& rows, int page_size) {
  return std::min(rows.size(), static_cast<size_t>(page_size));
}
std::string NextPageToken(const pqxx::result& rows, int page_size, absl::string_view list,
                          int key_column) {
  if (rows.size() <= static_cast<size_t>(page_size)) return "";
  return EncodePageToken(list, rows[page_size - 1][key_column].as<int64_t>());
}

v1::SeatAvailability SeatAvailabilityFromText(const std::string& text) {
  if (text == "FREE") return v1::SEAT_AVAILABILITY_FREE;
  if (text == "HELD") return v1::SEAT_AVAILABILITY_HELD;
  if (text == "SOLD") return v1::SEAT_AVAILABILITY_SOLD;
  return v1::SEAT_AVAILABILITY_UNSPECIFIED;  // payment.seat_availability gives none other
}

// The answer to one row of payment.pay_concert, whose outcomes schema.cc lists.
absl::Status PayOutcome(const std::string& outcome, const pqxx::row& row, int64_t reservation_id,
                        v1::Payment& payment) {
  if (outcome == "PAID" || outcome == "REPLAYED") {
    payment = PaymentFromRow(row);
    return absl::OkStatus();
  }
  if (outcome == "NOT_FOUND") {
    return absl::NotFoundError(absl::StrCat("reservation ", reservation_id, " does not exist"));
  }
  if (outcome == "NOT_YOURS") {
    return absl::PermissionDeniedError(
        absl::StrCat("reservation ", reservation_id, " belongs to another user"));
  }
  if (outcome == "EXPIRED") {
    return absl::FailedPreconditionError(absl::StrCat(
        "reservation hold expired (reservation ", reservation_id, "); reserve the seat again"));
  }
  if (outcome == "INSUFFICIENT_BALANCE") {
    return absl::FailedPreconditionError(absl::StrCat(
        "insufficient balance: the reservation costs ", row[3].as<int64_t>(), " won"));
  }
  if (outcome == "PAID_WITHOUT_PAYMENT") {
    return absl::InternalError(
        absl::StrCat("reservation ", reservation_id, " is PAID but has no payment"));
  }
  return absl::InternalError(absl::StrCat("payment.pay_concert answered '", outcome, "'"));
}

// The answer to payment.reserve_seat's row, whose outcomes schema.cc lists.
absl::Status ReserveOutcome(const pqxx::row& row, int64_t user_id, int64_t seat_id,
                            v1::Reservation& reservation) {
  const std::string outcome = row[5].as<std::string>();
  if (outcome == "USER_NOT_FOUND") {
    return absl::NotFoundError(absl::StrCat("user ", user_id, " does not exist"));
  }
  if (outcome == "SEAT_NOT_FOUND") {
    return absl::NotFoundError(absl::StrCat("seat ", seat_id, " does not exist"));
  }
  if (outcome == "TAKEN") {
    return absl::AlreadyExistsError(absl::StrCat("seat ", seat_id, " is already held or sold"));
  }
  if (outcome != "HELD") {
    return absl::InternalError(absl::StrCat("payment.reserve_seat answered '", outcome, "'"));
  }
  reservation.set_reservation_id(row[0].as<int64_t>());
  reservation.set_user_id(user_id);
  reservation.set_seat_id(seat_id);
  reservation.set_concert_title(row[3].as<std::string>());
  if (!row[4].is_null()) {
    *reservation.mutable_concert_start() = TimestampFromMicros(row[4].as<int64_t>());
  }
  reservation.set_amount_won(row[2].as<int64_t>());
  reservation.set_status(v1::RESERVATION_STATUS_HELD);
  *reservation.mutable_expires_at() = TimestampFromMicros(row[1].as<int64_t>());
  return absl::OkStatus();
}

}  // namespace

Payments::Payments(PgPool& pool, PaymentsOptions options)
    : pool_(pool), options_(std::move(options)) {}

void Payments::Prepare(pqxx::connection& conn) {
  // payment.pay_concert (schema.cc) returns the PaymentFromRow columns, then the outcome.
  conn.prepare(kPay, "SELECT * FROM payment.pay_concert($1, $2, $3::jsonb)");
  const char* payment_columns =
      "SELECT p.id, p.reservation_id, p.user_id, p.amount_won, " CONCERT_MICROS("p.paid_at")
      ", p.event_id::text, u.balance_won "
      "FROM payment.payments p JOIN payment.users u ON u.id = p.user_id ";
  conn.prepare(kPaymentById, absl::StrCat(payment_columns, "WHERE p.id = $1"));
  // $2 = 0 on the first page; a page token carries the last (smallest) id of the previous one.
  // The cast types $2 as bigint: `$2 = 0` alone would make it an int, too small for an id.
  conn.prepare(kPaymentsOfUser,
               absl::StrCat(payment_columns,
                            "WHERE p.user_id = $1 AND ($2::bigint = 0 OR p.id < $2) "
                            "ORDER BY p.id DESC LIMIT $3"));
  conn.prepare(kUserExists, "SELECT 1 FROM payment.users WHERE id = $1");
  // payment.reserve_seat (schema.cc) returns the reservation id, its expiry in micros, the
  // price, the concert's title and start in micros, then the outcome.
  conn.prepare(kReserve, "SELECT * FROM payment.reserve_seat($1, $2, $3)");
  conn.prepare(kAccount,
               "SELECT id, name, mail, balance_won, "
               "EXISTS (SELECT 1 FROM payment.telegram_links WHERE user_id = u.id) "
               "FROM payment.users u WHERE id = $1");
  // Codes are looked up by their sha256, computed by Postgres from the text the bot received.
  conn.prepare(kInsertLinkCode,
               "INSERT INTO payment.telegram_link_codes (code_hash, user_id, expires_at) "
               "VALUES (sha256(convert_to($1, 'UTF8')), $2, "
               "now() + $3 * interval '1 millisecond') "
               "RETURNING " CONCERT_MICROS("expires_at"));
  conn.prepare(kForgetOldLinkCodes,
               absl::StrCat("DELETE FROM payment.telegram_link_codes "
                            "WHERE expires_at < now() - interval '", kKeepExpiredCodes, "'"));
  conn.prepare(kLockLinkCode,
               "SELECT user_id, expires_at <= now(), used_at IS NOT NULL "
               "FROM payment.telegram_link_codes "
               "WHERE code_hash = sha256(convert_to($1, 'UTF8')) FOR UPDATE");
  conn.prepare(kUseLinkCode,
               "UPDATE payment.telegram_link_codes SET used_at = now() "
               "WHERE code_hash = sha256(convert_to($1, 'UTF8'))");
  conn.prepare(kLinkOfUser, "SELECT chat_id FROM payment.telegram_links WHERE user_id = $1");
  conn.prepare(kFreeChat,
               "DELETE FROM payment.telegram_links WHERE chat_id = $1 AND user_id <> $2");
  conn.prepare(kUpsertLink,
               "INSERT INTO payment.telegram_links (user_id, chat_id) VALUES ($1, $2) "
               "ON CONFLICT (user_id) DO UPDATE SET chat_id = excluded.chat_id, linked_at = now()");
  conn.prepare(kUnlinkUser,
               "DELETE FROM payment.telegram_links WHERE user_id = $1 RETURNING chat_id");
  conn.prepare(kUnlinkChat,
               "DELETE FROM payment.telegram_links WHERE chat_id = $1 RETURNING user_id");
  conn.prepare(kConcertsPage,
               "SELECT id, title FROM payment.concerts WHERE id > $1 ORDER BY id LIMIT $2");
  // $1 is an array literal of the page's concert ids.
  conn.prepare(kSchedulesOfConcerts,
               "SELECT sch.concert_id, sch.id, " CONCERT_START_MICROS("sch.starts_at") ", "
               "count(a.seat_id), count(a.seat_id) FILTER (WHERE a.availability = 'FREE') "
               "FROM payment.schedules sch "
               "LEFT JOIN payment.seat_availability a ON a.schedule_id = sch.id "
               "WHERE sch.concert_id = ANY($1::bigint[]) "
               "GROUP BY sch.id ORDER BY sch.concert_id, sch.starts_at, sch.id");
  conn.prepare(kScheduleExists, "SELECT 1 FROM payment.schedules WHERE id = $1");
  // $2 is below every seat number on the first page (hence bigint), else the last one seen.
  conn.prepare(kSeatsPage,
               "SELECT seat_id, seat_number, price_won, availability "
               "FROM payment.seat_availability WHERE schedule_id = $1 AND seat_number > $2::bigint "
               "ORDER BY seat_number LIMIT $3");
}

absl::StatusOr<v1::Reservation> Payments::ReserveSeat(int64_t user_id, int64_t seat_id) {
  if (seat_id <= 0) return absl::InvalidArgumentError("seat_id must be positive");
  v1::Reservation reservation;
  // One round trip, committed on its own, never repeated: a repeat after a commit that a broken
  // connection hid would find the caller's own hold and answer ALREADY_EXISTS.
  absl::Status status = pool_.Execute([&](pqxx::nontransaction& tx) -> absl::Status {
    pqxx::row row = tx.exec_prepared1(kReserve, user_id, seat_id,
                                      absl::ToInt64Milliseconds(options_.reservation_hold));
    return ReserveOutcome(row, user_id, seat_id, reservation);
  });
  RETURN_IF_ERROR(status);
  log::Info("seat held", {{"reservation_id", reservation.reservation_id()},
                          {"user_id", user_id},
                          {"seat_id", seat_id}});
  return reservation;
}

absl::StatusOr<v1::Payment> Payments::PayConcert(int64_t user_id, int64_t reservation_id,
                                                 absl::string_view traceparent) {
  if (reservation_id <= 0) return absl::InvalidArgumentError("reservation_id must be positive");
  std::string headers = "{}";
  if (!traceparent.empty() && traceparent.size() <= kMaxTraceparentLength) {
    headers = nlohmann::json{{"traceparent", std::string(traceparent)}}.dump();
  }
  v1::Payment payment;
  std::string outcome;
  auto pay = [&](pqxx::transaction_base& tx) -> absl::Status {
    pqxx::row row = tx.exec_prepared1(kPay, user_id, reservation_id, headers);
    outcome = row[7].as<std::string>();
    return PayOutcome(outcome, row, reservation_id, payment);
  };
  absl::Status status;
  if (options_.before_commit_for_test) {
    // The same statement inside a transaction block, so that a failure between its writes and
    // the commit can be injected.
    status = pool_.Transact([&](pqxx::work& tx) -> absl::Status {
      RETURN_IF_ERROR(pay(tx));
      if (outcome != "PAID") return absl::OkStatus();
      return options_.before_commit_for_test(payment.payment_id());
    });
  } else {
    // One round trip, committed on its own. Repeating it is safe even when a broken connection
    // hid whether it committed: a payment that did is found and answered as REPLAYED.
    status = pool_.Execute(pay, PgPool::Retry::kIdempotent);
  }
  if (!status.ok()) return status;
  if (outcome == "REPLAYED") {
    log::Info("payment replayed", {{"payment_id", payment.payment_id()},
                                   {"reservation_id", reservation_id},
                                   {"event_id", payment.event_id()}});
  } else {
    log::Info("payment completed", {{"payment_id", payment.payment_id()},
                                    {"reservation_id", reservation_id},
                                    {"user_id", user_id},
                                    {"amount_won", payment.amount_won()},
                                    {"event_id", payment.event_id()}});
  }
  return payment;
}

absl::StatusOr<v1::Payment> Payments::GetPayment(int64_t user_id, int64_t payment_id) {
  if (payment_id <= 0) return absl::InvalidArgumentError("payment_id must be positive");
  v1::Payment payment;
  absl::Status status = pool_.Transact([&](pqxx::work& tx) -> absl::Status {
    pqxx::result rows = tx.exec_prepared(kPaymentById, payment_id);
    if (rows.empty() || rows[0][2].as<int64_t>() != user_id) {
      return absl::NotFoundError(absl::StrCat("payment ", payment_id, " not found"));
    }
    payment = PaymentFromRow(rows[0]);
    return absl::OkStatus();
  });
  RETURN_IF_ERROR(status);
  return payment;
}

absl::StatusOr<v1::ListPaymentsResponse> Payments::ListPayments(
    int64_t user_id, const v1::ListPaymentsRequest& request) {
  ASSIGN_OR_RETURN(int page_size, PageSize(request.page_size()));
  ASSIGN_OR_RETURN(std::optional<int64_t> before,
                   DecodePageToken(kPaymentsList, request.page_token(), 1, kMaxId));
  v1::ListPaymentsResponse response;
  RETURN_IF_ERROR(pool_.Transact([&](pqxx::work& tx) -> absl::Status {
    response.Clear();
    pqxx::result rows =
        tx.exec_prepared(kPaymentsOfUser, user_id, before.value_or(0), page_size + 1);
    for (size_t i = 0; i < RowsInPage(rows, page_size); ++i) {
      *response.add_payments() = PaymentFromRow(rows[i]);
    }
    response.set_next_page_token(NextPageToken(rows, page_size, kPaymentsList, 0));
    return absl::OkStatus();
  }));
  return response;
}

absl::StatusOr<v1::Account> Payments::GetAccount(int64_t user_id) {
  v1::Account account;
  RETURN_IF_ERROR(pool_.Transact([&](pqxx::work& tx) -> absl::Status {
    pqxx::result rows = tx.exec_prepared(kAccount, user_id);
    if (rows.empty()) return absl::NotFoundError(absl::StrCat("user ", user_id, " does not exist"));
    account.set_user_id(rows[0][0].as<int64_t>());
    account.set_name(rows[0][1].as<std::string>());
    account.set_mail(rows[0][2].as<std::string>());
    account.set_balance_won(rows[0][3].as<int64_t>());
    account.set_telegram_linked(rows[0][4].as<bool>());
    return absl::OkStatus();
  }));
  return account;
}

absl::StatusOr<v1::TelegramLink> Payments::LinkTelegram(int64_t user_id) {
  if (options_.telegram_bot_username.empty()) {
    return absl::FailedPreconditionError(
        "Telegram linking is not configured on this server (no TELEGRAM_BOT_USERNAME)");
  }
  unsigned char random[kLinkCodeBytes];
  if (RAND_bytes(random, sizeof(random)) != 1) {
    return absl::InternalError("no randomness for a link code (RAND_bytes failed)");
  }
  std::string code = absl::WebSafeBase64Escape(
      absl::string_view(reinterpret_cast<const char*>(random), sizeof(random)));
  v1::TelegramLink link;
  RETURN_IF_ERROR(pool_.Transact([&](pqxx::work& tx) -> absl::Status {
    if (tx.exec_prepared(kUserExists, user_id).empty()) {
      return absl::NotFoundError(absl::StrCat("user ", user_id, " does not exist"));
    }
    tx.exec_prepared(kForgetOldLinkCodes);
    pqxx::row row = tx.exec_prepared(kInsertLinkCode, code, user_id,
                                      absl::ToInt64Milliseconds(options_.telegram_link_ttl))[0];
    link.set_link(absl::StrCat("https://t.me/", options_.telegram_bot_username, "?start=", code));
    *link.mutable_expires_at() = TimestampFromMicros(row[0].as<int64_t>());
    return absl::OkStatus();
  }));
  log::Info("telegram link code issued", {{"user_id", user_id}});
  return link;
}

absl::StatusOr<v1::UnlinkTelegramResponse> Payments::UnlinkTelegram(int64_t user_id) {
  v1::UnlinkTelegramResponse response;
  RETURN_IF_ERROR(pool_.Transact([&](pqxx::work& tx) -> absl::Status {
    response.set_unlinked(!tx.exec_prepared(kUnlinkUser, user_id).empty());
    return absl::OkStatus();
  }));
  if (response.unlinked()) log::Info("telegram unlinked by the user", {{"user_id", user_id}});
  return response;
}

absl::StatusOr<internal::v1::ConfirmLinkResponse> Payments::ConfirmLink(
    const internal::v1::ConfirmLinkRequest& request) {
  const std::string& code = request.code();
  int64_t chat_id = request.chat_id();
  if (code.empty() || code.size() > kMaxLinkCodeLength) {
    return absl::InvalidArgumentError("code must be 1 to 64 characters");
  }
  if (chat_id == 0) return absl::InvalidArgumentError("chat_id must not be 0");
  internal::v1::ConfirmLinkResponse response;
  RETURN_IF_ERROR(pool_.Transact([&](pqxx::work& tx) -> absl::Status {
    pqxx::result found = tx.exec_prepared(kLockLinkCode, code);
    if (found.empty()) return absl::NotFoundError("unknown link code");
    int64_t user_id = found[0][0].as<int64_t>();
    if (found[0][2].as<bool>()) {
      // A retry of a confirmation whose answer was lost finds its own link: same answer.
      pqxx::result link = tx.exec_prepared(kLinkOfUser, user_id);
      if (!link.empty() && link[0][0].as<int64_t>() == chat_id) {
        response.set_user_id(user_id);
        return absl::OkStatus();
      }
      return absl::FailedPreconditionError("link code already used");
    }
    if (found[0][1].as<bool>()) return absl::FailedPreconditionError("link code expired");
    tx.exec_prepared(kUseLinkCode, code);
    tx.exec_prepared(kFreeChat, chat_id, user_id);
    tx.exec_prepared(kUpsertLink, user_id, chat_id);
    response.set_user_id(user_id);
    return absl::OkStatus();
  }));
  log::Info("telegram chat linked", {{"user_id", response.user_id()}, {"chat_id", chat_id}});
  return response;
}

absl::StatusOr<internal::v1::UnlinkChatResponse> Payments::UnlinkChat(
    const internal::v1::UnlinkChatRequest& request) {
  if (request.chat_id() == 0) return absl::InvalidArgumentError("chat_id must not be 0");
  internal::v1::UnlinkChatResponse response;
  RETURN_IF_ERROR(pool_.Transact([&](pqxx::work& tx) -> absl::Status {
    pqxx::result removed = tx.exec_prepared(kUnlinkChat, request.chat_id());
    response.set_user_id(removed.empty() ? 0 : removed[0][0].as<int64_t>());
    return absl::OkStatus();
  }));
  if (response.user_id() != 0) {
    log::Info("telegram chat unlinked", {{"user_id", response.user_id()},
                                         {"chat_id", request.chat_id()},
                                         {"reason", request.reason()}});
  }
  return response;
}

absl::StatusOr<v1::ListConcertsResponse> Payments::ListConcerts(
    const v1::ListConcertsRequest& request) {
  ASSIGN_OR_RETURN(int page_size, PageSize(request.page_size()));
  ASSIGN_OR_RETURN(std::optional<int64_t> after,
                   DecodePageToken(kConcertsList, request.page_token(), 1, kMaxId));
  v1::ListConcertsResponse response;
  RETURN_IF_ERROR(pool_.Transact([&](pqxx::work& tx) -> absl::Status {
    response.Clear();
    pqxx::result concerts = tx.exec_prepared(kConcertsPage, after.value_or(0), page_size + 1);
    size_t kept = RowsInPage(concerts, page_size);
    if (kept == 0) return absl::OkStatus();
    std::vector<int64_t> ids;
    std::unordered_map<int64_t, v1::Concert*> by_id;
    for (size_t i = 0; i < kept; ++i) {
      v1::Concert* concert = response.add_concerts();
      concert->set_concert_id(concerts[i][0].as<int64_t>());
      concert->set_title(concerts[i][1].as<std::string>());
      ids.push_back(concert->concert_id());
      by_id[concert->concert_id()] = concert;
    }
    response.set_next_page_token(NextPageToken(concerts, page_size, kConcertsList, 0));
    pqxx::result schedules = tx.exec_prepared(
        kSchedulesOfConcerts, absl::StrCat("{", absl::StrJoin(ids, ","), "}"));
    for (const pqxx::row& row : schedules) {
      v1::Schedule* schedule = by_id.at(row[0].as<int64_t>())->add_schedules();
      schedule->set_schedule_id(row[1].as<int64_t>());
      if (!row[2].is_null()) {
        *schedule->mutable_starts_at() = TimestampFromMicros(row[2].as<int64_t>());
      }
      schedule->set_seat_count(row[3].as<int32_t>());
      schedule->set_free_seat_count(row[4].as<int32_t>());
    }
    return absl::OkStatus();
  }));
  return response;
}

absl::StatusOr<v1::ListSeatsResponse> Payments::ListSeats(const v1::ListSeatsRequest& request) {
  int64_t schedule_id = request.schedule_id();
  if (schedule_id <= 0) return absl::InvalidArgumentError("schedule_id must be positive");
  ASSIGN_OR_RETURN(int page_size, PageSize(request.page_size()));
  std::string list = SeatsList(schedule_id);
  ASSIGN_OR_RETURN(std::optional<int64_t> after,
                   DecodePageToken(list, request.page_token(), kMinSeatNumber, kMaxSeatNumber));
  v1::ListSeatsResponse response;
  RETURN_IF_ERROR(pool_.Transact([&](pqxx::work& tx) -> absl::Status {
    response.Clear();
    if (tx.exec_prepared(kScheduleExists, schedule_id).empty()) {
      return absl::NotFoundError(absl::StrCat("schedule ", schedule_id, " does not exist"));
    }
    pqxx::result rows = tx.exec_prepared(
        kSeatsPage, schedule_id, after.value_or(std::numeric_limits<int64_t>::min()),
        page_size + 1);
    for (size_t i = 0; i < RowsInPage(rows, page_size); ++i) {
      v1::Seat* seat = response.add_seats();
      seat->set_seat_id(rows[i][0].as<int64_t>());
      seat->set_seat_number(rows[i][1].as<int32_t>());
      seat->set_price_won(rows[i][2].as<int64_t>());
      seat->set_availability(SeatAvailabilityFromText(rows[i][3].as<std::string>()));
    }
    response.set_next_page_token(NextPageToken(rows, page_size, list, 1));
    return absl::OkStatus();
  }));
  return response;
}

}  // namespace concert::payment
