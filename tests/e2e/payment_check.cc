#include "tests/e2e/payment_check.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <iostream>
#include <set>
#include <sstream>

#include <gtest/gtest.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"

namespace concert::e2e {

int64_t EnvInt(const char* name, int64_t fallback) {
  const char* value = std::getenv(name);
  int64_t parsed;
  if (value == nullptr || !absl::SimpleAtoi(value, &parsed)) return fallback;
  return parsed;
}

SystemOptions PayingSystemOptions(const std::string& database_url,
                                  const std::string& kafka_bootstrap) {
  SystemOptions options;
  options.database_url = database_url;
  options.kafka_bootstrap = kafka_bootstrap;
  options.notifiers = 2;
  options.users = 30;
  options.link_chats = true;
  return options;
}

void LogLine(const std::string& tag, const std::string& line) {
  std::cout << absl::FormatTime("%H:%M:%S", absl::Now(), absl::LocalTimeZone()) << " [" << tag
            << "] " << line << std::endl;
}

namespace {
void Log(const std::string& line) { LogLine("check", line); }
}  // namespace

PaymentLoad::PaymentLoad(System& system, int clients) {
  for (int c = 0; c < clients; ++c) {
    threads_.emplace_back([this, &system, c, clients] {
      PaymentClient client(system.payment_address(), absl::Seconds(5), absl::Seconds(20));
      const std::vector<User>& users = system.seeded().users;
      for (int i = 0; !stop_.load(); ++i) {
        int64_t seat = system.NextSeat();
        if (seat == 0) break;
        const User& user = users[(c + i * clients) % users.size()];
        PayOutcome outcome = client.ReserveAndPay(user, seat);
        {
          std::lock_guard lock(mu_);
          outcomes_.push_back(outcome);
        }
        absl::SleepFor(absl::Milliseconds(
            outcome.kind == PayOutcome::Kind::kNoReservation ? 500 : 300));
      }
    });
  }
}

PaymentLoad::~PaymentLoad() { Stop(); }

void PaymentLoad::Stop() {
  stop_ = true;
  for (std::thread& t : threads_) {
    if (t.joinable()) t.join();
  }
}

std::vector<PayOutcome> PaymentLoad::Outcomes() const {
  std::lock_guard lock(mu_);
  return outcomes_;
}

PromiseCheck CheckPromise(System& system, const std::string& url,
                          const std::vector<PayOutcome>& outcomes, absl::Duration drain_timeout) {
  PromiseCheck r;
  // --- drain: every committed payment has a message or is parked (FAILED or UNCERTAIN),
  // nothing is PENDING and no delivery is in flight.
  absl::Time drain_start = absl::Now();
  r.drained = testing::WaitUntil(
      [&] {
        try {
          std::map<int64_t, int> messages = system.MessagesByReservation();
          std::set<std::string> parked;
          for (const auto& row :
               QueryRows(url, "SELECT event_id FROM retry.failed_messages "
                              "WHERE status IN ('FAILED', 'UNCERTAIN')")) {
            parked.insert(row[0]);
          }
          int missing = 0;
          for (const auto& row :
               QueryRows(url, "SELECT reservation_id, event_id::text FROM payment.payments")) {
            if (messages[std::stoll(row[0])] == 0 && parked.count(row[1]) == 0) ++missing;
          }
          int64_t pending = QueryInt(
              url, "SELECT count(*) FROM retry.failed_messages WHERE status = 'PENDING'");
          int64_t in_flight = QueryInt(
              url, "SELECT count(*) FROM notification.deliveries WHERE state = 'SENDING'");
          r.drain_state = absl::StrCat("missing ", missing, ", pending ", pending,
                                       ", in flight ", in_flight);
          return missing == 0 && pending == 0 && in_flight == 0;
        } catch (const std::exception& e) {
          r.drain_state = e.what();
          return false;
        }
      },
      drain_timeout, absl::Seconds(1));
  r.drain_time = absl::Now() - drain_start;
  Log(absl::StrCat(r.drained ? "drained" : "NOT drained", " after ",
                   absl::ToInt64Seconds(r.drain_time), " s: ", r.drain_state));
  absl::SleepFor(absl::Seconds(3));  // a late duplicate would show up now

  // --- check
  struct Committed {
    int64_t payment_id;
    std::string event_id;
  };
  std::map<int64_t, Committed> committed;  // reservation id ->
  for (const auto& row :
       QueryRows(url, "SELECT reservation_id, id, event_id::text FROM payment.payments")) {
    committed[std::stoll(row[0])] = {std::stoll(row[1]), row[2]};
  }
  // When each delivery was confirmed: no message may reach Telegram after that.
  std::map<std::string, absl::Time> sent_at;
  for (const auto& row : QueryRows(url, "SELECT event_id::text, extract(epoch FROM sent_at) "
                                        "FROM notification.deliveries WHERE state = 'SENT'")) {
    sent_at[row[0]] = absl::FromUnixMicros(std::llround(std::stod(row[1]) * 1e6));
  }
  std::set<std::string> uncertain_events;
  for (const auto& row :
       QueryRows(url, "SELECT event_id::text FROM notification.deliveries WHERE uncertain")) {
    uncertain_events.insert(row[0]);
  }
  struct Parked {
    std::string error_class, error_message, status;
  };
  std::map<std::string, Parked> failed_rows;
  for (const auto& row :
       QueryRows(url, "SELECT event_id, error_class, error_message, status "
                      "FROM retry.failed_messages WHERE status IN ('FAILED', 'UNCERTAIN')")) {
    failed_rows[row[0]] = {row[1], row[2], row[3]};
  }
  r.pending_left =
      QueryInt(url, "SELECT count(*) FROM retry.failed_messages WHERE status = 'PENDING'");
  r.negative_balances = QueryInt(url, "SELECT count(*) FROM payment.users WHERE balance_won < 0");
  // Money is conserved: each user's balance is the seed minus what they paid.
  const SystemOptions& options = system.options();
  r.balance_mismatches = QueryInt(
      url,
      absl::StrCat("SELECT count(*) FROM payment.users u WHERE u.balance_won + "
                   "COALESCE((SELECT sum(amount_won) FROM payment.payments p "
                   "WHERE p.user_id = u.id), 0) <> CASE WHEN u.name = 'poorfan' THEN ",
                   options.seat_price_won * options.poor_user_payments, " ELSE ",
                   options.balance_won, " END"));

  r.tried = static_cast<int>(outcomes.size());
  for (const PayOutcome& o : outcomes) {
    if (o.pay_calls > 1) ++r.retried_pays;
    switch (o.kind) {
      case PayOutcome::Kind::kAcked: {
        ++r.acked;
        auto it = committed.find(o.reservation_id);
        if (it == committed.end()) {
          ++r.acked_not_committed;
          Log(absl::StrCat("ACKED BUT NOT COMMITTED: reservation ", o.reservation_id));
        } else if (it->second.payment_id != o.payment_id) {
          ++r.acked_wrong_payment;
          Log(absl::StrCat("ACKED PAYMENT ID DIFFERS: reservation ", o.reservation_id));
        }
        break;
      }
      case PayOutcome::Kind::kRejected:
        ++r.rejected;
        if (committed.count(o.reservation_id) > 0) {
          ++r.rejected_committed;
          Log(absl::StrCat("REJECTED BUT COMMITTED: reservation ", o.reservation_id, ": ",
                           o.message));
        }
        break;
      case PayOutcome::Kind::kUnknown: ++r.unknown; break;
      case PayOutcome::Kind::kNoReservation: ++r.no_reservation; break;
    }
  }

  std::map<int64_t, std::vector<absl::Time>> accepted_at;
  for (const testing::TelegramMessage& m : system.telegram().messages()) {
    accepted_at[ReservationIn(m.text)].push_back(m.accepted_at);
  }
  std::map<int64_t, int> messages = system.MessagesByReservation();
  for (const auto& [reservation, n] : messages) r.messages += n;
  r.committed = static_cast<int>(committed.size());
  r.uncertain = static_cast<int>(uncertain_events.size());
  r.telegram_faulted = system.telegram().faulted();
  for (const auto& [reservation, payment] : committed) {
    int n = messages.count(reservation) > 0 ? messages[reservation] : 0;
    bool uncertain = uncertain_events.count(payment.event_id) > 0;
    auto parked = failed_rows.find(payment.event_id);
    if (n == 0) {
      if (parked != failed_rows.end()) {
        ++r.failed_parked;
        // Explained only by a Telegram failure we injected.
        bool explained = r.telegram_faulted > 0 && parked->second.error_class == "telegram_5xx";
        if (!explained) ++r.failed_unexplained;
        Log(absl::StrCat(parked->second.status, " (parked): reservation ", reservation, " ",
                         parked->second.error_class, ": ", parked->second.error_message,
                         explained ? "" : "  <-- NOT explained by an injected fault"));
      } else {
        ++r.lost;
        Log(absl::StrCat("LOST: reservation ", reservation, " event ", payment.event_id));
      }
    } else if (parked != failed_rows.end() && parked->second.status == "FAILED") {
      // FAILED must mean "not delivered": a copy that may have arrived parks as UNCERTAIN.
      ++r.failed_but_delivered;
      Log(absl::StrCat("FAILED BUT DELIVERED: reservation ", reservation, " event ",
                       payment.event_id));
    }
    // A lone message is the delivery SENT confirms. Postgres's clock (sent_at) and the fake's
    // (absl::Now(), interpolated between readings of the system clock) differ by up to about a
    // millisecond; a copy sent in a race comes a whole request later.
    constexpr absl::Duration kClockSkew = absl::Milliseconds(5);
    if (auto confirmed = sent_at.find(payment.event_id); n > 1 && confirmed != sent_at.end()) {
      for (absl::Time t : accepted_at[reservation]) {
        if (t <= confirmed->second + kClockSkew) continue;
        ++r.copies_after_sent;
        Log(absl::StrCat("COPY AFTER CONFIRMED DELIVERY: reservation ", reservation, " event ",
                         payment.event_id, ", ",
                         absl::ToInt64Milliseconds(t - confirmed->second), " ms after SENT"));
      }
    }
    if (n > 1) {
      if (uncertain) {
        r.uncertain_extra += n - 1;
      } else {
        r.duplicates += n - 1;
        Log(absl::StrCat("DUPLICATE: reservation ", reservation, " x", n, " event ",
                         payment.event_id));
      }
    }
  }
  for (const auto& [reservation, n] : messages) {
    if (committed.count(reservation) == 0) {
      r.phantom += n;
      Log(absl::StrCat("MESSAGE WITHOUT A COMMITTED PAYMENT: reservation ", reservation));
    }
  }
  for (const auto& [event_id, parked] : failed_rows) {
    bool of_a_payment = false;
    for (const auto& [reservation, payment] : committed) {
      if (payment.event_id == event_id) of_a_payment = true;
    }
    if (!of_a_payment) {
      ++r.failed_unexplained;
      Log(absl::StrCat("FAILED row of no payment: ", event_id, " ", parked.error_class));
    }
  }
  for (const std::string& event : uncertain_events) {
    int n = 0;
    for (const auto& [reservation, payment] : committed) {
      if (payment.event_id == event) n = messages[reservation];
    }
    Log(absl::StrCat("uncertain delivery: event ", event, ", messages ", n));
  }
  return r;
}

std::string PromiseCheck::Summary() const {
  std::ostringstream out;
  out << "drained:                       " << (drained ? "yes" : "NO") << " in "
      << absl::ToInt64Seconds(drain_time) << " s\n"
      << "payments tried (seats):        " << tried << "\n"
      << "  acked by the server:         " << acked << "\n"
      << "  refused (balance etc.):      " << rejected << "\n"
      << "  unknown to the client:       " << unknown << "\n"
      << "  no reservation (reserve err):" << no_reservation << "\n"
      << "  PayConcert repeated by client: " << retried_pays << "\n"
      << "payments committed:            " << committed << "\n"
      << "acked but not committed:       " << acked_not_committed << "\n"
      << "refused but committed:         " << rejected_committed << "\n"
      << "telegram requests faulted:     " << telegram_faulted << "\n"
      << "messages at fake Telegram:     " << messages << "\n"
      << "lost:                          " << lost << "\n"
      << "duplicates:                    " << duplicates << "\n"
      << "uncertain (counted):           " << uncertain << " deliveries, extra messages "
      << uncertain_extra << "\n"
      << "copies after confirmed SENT:   " << copies_after_sent << "\n"
      << "messages for no payment:       " << phantom << "\n"
      << "parked, not delivered:         " << failed_parked << " of payments, "
      << failed_unexplained << " not explained\n"
      << "parked FAILED but delivered:   " << failed_but_delivered << "\n"
      << "PENDING left:                  " << pending_left << "\n"
      << "negative balances:             " << negative_balances << ", balance mismatches "
      << balance_mismatches << "\n";
  return out.str();
}

void PromiseCheck::ExpectKept() const {
  EXPECT_TRUE(drained) << drain_state;
  EXPECT_EQ(acked_not_committed, 0);
  EXPECT_EQ(acked_wrong_payment, 0);
  EXPECT_EQ(rejected_committed, 0);
  EXPECT_EQ(lost, 0);
  EXPECT_EQ(failed_but_delivered, 0);
  EXPECT_EQ(duplicates, 0);
  EXPECT_EQ(copies_after_sent, 0);
  EXPECT_EQ(phantom, 0);
  EXPECT_EQ(pending_left, 0);
  EXPECT_EQ(failed_unexplained, 0);
  EXPECT_EQ(negative_balances, 0);
  EXPECT_EQ(balance_mismatches, 0);
  EXPECT_GT(acked, 0);
}

namespace {

// The longest gap between consecutive `times` (sorted) that overlaps [start, end]; a gap
// still open at `until` counts up to there.
absl::Duration LongestGap(const std::vector<absl::Time>& times, absl::Time start, absl::Time end,
                          absl::Time until) {
  absl::Duration longest = absl::ZeroDuration();
  absl::Time previous = absl::InfinitePast();
  for (absl::Time t : times) {
    if (previous != absl::InfinitePast() && t > start && previous < end) {
      longest = std::max(longest, t - previous);
    }
    previous = t;
    if (previous > end) break;
  }
  if (previous != absl::InfinitePast() && previous < end) {
    longest = std::max(longest, until - previous);
  }
  return longest;
}

}  // namespace

std::vector<Stall> MeasureStalls(const std::vector<FaultSpan>& faults,
                                 const std::vector<PayOutcome>& outcomes, System& system,
                                 absl::Time until, const std::vector<absl::Time>* reference) {
  std::vector<absl::Time> acked, delivered;
  for (const PayOutcome& o : outcomes) {
    if (o.kind == PayOutcome::Kind::kAcked) acked.push_back(o.finished);
  }
  for (const testing::TelegramMessage& m : system.telegram().messages()) {
    delivered.push_back(m.accepted_at);
  }
  std::sort(acked.begin(), acked.end());
  std::sort(delivered.begin(), delivered.end());
  std::vector<absl::Time> read;
  if (reference != nullptr) read = *reference;
  std::sort(read.begin(), read.end());
  std::vector<Stall> stalls;
  for (const FaultSpan& f : faults) {
    Stall stall{LongestGap(acked, f.start, f.end, until),
                LongestGap(delivered, f.start, f.end, until)};
    if (reference != nullptr) stall.reference = LongestGap(read, f.start, f.end, until);
    stalls.push_back(stall);
  }
  return stalls;
}

std::string StallReport(const std::vector<FaultSpan>& faults, const std::vector<Stall>& stalls,
                        absl::Time origin) {
  auto seconds = [](absl::Duration d) { return absl::StrFormat("%.1f s", absl::ToDoubleSeconds(d)); };
  bool with_reference = !stalls.empty() && stalls[0].reference.has_value();
  // " / <reference>" when there is one.
  auto reference = [&](const Stall& s) {
    return with_reference ? absl::StrFormat(" / %8s", seconds(*s.reference)) : std::string();
  };
  std::string columns =
      with_reference ? "payments / notifications / Kafka's Java consumer" : "payments / notifications";
  std::string out = absl::StrCat("stalls per fault (", columns, "):\n");
  std::map<std::string, Stall> longest;
  for (size_t i = 0; i < faults.size(); ++i) {
    absl::StrAppend(&out, absl::StrFormat("  +%4ds %-36s %8s / %8s%s\n",
                                          absl::ToInt64Seconds(faults[i].start - origin),
                                          faults[i].kind, seconds(stalls[i].payments),
                                          seconds(stalls[i].notifications), reference(stalls[i])));
    Stall& l = longest[faults[i].kind];
    l.payments = std::max(l.payments, stalls[i].payments);
    l.notifications = std::max(l.notifications, stalls[i].notifications);
    if (with_reference) {
      l.reference = std::max(l.reference.value_or(absl::ZeroDuration()), *stalls[i].reference);
    }
  }
  absl::StrAppend(&out, "longest stall per kind (", columns, "):\n");
  for (const auto& [kind, l] : longest) {
    absl::StrAppend(&out, absl::StrFormat("  %-43s %8s / %8s%s\n", kind, seconds(l.payments),
                                          seconds(l.notifications), reference(l)));
  }
  return out;
}

}  // namespace concert::e2e
