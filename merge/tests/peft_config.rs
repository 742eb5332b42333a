#![allow(clippy::unwrap_used)]

use quiver_merge::peft_config::pattern_matches;
use quiver_merge::{AdapterConfig, FormatError, TargetModules};

fn cfg(json: &str) -> AdapterConfig {
    AdapterConfig::from_json(json.as_bytes()).unwrap()
}

fn err(json: &str) -> FormatError {
    AdapterConfig::from_json(json.as_bytes()).unwrap_err()
}

/// Asserts an `invalid_adapter_config` error whose message contains every fragment.
fn assert_invalid(json: &str, fragments: &[&str]) {
    let e = err(json);
    assert_eq!(e.code(), "invalid_adapter_config", "{json}: {e}");
    let msg = e.to_string();
    for f in fragments {
        assert!(
            msg.contains(f),
            "{json}: message {msg:?} should contain {f:?}"
        );
    }
}

const REAL: &str = r#"{
  "alpha_pattern": {},
  "auto_mapping": null,
  "base_model_name_or_path": "meta-llama/Llama-3.2-1B",
  "bias": "none",
  "corda_config": null,
  "eva_config": null,
  "exclude_modules": null,
  "fan_in_fan_out": false,
  "inference_mode": true,
  "init_lora_weights": true,
  "layer_replication": null,
  "layers_pattern": null,
  "layers_to_transform": null,
  "loftq_config": {},
  "lora_alpha": 32,
  "lora_bias": false,
  "lora_dropout": 0.05,
  "megatron_config": null,
  "megatron_core": "megatron.core",
  "modules_to_save": null,
  "peft_type": "LORA",
  "r": 16,
  "rank_pattern": {},
  "revision": null,
  "target_modules": ["v_proj", "q_proj"],
  "task_type": "CAUSAL_LM",
  "trainable_token_indices": null,
  "use_dora": false,
  "use_rslora": false
}"#;

#[test]
fn parses_a_real_peft_config() {
    let c = cfg(REAL);
    assert_eq!(c.peft_type, "LORA");
    assert_eq!(
        c.base_model_name_or_path.as_deref(),
        Some("meta-llama/Llama-3.2-1B")
    );
    assert_eq!(c.task_type.as_deref(), Some("CAUSAL_LM"));
    assert_eq!(c.revision, None);
    assert_eq!(c.r, 16);
    assert_eq!(c.lora_alpha, 32.0);
    assert!(!c.use_rslora && !c.use_dora && !c.fan_in_fan_out);
    assert_eq!(
        c.target_modules,
        TargetModules::List(vec!["v_proj".into(), "q_proj".into()])
    );
    assert!(c.rank_pattern.is_empty() && c.alpha_pattern.is_empty());
    assert_eq!(c.scale_for("model.layers.0.self_attn.q_proj"), 2.0);
}

