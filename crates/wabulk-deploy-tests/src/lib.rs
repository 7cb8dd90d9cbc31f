//! Test-only crate: it has no code of its own. Its integration tests
//! (`tests/it/main.rs`) check the files that deploy wabulk rather than
//! wabulk itself: `docker-compose.yml`, the `Dockerfile`, `deploy/` (engine
//! configuration, load spec, Prometheus configuration) and the Grafana
//! dashboards and provisioning under `dashboards/`. One test runs a real
//! Prometheus against `wabulk demo` and evaluates every dashboard query;
//! `scripts/prometheus-test` installs Prometheus and builds the binary for it.
