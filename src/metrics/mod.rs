//! Per-thread counters and Prometheus text rendering.
