//! `GET /metrics` in Prometheus' text format: the server's own requests and store reads, and
//! the ingester's progress as the counters show it.
//!
//! The ingest figures come from the store's lifetime totals, sampled every few seconds:
//! `tally_ingest_records_total` and `tally_ingest_skipped_total` are counters (use `rate()`),
//! `tally_ingest_records_per_second` is the rate between the last two samples, and
//! `tally_ingest_lag_seconds` is the time since the totals last grew: the age of the newest
//! counted batch while logs keep arriving (it also grows when no logs arrive at all).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::store::IngestTotals;

/// Upper bounds of the latency histogram, in seconds.
const BUCKETS: [f64; 12] = [0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.5];

/// The routes requests are labelled with.
pub const ROUTES: [&str; 7] = ["/v1/quota", "/v1/usage", "/v1/tenants", "/metrics", "/healthz", "/", "other"];

#[derive(Default)]
struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

/// Everything `/metrics` reports.
#[derive(Default)]
pub struct Metrics {
    latency: [Histogram; ROUTES.len()],
    responses: Mutex<BTreeMap<(usize, u16), u64>>,
    pub store_errors: AtomicU64,
    pub cache_hits: AtomicU64,
    pub cache_misses: AtomicU64,
    pub alerts_raised: AtomicU64,
    pub alerts_delivered: AtomicU64,
    pub webhook_failures: AtomicU64,
    ingest: Mutex<IngestSample>,
}

#[derive(Default)]
struct IngestSample {
    totals: Option<IngestTotals>,
    newest_hour: Option<i64>,
    at: Option<Instant>,
    rate: f64,
    /// When the totals were last seen to grow (or first read).
    changed: Option<Instant>,
}

pub fn route_index(path: &str) -> usize {
    ROUTES.iter().position(|r| *r == path).unwrap_or(ROUTES.len() - 1)
}

impl Metrics {
    pub fn observe(&self, route: usize, status: u16, elapsed: Duration) {
        let h = &self.latency[route];
        let secs = elapsed.as_secs_f64();
        for (i, le) in BUCKETS.iter().enumerate() {
            if secs <= *le {
                h.buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        h.count.fetch_add(1, Ordering::Relaxed);
        h.sum_micros.fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
        *self.responses.lock().unwrap_or_else(|e| e.into_inner()).entry((route, status)).or_default() += 1;
    }

    /// Records a sample of the store's totals.
    pub fn sample_ingest(&self, totals: IngestTotals, newest_hour: Option<i64>) {
        let now = Instant::now();
        let mut s = self.ingest.lock().unwrap_or_else(|e| e.into_inner());
        match (s.totals.as_ref().map(|t| t.received), s.at) {
            (Some(prev), Some(at)) => {
                let dt = now.duration_since(at).as_secs_f64().max(1e-3);
                s.rate = totals.received.saturating_sub(prev) as f64 / dt;
                if totals.received != prev {
                    s.changed = Some(now);
                }
            }
            _ => s.changed = Some(now),
        }
        s.totals = Some(totals);
        s.newest_hour = newest_hour;
        s.at = Some(now);
    }

    /// When the store was last read successfully for the ingest sample.
    pub fn last_sample(&self) -> Option<Instant> {
        self.ingest.lock().unwrap_or_else(|e| e.into_inner()).at
    }

    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let w = &mut out;
        help(w, "tally_http_request_duration_seconds", "histogram", "Time to answer a request, by route.");
        for (i, route) in ROUTES.iter().enumerate() {
            let h = &self.latency[i];
            for (b, le) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    w,
                    "tally_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"{le}\"}} {}",
                    h.buckets[b].load(Ordering::Relaxed)
                );
            }
            let count = h.count.load(Ordering::Relaxed);
            let _ = writeln!(w, "tally_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {count}");
            let _ = writeln!(
                w,
                "tally_http_request_duration_seconds_sum{{route=\"{route}\"}} {}",
                h.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
            );
            let _ = writeln!(w, "tally_http_request_duration_seconds_count{{route=\"{route}\"}} {count}");
        }
        help(w, "tally_http_responses_total", "counter", "Responses by route and status code.");
        for ((route, status), n) in self.responses.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let _ = writeln!(w, "tally_http_responses_total{{route=\"{}\",code=\"{status}\"}} {n}", ROUTES[*route]);
        }
        let counters = [
            ("tally_store_errors_total", "Store reads that failed.", &self.store_errors),
            ("tally_cache_hits_total", "Quota and usage answers served from the read cache.", &self.cache_hits),
            ("tally_cache_misses_total", "Quota and usage answers that read the store.", &self.cache_misses),
            ("tally_alerts_raised_total", "Alerts raised (each crossing once).", &self.alerts_raised),
            ("tally_alerts_delivered_total", "Alerts the webhook accepted.", &self.alerts_delivered),
            (
                "tally_alert_webhook_failures_total",
                "Alert deliveries that failed after every attempt.",
                &self.webhook_failures,
            ),
        ];
        for (name, text, v) in counters {
            help(w, name, "counter", text);
            let _ = writeln!(w, "{name} {}", v.load(Ordering::Relaxed));
        }
        let s = self.ingest.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = &s.totals {
            help(w, "tally_ingest_records_total", "counter", "Log records the ingester received, by outcome.");
            let _ = writeln!(w, "tally_ingest_records_total{{outcome=\"received\"}} {}", t.received);
            let _ = writeln!(w, "tally_ingest_records_total{{outcome=\"counted\"}} {}", t.counted);
            let _ = writeln!(w, "tally_ingest_records_total{{outcome=\"duplicate\"}} {}", t.duplicates);
            help(w, "tally_ingest_skipped_total", "counter", "Log records not counted, by reason.");
            for (reason, n) in &t.skipped {
                let _ = writeln!(w, "tally_ingest_skipped_total{{reason=\"{reason}\"}} {n}");
            }
            help(
                w,
                "tally_ingest_records_per_second",
                "gauge",
                "Records received per second between the last two samples.",
            );
            let _ = writeln!(w, "tally_ingest_records_per_second {:.3}", s.rate);
        }
        if let Some(changed) = s.changed {
            help(w, "tally_ingest_lag_seconds", "gauge", "Seconds since the counters last grew.");
            let _ = writeln!(w, "tally_ingest_lag_seconds {:.3}", changed.elapsed().as_secs_f64());
        }
        if let Some(h) = s.newest_hour {
            help(
                w,
                "tally_ingest_newest_hour_timestamp_seconds",
                "gauge",
                "Start of the newest UTC hour with counted usage.",
            );
            let _ = writeln!(w, "tally_ingest_newest_hour_timestamp_seconds {h}");
        }
        out
    }
}

