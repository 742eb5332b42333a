//! Metadata: one trait per capability (`TokenStore`, `AdapterStore`, `VersionStore`, `JobStore`,
//! `ProfileStore`; `CommitCheck` inside a publishing transaction) and their union `MetadataStore`,
//! with one implementation over sqlx's `Any` driver for both dialects.

/// A string-valued enum stored in a TEXT column: `as_str` for SQL binds, `FromStr` for rows.
macro_rules! string_enum {
    ($(#[$m:meta])* $name:ident { $($variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl std::str::FromStr for $name {
            type Err = StoreError;
            fn from_str(s: &str) -> Result<Self, StoreError> {
                match s {
                    $($text => Ok($name::$variant),)+
                    other => Err(StoreError::Invalid(format!(
                        concat!("unknown ", stringify!($name), " {:?}; one of: {}"),
                        other,
                        [$($text),+].join(", ")
                    ))),
                }
            }
        }
    };
}

pub mod adapters;
pub mod audit;
pub mod jobs;
pub mod orgs;
pub mod profiles;
mod query;
mod sql;
pub mod tokens;
pub mod versions;
pub mod webhooks;

use std::sync::Arc;

use async_trait::async_trait;

use crate::StoreError;

pub use adapters::{
    AdapterPatch, AdapterRecord, AdapterSort, AdapterStore, FacetCounts, FacetFilter, ListAdapters,
    ListedAdapter, NewAdapter, PageIds,
};
pub use audit::{Audit, AuditAction, AuditContext, AuditFilter, AuditRecord, AuditStore};
pub use jobs::{
    Beat, DEFAULT_MAX_ATTEMPTS, JobCounts, JobEnd, JobFilter, JobKind, JobRecord, JobState,
    JobStore, JobWakeups, Lease, LineageGraph, LineageNode, NewAdapterFields, NewJob, OutputTarget,
};
pub use orgs::{
    Deactivated, MAX_MEMBERS, MAX_ORGS_PER_USER, MemberRecord, Membership, NamespaceKind,
    OrgRecord, OrgRole, OrgStore,
};
pub use profiles::{
    CARD_FILE, NewProfile, PendingProfile, ProfileInfo, ProfileSource, ProfileStore,
    RoutableProfile, RoutingGenerations, SAMPLES_FILE, StaleProfile, StoredVectors,
};
pub use sql::SqlMetadata;
pub use tokens::{
    InviteRecord, MAX_RESTRICTIONS, NewToken, Principal, Restriction, TokenCheck, TokenRecord,
    TokenStore,
};
pub use versions::{
    AliasChange, AliasTarget, CommitCheck, FileRecord, NewVersion, NoCheck, ParentVersion,
    VersionFacets, VersionKind, VersionRecord, VersionRef, VersionState, VersionStore,
};
pub use webhooks::{
    DeliveryRecord, DeliveryStatus, EventRecord, NewDelivery, NewEvent, NewWebhook, QueuedDelivery,
    WebhookRecord, WebhookStore, delivery_spec,
};

/// Connects to `sqlite://…` or `postgres://…` and applies the dialect's migrations.
pub async fn connect(database_url: &str) -> Result<Arc<dyn MetadataStore>, StoreError> {
    Ok(Arc::new(SqlMetadata::connect(database_url).await?))
}

/// Who is asking, as far as visibility goes.
#[derive(Clone, Debug, Default)]
pub struct Viewer {
    pub user: Option<String>,
    pub admin: bool,
    /// A restricted token's list: private adapters outside it are hidden even from their owner
    /// or an admin (public ones stay visible, as to anyone). `None`: unrestricted.
    pub restrict: Option<Restriction>,
    /// The organisations the viewer belongs to (any role sees their private adapters).
    pub orgs: Vec<String>,
}

impl Viewer {
    pub fn can_see(&self, adapter: &AdapterRecord) -> bool {
        !adapter.private
            || (self.reads_namespace(&adapter.owner) && self.allows(&adapter.owner, &adapter.name))
    }

    /// Whether the viewer's identity (before any token restriction) reaches the private
    /// adapters of `owner`: an admin, the user itself, or a member of the organisation.
    pub fn reads_namespace(&self, owner: &str) -> bool {
        self.admin || self.user.as_deref() == Some(owner) || self.orgs.iter().any(|o| o == owner)
    }

    /// An admin without a restriction: sees every user's jobs and private adapters.
    pub fn sees_all(&self) -> bool {
        self.admin && self.restrict.is_none()
    }

    /// Whether the viewer's token restriction (if any) lets it act on `owner/name`.
    pub fn allows(&self, owner: &str, name: &str) -> bool {
        self.restrict.as_ref().is_none_or(|r| r.allows(owner, name))
    }
}

/// One page of a listing; `next_cursor` is opaque.
#[derive(Clone, Debug)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

/// Everything the service asks of the metadata database, one capability trait per resource
/// (one method per use case); the dialect and the cross-cutting reads are here.
#[async_trait]
pub trait MetadataStore:
    TokenStore
    + AdapterStore
    + VersionStore
    + JobStore
    + ProfileStore
    + WebhookStore
    + AuditStore
    + OrgStore
    + Send
    + Sync
{
    /// `"sqlite"` or `"postgres"`.
    fn dialect(&self) -> &'static str;
    async fn ping(&self) -> Result<(), StoreError>;
    /// A number that changes whenever anything an adapter listing shows changes (download counts
    /// excepted), whichever process made the change. Listing caches are validated against it.
    async fn listing_generation(&self) -> Result<i64, StoreError>;
    /// Counts of (adapters, versions, files) rows, for tests that check nothing was left behind.
    async fn row_counts(&self) -> Result<(i64, i64, i64), StoreError>;
}