#[test]
fn defaults_and_nulls() {
    let c = cfg(r#"{"peft_type":"LORA"}"#);
    assert_eq!((c.r, c.lora_alpha), (8, 8.0));
    assert_eq!(c.target_modules, TargetModules::Unspecified);
    assert_eq!(c, AdapterConfig::default());
    let c = cfg(
        r#"{"peft_type":"LORA","r":null,"lora_alpha":null,"use_rslora":null,"rank_pattern":null,"target_modules":null}"#,
    );
    assert_eq!(c, AdapterConfig::default());
}

#[test]
fn alpha_may_be_int_or_float_and_r_an_integral_float() {
    assert_eq!(
        cfg(r#"{"peft_type":"LORA","lora_alpha":16.5}"#).lora_alpha,
        16.5
    );
    assert_eq!(
        cfg(r#"{"peft_type":"LORA","lora_alpha":0}"#).lora_alpha,
        0.0
    );
    assert_eq!(cfg(r#"{"peft_type":"LORA","r":8.0}"#).r, 8);
}

#[test]
fn target_modules_forms() {
    let t =
        |v: &str| cfg(&format!(r#"{{"peft_type":"LORA","target_modules":{v}}}"#)).target_modules;
    assert_eq!(t(r#""all-linear""#), TargetModules::AllLinear);
    assert_eq!(
        t(r#"".*\\.(q|v)_proj""#),
        TargetModules::Regex(r".*\.(q|v)_proj".into())
    );
    assert_eq!(t("[]"), TargetModules::List(vec![]));
    assert_invalid(
        r#"{"peft_type":"LORA","target_modules":5}"#,
        &["target_modules"],
    );
    assert_invalid(
        r#"{"peft_type":"LORA","target_modules":["q",1]}"#,
        &["target_modules"],
    );
}

#[test]
fn rank_pattern_matches_suffix_at_dot_boundary() {
    let c = cfg(r#"{"peft_type":"LORA","rank_pattern":{"q_proj":16}}"#);
    assert_eq!(c.rank_for("model.layers.0.self_attn.q_proj"), 16);
    assert_eq!(c.rank_for("q_proj"), 16);
    assert_eq!(c.rank_for("model.layers.0.self_attn.q_proj_extra"), 8);
    assert_eq!(c.rank_for("model.layers.0.self_attn.xq_proj"), 8);
    assert_eq!(c.rank_for("model.layers.0.self_attn.v_proj"), 8);
}

#[test]
fn regex_pattern_keys() {
    let c = cfg(
        r#"{"peft_type":"LORA","r":4,"rank_pattern":{"layers\\.[0-1]\\.self_attn\\.(q|k)_proj":32}}"#,
    );
    assert_eq!(c.rank_for("model.layers.0.self_attn.q_proj"), 32);
    assert_eq!(c.rank_for("model.layers.1.self_attn.k_proj"), 32);
    assert_eq!(c.rank_for("model.layers.2.self_attn.q_proj"), 4);
    assert_eq!(c.rank_for("model.layers.1.self_attn.v_proj"), 4);
    // "." in a key is a regex wildcard, as in PEFT.
    assert!(pattern_matches("layers.0.q_proj", "model.layersX0Xq_proj"));
    // Must match at a dot boundary or the whole path.
    assert!(!pattern_matches(
        "layers\\.0\\.q_proj",
        "model.xlayers.0.q_proj"
    ));
    assert!(pattern_matches(
        "model\\.layers\\.0\\.q_proj",
        "model.layers.0.q_proj"
    ));
}

#[test]
fn first_match_wins_in_file_order() {
    // In sorted order "q_proj" would come first; the file order must win.
    let c = cfg(r#"{"peft_type":"LORA","rank_pattern":{"z|q_proj":4,"q_proj":16}}"#);
    assert_eq!(
        c.rank_pattern,
        vec![("z|q_proj".to_string(), 4), ("q_proj".to_string(), 16)]
    );
    assert_eq!(c.rank_for("a.q_proj"), 4);
    let c = cfg(r#"{"peft_type":"LORA","rank_pattern":{"q_proj":16,"z|q_proj":4}}"#);
    assert_eq!(c.rank_for("a.q_proj"), 16);
    assert_eq!(c.rank_for("a.z"), 4);

    let c = cfg(r#"{"peft_type":"LORA","alpha_pattern":{"self_attn\\..*":3,"q_proj":5}}"#);
    assert_eq!(c.alpha_for("m.self_attn.q_proj"), 3.0);
    assert_eq!(c.alpha_for("m.mlp.q_proj"), 5.0);
    assert_eq!(c.alpha_for("m.mlp.up_proj"), 8.0);
}

#[test]
fn scale_resolution() {
    let c = cfg(r#"{"peft_type":"LORA","r":8,"lora_alpha":16}"#);
    assert_eq!(c.scale_for("m.q_proj"), 2.0);

    let c = cfg(r#"{"peft_type":"LORA","r":8,"lora_alpha":16,"use_rslora":true}"#);
    assert!((c.scale_for("m.q_proj") - 16.0 / 8f64.sqrt()).abs() < 1e-12);

    let c = cfg(
        r#"{"peft_type":"LORA","r":8,"lora_alpha":16,"alpha_pattern":{"v_proj":32},"rank_pattern":{"o_proj":4}}"#,
    );
    assert_eq!(c.scale_for("m.q_proj"), 2.0);
    assert_eq!(c.alpha_for("m.v_proj"), 32.0);
    assert_eq!(
        c.scale_for("m.v_proj"),
        4.0,
        "alpha_pattern takes precedence"
    );
    assert_eq!(c.scale_for("m.o_proj"), 4.0, "per-module rank is used");

    let c = cfg(
        r#"{"peft_type":"LORA","r":8,"lora_alpha":16,"use_rslora":true,"rank_pattern":{"o_proj":4}}"#,
    );
    assert_eq!(c.scale_for("m.o_proj"), 8.0);
}

#[test]
fn rejects_other_peft_types() {
    for t in ["LOHA", "LOKR", "ADALORA", "IA3", "lora"] {
        let e = err(&format!(r#"{{"peft_type":"{t}","r":8}}"#));
        assert_eq!(e.code(), "unsupported_peft_type");
        assert!(e.to_string().contains(t), "{e}");
        assert!(matches!(e, FormatError::UnsupportedPeftType { ref peft_type } if peft_type == t));
    }
    assert_invalid(r#"{"r":8}"#, &["peft_type", "missing"]);
    assert_invalid(r#"{"peft_type":null}"#, &["peft_type", "missing"]);
    assert_invalid(r#"{"peft_type":1}"#, &["peft_type"]);
}

#[test]
fn rejects_bad_json_and_types() {
    assert_invalid("[]", &["JSON object", "an array"]);
    assert_invalid("42", &["JSON object"]);
    assert_invalid("{", &["not valid JSON"]);
    assert_invalid("", &["not valid JSON"]);
    assert!(AdapterConfig::from_json(&[0xff, 0xfe]).is_err());
    assert_invalid(
        r#"{"peft_type":"LORA","r":0}"#,
        &["`r`", "positive integer"],
    );
    assert_invalid(r#"{"peft_type":"LORA","r":-4}"#, &["`r`", "-4"]);
    assert_invalid(r#"{"peft_type":"LORA","r":8.5}"#, &["`r`"]);
    assert_invalid(r#"{"peft_type":"LORA","r":"8"}"#, &["`r`", "\"8\""]);
    assert_invalid(r#"{"peft_type":"LORA","lora_alpha":-1}"#, &["`lora_alpha`"]);
    assert_invalid(
        r#"{"peft_type":"LORA","lora_alpha":"16"}"#,
        &["`lora_alpha`"],
    );
    assert!(err(r#"{"peft_type":"LORA","lora_alpha":1e999}"#).code() == "invalid_adapter_config");
    assert_invalid(
        r#"{"peft_type":"LORA","use_rslora":"yes"}"#,
        &["`use_rslora`"],
    );
    assert_invalid(r#"{"peft_type":"LORA","use_dora":1}"#, &["`use_dora`"]);
    assert_invalid(
        r#"{"peft_type":"LORA","base_model_name_or_path":3}"#,
        &["`base_model_name_or_path`"],
    );
    assert_invalid(
        r#"{"peft_type":"LORA","r":8,"r":16}"#,
        &["\"r\"", "more than once"],
    );
}

#[test]
fn rejects_bad_patterns() {
    assert_invalid(
        r#"{"peft_type":"LORA","rank_pattern":{"q_proj":0}}"#,
        &["rank_pattern[\"q_proj\"]"],
    );
    assert_invalid(
        r#"{"peft_type":"LORA","rank_pattern":{"q_proj":"16"}}"#,
        &["rank_pattern[\"q_proj\"]"],
    );
    assert_invalid(
        r#"{"peft_type":"LORA","alpha_pattern":{"q_proj":-2.5}}"#,
        &["alpha_pattern[\"q_proj\"]"],
    );
    assert_invalid(
        r#"{"peft_type":"LORA","rank_pattern":{"(q_proj":8}}"#,
        &[
            "rank_pattern",
            "\"(q_proj\"",
            "not a valid regular expression",
        ],
    );
    assert_invalid(
        r#"{"peft_type":"LORA","rank_pattern":[1]}"#,
        &["`rank_pattern`", "object"],
    );
    assert_invalid(
        r#"{"peft_type":"LORA","alpha_pattern":{"a":1,"a":2}}"#,
        &["\"a\"", "more than once", "alpha_pattern"],
    );
}
