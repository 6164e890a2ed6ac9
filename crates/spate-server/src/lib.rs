//! Node wiring: configuration, start-up order, the reconciler (metadata image -> local
//! replicas), HTTP endpoints and graceful shutdown.

mod config;
mod http;
mod node;
mod reconciler;

pub use config::{ClusterSettings, ConfigError, ServerConfig, BROKER_CONFIGS};
pub use node::{run, Node};
