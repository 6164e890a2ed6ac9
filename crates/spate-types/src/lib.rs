//! spate-types
