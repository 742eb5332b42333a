//! One test binary; every test runs on SQLite + local files and on Postgres + S3.

mod adapters;
mod audit;
mod containment;
mod downloads;
mod fair_share;
mod faults;
mod hostile_input;
mod jobs;
mod limits;
mod listing;
mod lorax;
mod org_pages;
mod orgs;
mod pages;
mod privacy;
mod privacy_matrix;
mod private_parents;
mod protected_aliases;
mod publish_checks;
mod routing;
mod service;
mod sso;
mod tokens;
mod uploads;
mod webhooks;
mod workers;