fn help(w: &mut String, name: &str, kind: &str, text: &str) {
    let _ = writeln!(w, "# HELP {name} {text}\n# TYPE {name} {kind}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_lands_in_cumulative_buckets_and_ingest_rate_is_a_difference() {
        let m = Metrics::default();
        m.observe(route_index("/v1/quota"), 200, Duration::from_micros(300));
        m.observe(route_index("/v1/quota"), 200, Duration::from_millis(3));
        m.observe(route_index("/nope"), 404, Duration::from_micros(50));
        let text = m.render();
        assert!(
            text.contains("tally_http_request_duration_seconds_bucket{route=\"/v1/quota\",le=\"0.0005\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("tally_http_request_duration_seconds_bucket{route=\"/v1/quota\",le=\"0.005\"} 2\n"));
        assert!(text.contains("tally_http_responses_total{route=\"other\",code=\"404\"} 1\n"));
        assert!(!text.contains("tally_ingest_records_total"), "no sample yet, no ingest figures");
        let mut t = IngestTotals { received: 100, counted: 90, duplicates: 4, ..Default::default() };
        t.skipped.insert("malformed_json".into(), 6);
        m.sample_ingest(t.clone(), Some(3600));
        t.received = 300;
        m.sample_ingest(t, Some(7200));
        let text = m.render();
        assert!(text.contains("tally_ingest_records_total{outcome=\"received\"} 300\n"));
        assert!(text.contains("tally_ingest_skipped_total{reason=\"malformed_json\"} 6\n"));
        assert!(text.contains("tally_ingest_newest_hour_timestamp_seconds 7200\n"));
        let rate: f64 =
            text.lines().find_map(|l| l.strip_prefix("tally_ingest_records_per_second ")).unwrap().parse().unwrap();
        assert!(rate > 200.0, "200 records between two samples taken almost at once: {rate}");
    }
}
