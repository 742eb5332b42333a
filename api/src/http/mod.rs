//! The four front doors — [`routes`] (the REST API), [`web`] (the pages), [`hub`] (the
//! Hugging Face Hub's API) and [`lorax`] (LoRAX's `pbase` source) — and the HTTP edges they
//! share. A front door imports the use cases (`crate::app`) and these edges, never another
//! front door.

pub mod body_guard;
pub mod docs;
pub mod errors;
pub mod extract;
pub mod hub;
pub mod lorax;
pub mod openapi;
pub mod request_info;
pub mod route_table;
pub mod routes;
pub mod web;
