//! Node wiring: configuration, start-up order, HTTP endpoints and graceful shutdown.

mod config;
mod http;
mod node;

pub use config::{ConfigError, ServerConfig, BROKER_CONFIGS};
pub use node::{run, Node};
