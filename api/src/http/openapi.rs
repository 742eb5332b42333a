//! The OpenAPI document root; paths and schemas are collected from the registered services.

use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(title = "Quiver", description = "Registry and merging service for LoRA adapters."),
    modifiers(&BearerAuth),
    tags(
        (name = "adapters", description = "Adapters: create, list, search, update, delete"),
        (name = "versions", description = "Immutable versions of an adapter"),
        (name = "files", description = "Downloads"),
        (name = "refs", description = "Aliases that point at versions"),
        (name = "jobs", description = "Merge, compression and embed jobs: submit, follow, cancel"),
        (name = "webhooks", description = "Events of adapters delivered to your URLs: subscriptions, delivery log, redelivery"),
        (name = "orgs", description = "Organisations: namespaces shared by members with read, write or admin roles"),
        (name = "tokens", description = "API tokens: create (scoped, restricted, expiring), list, revoke"),
        (name = "routing", description = "Route prompts to adapters (LoraRetriever-style); routing profiles"),
        (name = "service", description = "Health and metrics")
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme(
                "bearer",
                SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
            );
    }
}
