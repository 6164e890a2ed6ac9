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
    (StatusCode::OK, handle.render())
}
