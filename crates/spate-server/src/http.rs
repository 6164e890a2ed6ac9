//! HTTP endpoints: `/health` and `/metrics` (Prometheus text format).

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use spate_kafka::Broker;
use std::sync::Arc;

#[derive(Clone)]
pub(crate) struct HttpState {
    pub broker: Arc<Broker>,
    pub metrics: Option<PrometheusHandle>,
}

pub(crate) fn router(state: HttpState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn health(State(state): State<HttpState>) -> (StatusCode, &'static str) {
    if state.broker.image().controller_id.is_some() {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "no controller\n")
    }
}

async fn metrics(State(state): State<HttpState>) -> (StatusCode, String) {
    let Some(handle) = &state.metrics else {
        return (
            StatusCode::NOT_FOUND,
            "metrics recorder not installed\n".into(),
        );
    };
    // Per-partition gauges are sampled at scrape time: idle partitions cost nothing.
    for partition in state.broker.replicas.all() {
        let tp = partition.topic_partition();
        let labels = [
            ("topic", tp.topic.clone()),
            ("partition", tp.partition.to_string()),
        ];
        metrics::gauge!("spate_partition_high_watermark", &labels)
            .set(partition.high_watermark().0 as f64);
        if let Ok((start, size)) =
            partition.with_log(|log| Ok((log.log_start_offset(), log.size_bytes())))
        {
            metrics::gauge!("spate_partition_log_start_offset", &labels).set(start.0 as f64);
            metrics::gauge!("spate_partition_size_bytes", &labels).set(size as f64);
        }
    }
    let mut text = handle.render();
    render_group_metrics(&state.broker, &mut text).await;
    (StatusCode::OK, text)
}

/// Group gauges are written at scrape time from the coordinator's state, so a deleted group
/// or offset disappears from `/metrics` with it (recorder gauges would linger).
async fn render_group_metrics(broker: &Broker, out: &mut String) {
    use std::fmt::Write;
    let (lags, members) = spate_kafka::group_lag(broker).await;
    if lags.is_empty() && members.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "# HELP spate_consumer_group_committed_offset Committed offset of a group's partition."
    );
    let _ = writeln!(out, "# TYPE spate_consumer_group_committed_offset gauge");
    for l in &lags {
        let _ = writeln!(
            out,
            "spate_consumer_group_committed_offset{{group=\"{}\",topic=\"{}\",partition=\"{}\"}} {}",
            escape(&l.group),
            escape(&l.topic),
            l.partition,
            l.committed
        );
    }
    let _ = writeln!(
        out,
        "# HELP spate_consumer_group_lag High watermark minus committed offset."
    );
    let _ = writeln!(out, "# TYPE spate_consumer_group_lag gauge");
    for l in &lags {
        if let Some(lag) = l.lag {
            let _ = writeln!(
                out,
                "spate_consumer_group_lag{{group=\"{}\",topic=\"{}\",partition=\"{}\"}} {lag}",
                escape(&l.group),
                escape(&l.topic),
                l.partition
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP spate_consumer_group_members Members of a group."
    );
    let _ = writeln!(out, "# TYPE spate_consumer_group_members gauge");
    for (group, n) in &members {
        let _ = writeln!(
            out,
            "spate_consumer_group_members{{group=\"{}\"}} {n}",
            escape(group)
        );
    }
}

/// Prometheus label value escaping: backslash, double quote and newline.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    #[test]
    fn label_values_are_escaped() {
        assert_eq!(super::escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
