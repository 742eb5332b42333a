//! The real PEFT adapters in `tests/fixtures/peft` (made by `scripts/make_peft_fixtures.py`):
//! our config resolution must give PEFT's own per-module rank, alpha and scale, and every
//! fixture must pass `inspect_path`.

use std::path::PathBuf;

use quiver_merge::{AdapterConfig, inspect_path};
use serde_json::Value;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/peft")
}

#[test]
fn scales_match_what_peft_resolved() {
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(fixtures().join("MANIFEST.json")).expect("manifest"))
            .expect("json");
    let adapters = manifest["adapters"].as_object().expect("adapters");
    assert!(adapters.len() >= 6);
    let mut checked = 0;
    for (name, entry) in adapters {
        let config = AdapterConfig::from_json(
            &std::fs::read(fixtures().join(name).join("adapter_config.json")).expect("config"),
        )
        .expect("parses");
        for (module, expected) in entry["modules"].as_object().expect("modules") {
            let path = module.strip_prefix("base_model.model.").unwrap_or(module);
            assert_eq!(
                config.rank_for(path),
                expected["r"].as_u64().expect("r"),
                "{name} {module} r"
            );
            assert_eq!(
                config.alpha_for(path),
                expected["alpha"].as_f64().expect("alpha"),
                "{name} {module} alpha"
            );
            let scale = expected["scale"].as_f64().expect("scale");
            assert!(
                (config.scale_for(path) - scale).abs() < 1e-12,
                "{name} {module} scale"
            );
            checked += 1;
        }
    }
    assert!(checked > 20, "only {checked} modules checked");
}

#[test]
fn every_fixture_inspects() {
    for name in [
        "plain_r8",
        "rank_pattern",
        "rslora_r16",
        "embedding",
        "dora",
        "bf16_r8",
    ] {
        let s = inspect_path(&fixtures().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(s.peft_type, "LORA");
        assert_eq!(
            s.base_model.as_deref(),
            Some("quiver-test/tiny-llama"),
            "{name}"
        );
        match name {
            "rank_pattern" => assert_eq!(s.rank_pattern.get("q_proj"), Some(&8)),
            "rslora_r16" => assert!(s.use_rslora),
            "dora" => assert!(s.use_dora),
            "bf16_r8" => assert_eq!(s.dtype, "BF16"),
            "embedding" => assert!(s.target_modules.contains(&"embed_tokens".to_string())),
            _ => assert_eq!(s.target_modules, vec!["q_proj", "v_proj"]),
        }
    }
}
