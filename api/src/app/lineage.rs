//! Lineage as a caller may see it: the DAG of the versions a version was made from and of those
//! made from it, without the versions of private adapters the caller may not see.

use std::collections::BTreeMap;

use crate::app::resources::{LineageEdgeView, LineageNodeView, LineageView};
use crate::error::ApiError;
use crate::state::AppState;

/// Most versions one lineage answer holds (nearest first).
const MAX_NODES: usize = 500;

/// The lineage of `version` as `viewer` may see it (the API's answer; the web pages draw it).
pub async fn visible_lineage(
    state: &AppState,
    viewer: &quiver_store::Viewer,
    adapter: &quiver_store::AdapterRecord,
    version: &quiver_store::VersionRecord,
) -> Result<LineageView, ApiError> {
    let graph = state.store.meta.lineage(version.id, MAX_NODES).await?;
    let node_id = |repo: &str, n: i64| format!("{repo}@{n}");
    // Only versions the caller may see, reached from this one through versions it may see: a
    // public ancestor behind a private one is left out too (its link would reveal the private).
    let seeable: BTreeMap<i64, String> = graph
        .nodes
        .iter()
        .filter(|n| viewer.can_see(&n.adapter))
        .map(|n| (n.version_id, node_id(&n.adapter.repo_id(), n.number)))
        .collect();
    let mut visible: BTreeMap<i64, String> = BTreeMap::new();
    let mut frontier = vec![version.id];
    while let Some(v) = frontier.pop() {
        let Some(id) = seeable.get(&v) else { continue };
        if visible.insert(v, id.clone()).is_some() {
            continue;
        }
        for (child, parent) in &graph.edges {
            if *child == v && parent != &v {
                frontier.push(*parent);
            }
            if *parent == v && child != &v {
                frontier.push(*child);
            }
        }
    }
    let nodes = graph
        .nodes
        .iter()
        .filter(|n| visible.contains_key(&n.version_id))
        .map(|n| LineageNodeView {
            id: node_id(&n.adapter.repo_id(), n.number),
            adapter: n.adapter.repo_id(),
            version: n.number,
            revision: n.revision.clone(),
            method: n.method.clone(),
        })
        .collect();
    let edges = graph
        .edges
        .iter()
        .filter_map(|(child, parent)| {
            Some(LineageEdgeView {
                from: visible.get(parent)?.clone(),
                to: visible.get(child)?.clone(),
            })
        })
        .collect();
    Ok(LineageView {
        root: node_id(&adapter.repo_id(), version.number),
        nodes,
        edges,
    })
}
