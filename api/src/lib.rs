//! The `quiver` service: HTTP API, auth, configuration and the CLI's commands.

pub mod auth;
pub mod background;
pub mod cli;
pub mod compress_cmd;
pub mod conditional;
pub mod config;
pub mod error;
pub mod facets;
pub mod hub;
pub mod jobs;
pub mod list_cache;
pub mod lookup;
pub mod merge_cmd;
pub mod metrics;
pub mod openapi;
pub mod publish;
pub mod redact;
pub mod resources;
pub mod route_cmd;
pub mod route_table;
pub mod routes;
pub mod routing;
pub mod startup;
pub mod state;
pub mod upload;
pub mod web;
