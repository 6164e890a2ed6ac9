//! spate-server
