//! What a caller may see of a version's lineage: the one redaction every view of a version
//! goes through (version resources, the listing's and an adapter's `latest`, the pages built
//! from them), agreeing with the lineage graph (`app::lineage::visible_lineage`).
//!
//! A version's stored `lineage.parents` names every version it was made from, with revisions.
//! A parent the caller may not see — an adapter that is private to someone else, or one deleted
//! since (whether it was private can no longer be told) — is shown as [`hidden_parent`]
//! (`{"hidden": true}`), in place, so the list keeps its length and order (`params.weights` and
//! the inputs of the job's report are positional). The written files of such a version name the
//! parent only as `private-input-{i}`, without its hashes (`jobs::redact`).

use std::collections::HashMap;

use quiver_store::{RepoId, Store, VersionRecord, Viewer};
use serde_json::{Value, json};

use crate::error::ApiError;

/// What a parent the caller may not see is shown as.
pub fn hidden_parent() -> Value {
    json!({"hidden": true})
}

/// Which adapters named as parents a viewer may see, looked up once for a set of versions.
#[derive(Default)]
pub struct Parents {
    visible: HashMap<String, bool>,
}

impl Parents {
    /// For the parents named in these versions' lineage (one lookup per distinct adapter).
    pub async fn of<'a>(
        store: &Store,
        viewer: &Viewer,
        versions: impl IntoIterator<Item = &'a VersionRecord>,
    ) -> Result<Self, ApiError> {
        let mut visible = HashMap::new();
        for v in versions {
            for name in parent_names(v.lineage.as_ref()) {
                if visible.contains_key(name) {
                    continue;
                }
                let seen = match name.parse::<RepoId>().ok() {
                    Some(repo) => store
                        .meta
                        .get_adapter(&repo)
                        .await?
                        .is_some_and(|a| viewer.can_see(&a)),
                    None => false,
                };
                visible.insert(name.to_string(), seen);
            }
        }
        Ok(Self { visible })
    }

    /// `lineage` with every parent the viewer may not see replaced by [`hidden_parent`]. A
    /// parent this set did not look up counts as hidden.
    pub fn redact(&self, lineage: Option<Value>) -> Option<Value> {
        let mut lineage = lineage?;
        if let Some(parents) = lineage.get_mut("parents").and_then(Value::as_array_mut) {
            for p in parents.iter_mut() {
                let seen = p
                    .get("adapter")
                    .and_then(Value::as_str)
                    .and_then(|a| self.visible.get(a))
                    .copied()
                    .unwrap_or(false);
                if !seen {
                    *p = hidden_parent();
                }
            }
        }
        Some(lineage)
    }
}

/// Whether this lineage names parent adapters, which makes its view depend on who looks.
pub fn has_parents(lineage: Option<&Value>) -> bool {
    parent_names(lineage).next().is_some()
}

fn parent_names(lineage: Option<&Value>) -> impl Iterator<Item = &str> {
    lineage
        .and_then(|l| l.get("parents"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|p| p.get("adapter").and_then(Value::as_str))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unseen_and_unknown_parents_are_hidden_in_place() {
        let parents = Parents {
            visible: HashMap::from([
                ("alice/open".to_string(), true),
                ("alice/secret".to_string(), false),
            ]),
        };
        let lineage = json!({"parents": [
            {"adapter": "alice/secret", "version": 1, "revision": "a".repeat(40)},
            {"adapter": "alice/open", "version": 2, "revision": "b".repeat(40)},
            {"adapter": "bob/never-looked-up", "version": 1, "revision": "c".repeat(40)},
            {"no": "adapter"},
        ], "method": "linear", "params": {"weights": [1, 2, 3, 4]}});
        let got = parents.redact(Some(lineage.clone())).expect("lineage");
        assert_eq!(got["parents"][0], hidden_parent());
        assert_eq!(got["parents"][1], lineage["parents"][1]);
        assert_eq!(got["parents"][2], hidden_parent());
        assert_eq!(got["parents"][3], hidden_parent());
        assert_eq!(got["params"], lineage["params"]);
        assert!(!got.to_string().contains("secret"));
        assert_eq!(parents.redact(None), None);
    }
}
