#include "common/metrics.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace concert::metrics {
namespace {

using ::testing::HasSubstr;

TEST(MetricsTest, RendersCountersGaugesAndHistogramsWithLabels) {
  Registry r;
  r.GetCounter("requests_total", "Requests", {{"method", "Pay"}, {"code", "OK"}}).Increment(3);
  r.GetCounter("requests_total", "Requests", {{"method", "Pay"}, {"code", "OK"}}).Increment();
  r.GetGauge("pool_in_use", "In use").Set(2);
  Histogram& h = r.GetHistogram("latency_seconds", "Latency", {0.1, 1});
  h.Observe(0.05);
  h.Observe(0.5);
  h.Observe(5);
  std::string text = r.Render();
  EXPECT_THAT(text, HasSubstr("# TYPE requests_total counter\n"));
  // Labels come out in name order, whatever the order they were given in.
  EXPECT_THAT(text, HasSubstr("# HELP requests_total Requests\n"));
  EXPECT_THAT(text, HasSubstr("requests_total{code=\"OK\",method=\"Pay\"} 4\n"));
  EXPECT_THAT(text, HasSubstr("pool_in_use 2\n"));
  EXPECT_THAT(text, HasSubstr("latency_seconds_bucket{le=\"0.1\"} 1\n"));
  EXPECT_THAT(text, HasSubstr("latency_seconds_bucket{le=\"1\"} 2\n"));
  EXPECT_THAT(text, HasSubstr("latency_seconds_bucket{le=\"+Inf\"} 3\n"));
  EXPECT_THAT(text, HasSubstr("latency_seconds_count 3\n"));
  EXPECT_THAT(text, HasSubstr("latency_seconds_sum 5.55\n"));
}

TEST(MetricsTest, CollectCallbacksRefreshGaugesBeforeRendering) {
  Registry r;
  int calls = 0;
  Gauge& g = r.GetGauge("lag_bytes", "Lag");
  r.OnCollect([&] { g.Set(++calls * 10); });
  EXPECT_THAT(r.Render(), HasSubstr("lag_bytes 10\n"));
  EXPECT_THAT(r.Render(), HasSubstr("lag_bytes 20\n"));
}

TEST(MetricsTest, SameNameAndLabelsIsTheSameMetric) {
  Registry r;
  Counter& a = r.GetCounter("events_total", "Events", {{"topic", "t"}});
  Counter& b = r.GetCounter("events_total", "", {{"topic", "t"}});
  EXPECT_EQ(&a, &b);
  EXPECT_NE(&a, &r.GetCounter("events_total", "Events", {{"topic", "u"}}));
}

TEST(MetricsTest, LabelValuesAreEscaped) {
  Registry r;
  r.GetCounter("errors_total", "Errors", {{"reason", "say \"hi\"\n"}}).Increment();
  EXPECT_THAT(r.Render(), HasSubstr("errors_total{reason=\"say \\\"hi\\\"\\n\"} 1\n"));
}

}  // namespace
}  // namespace concert::metrics
