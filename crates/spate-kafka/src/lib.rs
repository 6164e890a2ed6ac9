//! spate-kafka
