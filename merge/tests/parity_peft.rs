//! `--compat peft` against PEFT 0.21.2's own `add_weighted_adapter` results
//! (tests/fixtures/peft_merges, made by scripts/make_peft_merge_fixtures.py).

mod common;

use quiver_merge::engine::merged_delta;
use quiver_merge::{Compat, LoraAdapter, MajoritySign, MergeSpec, Method, merge};
use serde_json::Value;

#[test]
fn compat_peft_reproduces_every_saved_combination_type() {
    let root = common::fixtures().join("peft_merges");
    let cases: Value =
        serde_json::from_slice(&std::fs::read(root.join("cases.json")).expect("cases"))
            .expect("json");
    let mut checked = 0;
    for case in cases["cases"].as_array().expect("cases") {
        let name = format!(
            "{}/{}",
            case["set"].as_str().unwrap_or("?"),
            case["case"].as_str().unwrap_or("?")
        );
        let inputs: Vec<LoraAdapter> = case["adapters"]
            .as_array()
            .expect("adapters")
            .iter()
            .map(|n| {
                LoraAdapter::open(&root.join("inputs").join(n.as_str().expect("name")))
                    .expect("input")
            })
            .collect();
        let ctype = case["combination_type"].as_str().expect("type");
        let mut spec = MergeSpec::new(Method::parse(ctype, Compat::Peft).expect("method"));
        spec.compat = Compat::Peft;
        spec.weights = Some(
            case["weights"]
                .as_array()
                .expect("w")
                .iter()
                .map(|w| w.as_f64().expect("w"))
                .collect(),
        );
        spec.density = case["density"].as_f64();
        spec.rank = case["svd_rank"].as_u64().map(|r| r as usize);
        if case["majority_sign_method"] == "frequency" {
            spec.majority_sign = MajoritySign::Frequency;
        }
        if !spec.method.consensus() {
            spec.majority_sign = MajoritySign::Total;
        }
        let merged = merge(&inputs, &spec, &common::device(), &|_, _| {})
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let expected = common::load_tensors(&root.join(case["file"].as_str().expect("file")));
        let tolerance = if ctype.ends_with("svd") { 1e-4 } else { 1e-5 };
        assert_eq!(merged.modules.len(), expected.len(), "{name}: module set");
        for (key, want) in &expected {
            let path = key
                .strip_prefix("base_model.model.")
                .and_then(|k| k.strip_suffix(".delta"))
                .expect("key");
            let got = merged_delta(
                merged
                    .modules
                    .get(path)
                    .unwrap_or_else(|| panic!("{name}: {path} missing")),
            );
            let err = got.rel_err(want);
            assert!(
                err <= tolerance,
                "{name} {path}: relative Frobenius error {err:.2e} > {tolerance:.0e}"
            );
            checked += 1;
        }
        if let Some(r) = case["new_rank"].as_u64()
            && ctype.ends_with("svd")
        {
            assert!(
                merged.modules.values().all(|m| m.a.rows <= r as usize),
                "{name}: rank"
            );
        }
    }
    assert!(checked >= 50, "only {checked} module deltas compared");
}
