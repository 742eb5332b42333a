//! Use cases: what the front doors (`crate::http`) share — finding an adapter, version or file
//! the caller may see or write, listings, queuing and owning jobs, lineage visibility, alias
//! checks, serving a file. Nothing here knows which front door asked.

pub mod adapters;
pub mod audit;
pub mod exports;
pub mod files;
pub mod job_request;
pub mod jobs;
pub mod lineage;
pub mod lookup;
pub mod orgs;
pub mod proofs;
pub mod redact;
pub mod refs;
pub mod resources;
pub mod tokens;
pub mod users;
pub mod webhooks;
