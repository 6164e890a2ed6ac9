//! HTTP endpoints: `/health` and `/metrics` (Prometheus text format).
//!
//! Every sample on `/metrics` carries `node="<node.id>"`, added here as the text is rendered
//! (see [`with_node_label`]), so that a Prometheus scraping every node of a cluster can tell
//! them apart. Metrics must therefore not set a `node` label themselves.

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
    let node = state.broker.config.node_id.0.to_string();
    (StatusCode::OK, with_node_label(&text, &node))
}

/// Adds the label `node="<node>"` to every sample line of Prometheus text (comment and blank
/// lines are kept as they are): the one place the node label is set, so it covers the
/// recorder's metrics and the ones rendered by hand at scrape time alike.
fn with_node_label(text: &str, node: &str) -> String {
    let label = format!("node=\"{}\"", escape(node));
    let mut out = String::with_capacity(text.len() + text.lines().count() * (label.len() + 3));
    for line in text.split_inclusive('\n') {
        if line.trim().is_empty() || line.starts_with('#') {
            out.push_str(line);
            continue;
        }
        // A sample is `name{labels} value [timestamp]` or `name value [timestamp]`.
        let name_end = line
            .find(|c: char| c == '{' || c.is_ascii_whitespace())
            .unwrap_or(line.len());
        let (name, rest) = line.split_at(name_end);
        out.push_str(name);
        match rest.strip_prefix('{') {
            Some(labels) if labels.trim_start().starts_with('}') => {
                out.push('{');
                out.push_str(&label);
                out.push_str(labels.trim_start());
            }
            Some(labels) => {
                out.push('{');
                out.push_str(&label);
                out.push(',');
                out.push_str(labels);
            }
            None => {
                out.push('{');
                out.push_str(&label);
                out.push('}');
                out.push_str(rest);
            }
        }
    }
    out
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
        "# HELP spate_consumer_group_lag Last stable offset minus committed offset for a group that commits its offsets in transactions (its consumers read_committed); high watermark minus committed offset for any other group."
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
    use super::with_node_label;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(super::escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn node_label_is_added_to_every_sample_line() {
        let text = "# HELP up Up.\n\
                    # TYPE up gauge\n\
                    up 1\n\
                    spate_kafka_requests_total{api=\"Produce\"} 3\n\
                    empty_labels{} 0\n\
                    \n\
                    with_timestamp 2 1700000000000\n\
                    group{group=\"a{b} c\",partition=\"0\"} 4";
        assert_eq!(
            with_node_label(text, "7"),
            "# HELP up Up.\n\
             # TYPE up gauge\n\
             up{node=\"7\"} 1\n\
             spate_kafka_requests_total{node=\"7\",api=\"Produce\"} 3\n\
             empty_labels{node=\"7\"} 0\n\
             \n\
             with_timestamp{node=\"7\"} 2 1700000000000\n\
             group{node=\"7\",group=\"a{b} c\",partition=\"0\"} 4"
        );
        assert_eq!(with_node_label("", "7"), "");
    }

    #[test]
    fn every_recorded_metric_carries_the_node_label() {
        // The real exporter's output: counters, gauges and histograms (with their _bucket,
        // _sum and _count lines), with and without labels.
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            metrics::counter!("c_total").increment(1);
            metrics::counter!("c_labelled_total", "api" => "JoinGroup").increment(2);
            metrics::gauge!("g", "topic" => "t", "partition" => "0").set(5.0);
            metrics::histogram!("h_seconds", "api" => "FindCoordinator").record(0.25);
            metrics::histogram!("h_plain_seconds").record(0.5);
        });
        let text = with_node_label(&handle.render(), "3");
        let samples: Vec<&str> = text
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect();
        assert!(samples.len() >= 5, "{text}");
        for sample in &samples {
            let (_, labels) = sample.split_once('{').unwrap_or_else(|| panic!("{sample}"));
            assert!(labels.starts_with("node=\"3\""), "{sample}");
            assert_eq!(sample.matches("node=").count(), 1, "{sample}");
        }
        assert!(
            text.contains("c_labelled_total{node=\"3\",api=\"JoinGroup\"} 2"),
            "{text}"
        );
    }
}
