//! spate-controller
