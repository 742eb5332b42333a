//! One module per resource; each owns its handlers, request types and OpenAPI annotations.

pub mod adapters;
pub mod audit;
pub mod files;
pub mod health;
pub mod jobs;
pub mod lineage;
pub mod orgs;
pub mod profiles;
pub mod refs;
pub mod route;
pub mod tokens;
pub mod users;
pub mod versions;
pub mod webhooks;

use utoipa_actix_web::service_config::ServiceConfig;

/// The `/api/v1` routes.
pub fn configure_v1(cfg: &mut ServiceConfig) {
    cfg.service(adapters::create_adapter)
        .service(adapters::list_adapters)
        .service(adapters::get_adapter)
        .service(adapters::patch_adapter)
        .service(adapters::delete_adapter)
        .service(versions::create_version)
        .service(versions::list_versions)
        .service(versions::get_version)
        .service(files::download_file)
        .service(refs::list_refs)
        .service(refs::set_ref)
        .service(refs::delete_ref)
        .service(refs::protect_ref)
        .service(refs::unprotect_ref)
        .service(lineage::get_lineage)
        .service(jobs::create_merge)
        .service(jobs::create_compression)
        .service(jobs::list_jobs)
        .service(jobs::get_job)
        .service(jobs::cancel_job)
        .service(profiles::get_profile)
        .service(profiles::post_profile)
        .service(route::route)
        .service(webhooks::create_webhook)
        .service(webhooks::list_webhooks)
        .service(webhooks::get_webhook)
        .service(webhooks::delete_webhook)
        .service(webhooks::list_deliveries)
        .service(webhooks::redeliver)
        .service(webhooks::ping)
        .service(tokens::create_token)
        .service(tokens::list_tokens)
        .service(tokens::revoke_token)
        .service(tokens::create_invite)
        .service(audit::list_audit)
        .service(orgs::create_org)
        .service(orgs::list_orgs)
        .service(orgs::get_org)
        .service(orgs::set_member)
        .service(orgs::remove_member)
        .service(adapters::transfer_adapter)
        .service(users::deactivate_user)
        .service(users::reactivate_user);
}
