//! spate-log
