// Test-only helpers shared by payment-server's tests: reading rows.
#ifndef CONCERT_PAYMENT_SERVER_TEST_UTIL_H_
#define CONCERT_PAYMENT_SERVER_TEST_UTIL_H_

#include <memory>
#include <string>

#include <pqxx/pqxx>


namespace concert::payment::testing {

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
