//! Counters and gauges, rendered in the Prometheus text format on the admin address.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

macro_rules! metrics {
    ($( $field:ident : $kind:ident = $name:literal, $help:literal; )*) => {
        /// Every metric smtpgate exports.
        #[derive(Default)]
        pub struct Metrics { $( pub $field: $kind, )* }

        impl Metrics {
            /// The Prometheus text exposition of all metrics.
            pub fn render(&self) -> String {
                let mut out = String::with_capacity(2048);
                $( let _ = writeln!(out, "# HELP {} {}\n# TYPE {} {}\n{} {}", $name, $help, $name,
                    <$kind>::TYPE, $name, self.$field.get()); )*
                out
            }
        }
    };
}

metrics! {
    connections: Counter = "smtpgate_connections_total", "SMTP connections accepted";
    connections_refused: Counter = "smtpgate_connections_refused_total", "SMTP connections refused by a connection limit";
    sessions_active: Gauge = "smtpgate_sessions_active", "SMTP sessions in progress";
    received: Counter = "smtpgate_messages_received_total", "messages accepted and spooled";
    rejected: Counter = "smtpgate_messages_rejected_total", "transactions refused at or after DATA";
    delivered: Counter = "smtpgate_messages_delivered_total", "deliveries that reached at least one recipient";
    recipients_delivered: Counter = "smtpgate_recipients_delivered_total", "recipients delivered";
    deferred: Counter = "smtpgate_messages_deferred_total", "delivery attempts deferred for retry";
    bounced: Counter = "smtpgate_messages_bounced_total", "recipients failed permanently";
    dsn_sent: Counter = "smtpgate_dsn_generated_total", "delivery status notifications generated";
    queue_depth: Gauge = "smtpgate_queue_depth", "messages in the queue";
    queue_held: Gauge = "smtpgate_queue_held", "messages in the queue an operator held";
    suspensions_active: Gauge = "smtpgate_suspensions_active", "delivery suspensions in force (domain, pool, route or stream)";
    auth_failures: Counter = "smtpgate_auth_failures_total", "failed AUTH attempts";
    filter_rejected: Counter = "smtpgate_filter_rejected_total", "messages refused by a filter";
    quarantined: Counter = "smtpgate_quarantined_total", "messages put in the quarantine";
    filter_discarded: Counter = "smtpgate_filter_discarded_total", "messages dropped by a filter";
    scan_held: Counter = "smtpgate_scan_held_total", "after-queue scans that could not run because their filter is no longer configured (the message waits; never delivered unscanned)";
    delivery_held: Counter = "smtpgate_delivery_held_total", "delivery attempts that could not start because the message's pool or stream is no longer configured (the message waits; never sent another way)";
    filter_unchecked: Counter = "smtpgate_filter_unchecked_total", "messages a filter let pass without checking them (size limit, or failed with on_error = accept)";
    proxied: Counter = "smtpgate_messages_proxied_total", "messages a proxy listener's upstream accepted";
    proxy_refused: Counter = "smtpgate_messages_proxy_refused_total", "messages a proxy listener's upstream refused at end of data";
    events_dropped: Counter = "smtpgate_events_dropped_total", "events not recorded because the event writer was behind (its queue was full)";
    spool_damaged: Counter = "smtpgate_spool_damaged_total", "spool segments whose damaged rest recovery set aside under damaged/ (never replayed)";
}

#[derive(Default)]
pub struct Counter(AtomicU64);

impl Counter {
    const TYPE: &str = "counter";
    pub fn inc(&self) {
        self.0.fetch_add(1, Relaxed);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

#[derive(Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    const TYPE: &str = "gauge";
    pub fn inc(&self) {
        self.0.fetch_add(1, Relaxed);
    }
    pub fn dec(&self) {
        self.0.fetch_sub(1, Relaxed);
    }
    pub fn add(&self, n: i64) {
        self.0.fetch_add(n, Relaxed);
    }
    pub fn sub(&self, n: i64) {
        self.0.fetch_sub(n, Relaxed);
    }
    pub fn set(&self, n: i64) {
        self.0.store(n, Relaxed);
    }
    pub fn get(&self) -> i64 {
        self.0.load(Relaxed)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn renders_prometheus_text() {
        let m = super::Metrics::default();
        m.received.add(3);
        m.queue_depth.inc();
        let text = m.render();
        assert!(text.contains("# TYPE smtpgate_messages_received_total counter\nsmtpgate_messages_received_total 3\n"));
        assert!(text.contains("smtpgate_queue_depth 1\n"));
    }
}
