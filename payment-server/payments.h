// The domain of payment-server: finding what to buy, holding seats and paying for them, over a
// PgPool. PayConcert debits the caller, marks the reservation PAID, inserts the payment and its
// PaymentCompleted outbox event in ONE transaction, so the event exists if and only if the
// payment committed. The list calls page by key (common/paging.h).
//
//   PgPool pool({.url = url, .size = 8, .prepare = &Payments::Prepare});
//   Payments payments(pool, {.reservation_hold = absl::Minutes(5)});
//   absl::StatusOr<v1::Reservation> r = payments.ReserveSeat(user_id, seat_id);
//   absl::StatusOr<v1::Payment> p = payments.PayConcert(user_id, r->reservation_id(), "");
//
// Errors are absl::Status with the codes of the API (see concert/v1/payment.proto); every
// error leaves the database as it was. Thread-safe: every call blocks on the database, so call
// it from threads that may block (the gRPC synchronous API's, AdmissionQueue's workers), never
// from a callback reactor.
#ifndef CONCERT_PAYMENT_SERVER_PAYMENTS_H_
#define CONCERT_PAYMENT_SERVER_PAYMENTS_H_

#include <cstdint>
#include <functional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "common/postgres.h"
#include "concert/internal/v1/telegram_link.pb.h"
#include "concert/v1/account.pb.h"
#include "concert/v1/concert.pb.h"
#include "concert/v1/payment.pb.h"
#include "concert/v1/reservation.pb.h"

namespace concert::payment {

struct PaymentsOptions {
  // How long ReserveSeat holds a seat before PayConcert refuses it (RESERVATION_HOLD).
  absl::Duration reservation_hold = absl::Minutes(5);
  // Test seam, never set in production: runs inside PayConcert's transaction after the payment
  // and its outbox row were inserted, just before commit (PayConcert then opens a transaction
  // block around its one statement). An error aborts the transaction and is returned to the
  // caller, which is how tests prove that a failure there leaves nothing.
  std::function<absl::Status(int64_t payment_id)> before_commit_for_test;
  // The bot's username for LinkTelegram's deep links (TELEGRAM_BOT_USERNAME); empty: no bot,
  // LinkTelegram is FAILED_PRECONDITION.
  std::string telegram_bot_username;
  // How long a LinkTelegram code stays valid (TELEGRAM_LINK_TTL).
  absl::Duration telegram_link_ttl = absl::Minutes(15);
};

class Payments {
 public:
  Payments(PgPool& pool, PaymentsOptions options);

  // Prepares this class's statements on a new pool connection (PgPool::Options::prepare).
  static void Prepare(pqxx::connection& conn);

  // Holds `seat_id` for `user_id` for reservation_hold. An expired hold on the seat is marked
  // EXPIRED and no longer blocks it. INVALID_ARGUMENT (id not positive), NOT_FOUND (seat or
  // user), ALREADY_EXISTS (held or sold).
  absl::StatusOr<v1::Reservation> ReserveSeat(int64_t user_id, int64_t seat_id);

  // See concert.v1.PaymentService.PayConcert. `traceparent` ("" when the caller sent none) is
  // stored in the outbox row's headers so the trace continues through Kafka.
  absl::StatusOr<v1::Payment> PayConcert(int64_t user_id, int64_t reservation_id,
                                         absl::string_view traceparent);

  // One of the caller's payments; NOT_FOUND for another user's payment (its existence is not
  // revealed).
  absl::StatusOr<v1::Payment> GetPayment(int64_t user_id, int64_t payment_id);

  // See concert.v1.PaymentService.ListPayments: `user_id`'s payments only, newest first.
  absl::StatusOr<v1::ListPaymentsResponse> ListPayments(int64_t user_id,
                                                        const v1::ListPaymentsRequest& request);

  // See concert.v1.AccountService.GetAccount. NOT_FOUND when the user does not exist.
  absl::StatusOr<v1::Account> GetAccount(int64_t user_id);

  // See concert.v1.AccountService.LinkTelegram: a new random code for `user_id`, stored as
  // its hash, in a t.me deep link.
  absl::StatusOr<v1::TelegramLink> LinkTelegram(int64_t user_id);
  // See concert.v1.AccountService.UnlinkTelegram.
  absl::StatusOr<v1::UnlinkTelegramResponse> UnlinkTelegram(int64_t user_id);
  // See concert.internal.v1.TelegramLinkService.
  absl::StatusOr<internal::v1::ConfirmLinkResponse> ConfirmLink(
      const internal::v1::ConfirmLinkRequest& request);
  absl::StatusOr<internal::v1::UnlinkChatResponse> UnlinkChat(
      const internal::v1::UnlinkChatRequest& request);

  // See concert.v1.ConcertService.ListConcerts (any caller sees every concert).
  absl::StatusOr<v1::ListConcertsResponse> ListConcerts(const v1::ListConcertsRequest& request);

  // See concert.v1.ConcertService.ListSeats. Availability is as of the call: FREE means
  // ReserveSeat would hold the seat now (an expired hold counts as FREE).
  absl::StatusOr<v1::ListSeatsResponse> ListSeats(const v1::ListSeatsRequest& request);

  PgPool& pool() { return pool_; }

 private:
  PgPool& pool_;
  PaymentsOptions options_;
};

}  // namespace concert::payment

#endif  // CONCERT_PAYMENT_SERVER_PAYMENTS_H_
