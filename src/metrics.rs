//! What the server counts, in AnyCable's metric names (prefix `anycable_go_`, so
//! dashboards made for AnyCable work), rendered in Prometheus' text format by the
//! `prometheus` crate. Counters are process-wide (one server per process); gauges are
//! read when the metrics are rendered. Our own additions are prefixed `anycable_rs_`.

use std::sync::LazyLock;

use prometheus::core::Collector;
pub use prometheus::proto::MetricFamily;
use prometheus::{Encoder, IntCounter, IntGauge, TextEncoder};

pub struct Counters {
    /// Frames from clients decoded into commands.
    pub client_msg: IntCounter,
    /// Frames that could not be decoded, or were refused (too big, unknown command).
    pub failed_client_msg: IntCounter,
    /// Broadcasts delivered to this process's clients (remote disconnects included).
    pub broadcast_msg: IntCounter,
    /// Broadcasts the app handed in (Ruby calls, `POST /_broadcast`).
    pub publications: IntCounter,
    /// Remote disconnect commands applied.
    pub remote_commands: IntCounter,
    pub disconnected_slow_clients: IntCounter,
    /// Connections the app's `connect` rejected.
    pub failed_auths: IntCounter,
    pub data_sent: IntCounter,
    pub data_rcvd: IntCounter,
    /// Upgrades refused because `ANYCABLE_MAX_CONN` connections were open.
    pub refused_conn: IntCounter,
    /// Connections told `server_restart` for being older than `ANYCABLE_MAX_CONN_AGE`.
    pub expired_conn: IntCounter,
    /// Sessions restored from the session cache (no `connect` run).
    pub restored_sessions: IntCounter,
    /// Server-Sent Events clients streaming now (`/events`); counted in clients too.
    pub sse_clients: IntGauge,
    /// Long-polling sessions now (`/lp`); counted in clients too.
    pub poll_clients: IntGauge,
    /// Long-polling requests for a session that is gone (expired, closed, or in
    /// another process): told `session_expired`.
    pub poll_stale_requests: IntCounter,
    /// Durable Streams reads (`/ds`, GET and HEAD).
    pub ds_requests: IntCounter,
    /// Durable Streams long-polls that waited for a message.
    pub ds_poll_requests: IntCounter,
    /// Durable Streams SSE reads.
    pub ds_sse_requests: IntCounter,
    /// Durable Streams long-polls waiting now; counted in clients too.
    pub ds_poll_clients: IntGauge,
    /// Durable Streams SSE reads streaming now; counted in clients too.
    pub ds_sse_clients: IntGauge,
}

fn counter(name: &str, help: &str) -> IntCounter {
    IntCounter::new(name, help).expect("valid metric name")
}

pub static COUNTERS: LazyLock<Counters> = LazyLock::new(|| Counters {
    client_msg: counter(
        "anycable_go_client_msg_total",
        "The total number of received messages from clients",
    ),
    failed_client_msg: counter(
        "anycable_go_failed_client_msg_total",
        "The total number of unrecognized messages received from clients",
    ),
    broadcast_msg: counter(
        "anycable_go_broadcast_msg_total",
        "The total number of messages received through PubSub (for broadcast)",
    ),
    publications: counter(
        "anycable_go_publications_total",
        "The total number of broadcast messages received from the application",
    ),
    remote_commands: counter(
        "anycable_go_remote_commands_total",
        "The total number of remote commands received through PubSub",
    ),
    disconnected_slow_clients: counter(
        "anycable_go_disconnected_slow_clients_total",
        "The total number of slow clients disconnected",
    ),
    failed_auths: counter(
        "anycable_go_failed_auths_total",
        "The total number of failed authentication attempts",
    ),
    data_sent: counter(
        "anycable_go_data_sent_total",
        "The total amount of bytes sent to clients",
    ),
    data_rcvd: counter(
        "anycable_go_data_rcvd_total",
        "The total amount of bytes received from clients",
    ),
    refused_conn: counter(
        "anycable_rs_refused_conn_total",
        "Upgrades refused (503) because ANYCABLE_MAX_CONN connections were open",
    ),
    expired_conn: counter(
        "anycable_rs_expired_conn_total",
        "Connections told server_restart for being older than ANYCABLE_MAX_CONN_AGE",
    ),
    restored_sessions: counter(
        "anycable_rs_restored_sessions_total",
        "Sessions restored by sid within ANYCABLE_SESSIONS_TTL, without the app's connect",
    ),
    sse_clients: IntGauge::new(
        "anycable_go_sse_clients_num",
        "The number of active SSE clients",
    )
    .expect("valid metric name"),
    poll_clients: IntGauge::new(
        "anycable_go_longpoll_clients_num",
        "The number of active long polling clients",
    )
    .expect("valid metric name"),
    poll_stale_requests: counter(
        "anycable_go_longpoll_stale_requests_total",
        "The total number of long polling requests for sessions that are gone",
    ),
    ds_requests: counter(
        "anycable_go_ds_requests_total",
        "The total number of Durable Streams read requests",
    ),
    ds_poll_requests: counter(
        "anycable_go_ds_poll_requests_total",
        "The total number of Durable Streams long-poll requests",
    ),
    ds_sse_requests: counter(
        "anycable_go_ds_sse_requests_total",
        "The total number of Durable Streams SSE requests",
    ),
    ds_poll_clients: IntGauge::new(
        "anycable_go_ds_poll_clients_num",
        "The number of active Durable Streams long-poll clients",
    )
    .expect("valid metric name"),
    ds_sse_clients: IntGauge::new(
        "anycable_go_ds_sse_clients_num",
        "The number of active Durable Streams SSE clients",
    )
    .expect("valid metric name"),
});

