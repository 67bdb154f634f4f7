//! Ferry's operator: the Connector and ConnectorRun controllers, the pure
//! builders of a run's objects, policy checks, schedules and metrics.
#![forbid(unsafe_code)]

pub mod audit;
pub mod conditions;
pub mod config;
pub mod connector;
pub mod context;
pub mod dereference;
pub mod error;
pub mod guard;
pub mod logging;
pub mod metrics;
pub mod names;
pub mod pod_bounds;
pub mod policy;
pub mod run;
pub mod run_cache;
pub mod schedule;
pub mod status;
