//! The `quiver` service. Layers, highest first (docs/architecture.md "Layers"; the rules are
//! checked by `tests/tests/layers.rs`):
//!
//! - entry: [`cli`], [`startup`], [`background`] — the commands and the composition root;
//! - front doors, [`http`]: `routes` (REST), `web` (pages), `hub` (the Hugging Face API), over
//!   shared HTTP edges (error rendering, extractors, body limits, the route table, OpenAPI);
//! - use cases, [`app`]: what the front doors share (finding what a caller may see or write,
//!   listings, jobs, lineage, aliases, serving a file);
//! - services: [`jobs`] (the worker), [`events`] (events and webhook delivery), [`routing`], [`state`], [`config`], [`auth`], [`auth_proxy`], [`publish`],
//!   [`upload`], [`list_cache`], [`list_fragments`], [`card`];
//! - base: [`error`] (the one envelope and code table), [`metrics`], [`facets`],
//!   [`conditional`], [`device`].

pub mod app;
pub mod auth;
pub mod auth_proxy;
pub mod background;
pub mod card;
pub mod cli;
pub mod conditional;
pub mod config;
pub mod device;
pub mod error;
pub mod events;
pub mod facets;
pub mod http;
pub mod jobs;
pub mod list_cache;
pub mod list_fragments;
pub mod metrics;
pub mod publish;
pub mod routing;
pub mod startup;
pub mod state;
pub mod upload;