/// Gauges read at render time.
#[derive(Debug, Clone, Copy, Default)]
pub struct Snapshot {
    pub clients: i64,
    pub clients_uniq: i64,
    pub streams: i64,
}

/// More metric families to render (the Ruby side's), gathered at render time.
pub type MetricsSource = std::sync::Arc<dyn Fn() -> Vec<MetricFamily> + Send + Sync>;

/// Renders every metric: the counters, the snapshot's gauges, and `extra` families
/// (the Ruby side's), each sample labelled with `tags`.
pub fn render(snapshot: Snapshot, tags: &[(String, String)], extra: Vec<MetricFamily>) -> String {
    let gauge = |name: &str, help: &str, value: i64| {
        let g = IntGauge::new(name, help).expect("valid metric name");
        g.set(value);
        g.collect()
    };
    let c = &*COUNTERS;
    let mut families: Vec<MetricFamily> = [
        &c.client_msg,
        &c.failed_client_msg,
        &c.broadcast_msg,
        &c.publications,
        &c.remote_commands,
        &c.disconnected_slow_clients,
        &c.failed_auths,
        &c.data_sent,
        &c.data_rcvd,
        &c.refused_conn,
        &c.expired_conn,
        &c.restored_sessions,
        &c.poll_stale_requests,
        &c.ds_requests,
        &c.ds_poll_requests,
        &c.ds_sse_requests,
    ]
    .iter()
    .flat_map(|counter| counter.collect())
    .collect();
    families.extend(c.sse_clients.collect());
    families.extend(c.poll_clients.collect());
    families.extend(c.ds_poll_clients.collect());
    families.extend(c.ds_sse_clients.collect());
    families.extend(gauge(
        "anycable_go_clients_num",
        "The number of active clients",
        snapshot.clients,
    ));
    families.extend(gauge(
        "anycable_go_clients_uniq_num",
        "The number of unique clients (with respect to connection identifiers)",
        snapshot.clients_uniq,
    ));
    families.extend(gauge(
        "anycable_go_broadcast_streams_num",
        "The number of active broadcasting streams",
        snapshot.streams,
    ));
    families.extend(extra);
    families.sort_by(|a, b| a.name().cmp(b.name()));
    // Tags go on every sample, labels sorted by name (stable output).
    for family in &mut families {
        for metric in family.mut_metric() {
            let mut pairs = metric.take_label();
            for (k, v) in tags {
                let mut pair = prometheus::proto::LabelPair::default();
                pair.set_name(k.clone());
                pair.set_value(v.clone());
                pairs.push(pair);
            }
            pairs.sort_by(|a, b| a.name().cmp(b.name()));
            metric.set_label(pairs);
        }
    }
    // A labelled family nobody has used yet has no samples; the encoder refuses those.
    families.retain(|f| !f.get_metric().is_empty());
    let mut out = Vec::new();
    if let Err(e) = TextEncoder::new().encode(&families, &mut out) {
        log::error!("metrics: {e}");
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `k:v,k2:v2` (AnyCable's `--metrics_tags`), as label pairs.
pub fn parse_tags(s: &str) -> Result<Vec<(String, String)>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| {
            let (k, v) = t
                .split_once(':')
                .ok_or_else(|| format!("metrics tag {t:?} is not key:value"))?;
            let k = k.trim();
            let valid = !k.is_empty()
                && !k.starts_with(|c: char| c.is_ascii_digit())
                && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(format!(
                    "metrics tag name {k:?} is not a Prometheus label name"
                ));
            }
            Ok((k.to_string(), v.trim().to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_anycable_names_with_tags() {
        COUNTERS.client_msg.inc_by(3);
        let tags = parse_tags("region:ams, app:chat").unwrap();
        let jobs = prometheus::IntCounterVec::new(
            prometheus::Opts::new("anycable_rs_jobs_total", "jobs"),
            &["kind"],
        )
        .unwrap();
        jobs.with_label_values(&["command"]).inc();
        let text = render(
            Snapshot {
                clients: 2,
                clients_uniq: 1,
                streams: 5,
            },
            &tags,
            jobs.collect(),
        );
        assert!(
            text.contains("# TYPE anycable_go_clients_num gauge"),
            "{text}"
        );
        assert!(
            text.contains(r#"anycable_go_clients_num{app="chat",region="ams"} 2"#),
            "{text}"
        );
        assert!(text.contains(r#"anycable_go_broadcast_streams_num{app="chat",region="ams"} 5"#));
        assert!(
            text.contains(r#"anycable_rs_jobs_total{app="chat",kind="command",region="ams"} 1"#),
            "{text}"
        );
        let sent = text
            .lines()
            .find(|l| l.starts_with("anycable_go_client_msg_total{"))
            .unwrap();
        assert!(sent.rsplit(' ').next().unwrap().parse::<u64>().unwrap() >= 3);
        // A labelled family with no sample yet is left out, not an error.
        let unused = prometheus::IntCounterVec::new(
            prometheus::Opts::new("anycable_rs_unused_total", "unused"),
            &["kind"],
        )
        .unwrap();
        let text = render(Snapshot::default(), &[], unused.collect());
        assert!(text.contains("anycable_go_clients_num 0"), "{text}");
        assert!(!text.contains("anycable_rs_unused_total"));
        assert!(parse_tags("bad").is_err());
        assert!(parse_tags("1x:y").is_err());
        assert_eq!(parse_tags("").unwrap(), vec![]);
    }
}
