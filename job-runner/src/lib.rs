//! Ferry's runner: reads a Connector, streams the objects it selects from the
//! source to the destination, encrypted at rest, and writes a signed manifest.
#![forbid(unsafe_code)]

pub mod audit;
pub mod aws;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod crypto;
pub mod job;
pub mod lineage;
pub mod net;
pub mod pipe;
pub mod project;
pub mod readback;
pub mod select;
pub mod storage;
pub mod transfer;
pub mod vault;
