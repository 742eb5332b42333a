//! One test binary; every test runs on SQLite + local files and on Postgres + S3.

mod adapters;
mod downloads;
mod jobs;
mod listing;
mod pages;
mod privacy;
mod routing;
mod service;
mod uploads;
mod workers;
