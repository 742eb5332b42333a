//! Lineage: the DAG of the versions a version was made from and of those made from it.

use actix_web::{HttpResponse, route, web};

use crate::app::lineage::visible_lineage;
use crate::app::lookup::find_version;
use crate::app::resources::LineageView;
use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::state::AppState;

/// Ancestors and descendants of a version as a DAG (`nodes`, `edges` parent → child). Versions
/// of private adapters the caller may not see are left out, with their edges.
#[utoipa::path(
    tag = "versions",
    params(("ref" = String, Path, description = "number, v{N}, alias, main or revision")),
    responses((status = 200, body = LineageView), (status = 404, body = ErrorBody))
)]
#[route(
    "/adapters/{owner}/{name}/versions/{ref}/lineage",
    method = "GET",
    method = "HEAD"
)]
pub async fn get_lineage(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<(String, String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (owner, name, reference) = path.into_inner();
    let (adapter, version) = find_version(&state, &caller, &owner, &name, &reference).await?;
    let lineage = visible_lineage(&state, &caller.viewer(), &adapter, &version).await?;
    Ok(HttpResponse::Ok().json(lineage))
}
