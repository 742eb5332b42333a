//! A version's listing facets and compatibility, computed from its stored LoRA summary and
//! lineage (the store keeps the facets as columns so the listing can filter on them).

use quiver_merge::LoraSummary;
use quiver_merge::compat::{self, Compatibility};
use quiver_store::{Store, StoreError, VersionFacets, VersionKind};
use serde_json::Value;

/// The summary stored with a version, if it parses (every stored summary does).
pub fn summary(lora: Option<&Value>) -> Option<LoraSummary> {
    lora.and_then(|v| serde_json::from_value(v.clone()).ok())
}

/// How the version was made, from its lineage's method (`compress:…` for compressions).
pub fn kind(lineage: Option<&Value>) -> VersionKind {
    match lineage
        .and_then(|l| l.get("method"))
        .and_then(Value::as_str)
    {
        Some(m) if m.starts_with("compress") => VersionKind::Compressed,
        Some(_) => VersionKind::Merged,
        None if lineage.is_some() => VersionKind::Merged,
        None => VersionKind::Trained,
    }
}

pub fn of(lora: Option<&Value>, lineage: Option<&Value>) -> VersionFacets {
    let summary = summary(lora);
    VersionFacets {
        kind: kind(lineage),
        max_rank: summary
            .as_ref()
            .map(|s| i64::try_from(compat::max_rank(s)).unwrap_or(i64::MAX)),
        targets: summary
            .as_ref()
            .map(|s| s.target_modules.clone())
            .unwrap_or_default(),
        vllm_ok: summary.as_ref().map(|s| Compatibility::of(s).vllm.ok),
    }
}

/// Fills the facets of versions published before they existed (migration 0005); run at start.
/// Idempotent, so processes starting together may all run it.
pub async fn backfill(store: &Store) -> Result<u64, StoreError> {
    let mut done = 0;
    loop {
        let batch = store.meta.versions_without_facets(500).await?;
        if batch.is_empty() {
            return Ok(done);
        }
        for (id, lora, lineage) in batch {
            store
                .meta
                .set_version_facets(id, &of(lora.as_ref(), lineage.as_ref()))
                .await?;
            done += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn kind_follows_the_lineage_method() {
        assert_eq!(kind(None), VersionKind::Trained);
        assert_eq!(kind(Some(&json!({"method": "ties"}))), VersionKind::Merged);
        assert_eq!(
            kind(Some(&json!({"method": "compress:joint"}))),
            VersionKind::Compressed
        );
    }

    #[test]
    fn facets_come_from_the_summary() {
        let lora = json!({
            "peft_type": "LORA", "r": 8, "lora_alpha": 16.0, "use_rslora": false,
            "use_dora": false, "target_modules": ["q_proj", "v_proj"],
            "rank_pattern": {"q_proj": 32}, "alpha_pattern": {}, "n_params": 1,
            "dtype": "F32", "size": 1, "n_modules": 2, "base_model": null
        });
        let f = of(Some(&lora), None);
        assert_eq!(
            f.max_rank,
            Some(32),
            "an old summary falls back to rank_pattern"
        );
        assert_eq!(f.targets, vec!["q_proj", "v_proj"]);
        assert_eq!(f.vllm_ok, Some(true));
        assert_eq!(of(None, None).max_rank, None);
    }
}
