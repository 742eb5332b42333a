#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use quiver_merge::keys::{TensorRole, leaf_name, split_key};
use quiver_merge::summary::infer_config;
use quiver_merge::{
    AdapterConfig, Dtype, FormatError, LoraSummary, SafetensorsHeader, inspect_path, parse_header,
    summarize, write_safetensors,
};

/// An owned tensor spec: name, dtype, shape (data is zero-filled).
type Spec = (String, Dtype, Vec<u64>);

fn file(specs: &[Spec]) -> Vec<u8> {
    let datas: Vec<Vec<u8>> = specs
        .iter()
        .map(|(_, d, s)| vec![0u8; (s.iter().product::<u64>() * d.size_bytes()) as usize])
        .collect();
    let tensors: Vec<(&str, Dtype, &[u64], &[u8])> = specs
        .iter()
        .zip(&datas)
        .map(|((n, d, s), data)| (n.as_str(), *d, s.as_slice(), data.as_slice()))
        .collect();
    write_safetensors(&tensors, &BTreeMap::from([("format".into(), "pt".into())]))
}

fn header(specs: &[Spec]) -> (SafetensorsHeader, u64) {
    let bytes = file(specs);
    (
        parse_header(&bytes, bytes.len() as u64).unwrap(),
        bytes.len() as u64,
    )
}

/// LoRA pair for a linear module: A [r, d_in], B [d_out, r].
fn pair(prefix: &str, path: &str, r: u64, d_in: u64, d_out: u64) -> Vec<Spec> {
    vec![
        (
            format!("{prefix}{path}.lora_A.weight"),
            Dtype::F32,
            vec![r, d_in],
        ),
        (
            format!("{prefix}{path}.lora_B.weight"),
            Dtype::F32,
            vec![d_out, r],
        ),
    ]
}

const P: &str = "base_model.model.";

fn llama(prefix: &str, q_rank: u64) -> Vec<Spec> {
    let mut specs = Vec::new();
    for layer in 0..2 {
        let base = format!("model.layers.{layer}.self_attn");
        specs.extend(pair(prefix, &format!("{base}.q_proj"), q_rank, 16, 16));
        specs.extend(pair(prefix, &format!("{base}.v_proj"), 8, 16, 4));
    }
    specs
}

fn config(json: &str) -> AdapterConfig {
    AdapterConfig::from_json(json.as_bytes()).unwrap()
}

const BASIC: &str = r#"{"peft_type":"LORA","r":8,"lora_alpha":16,"base_model_name_or_path":"meta-llama/Llama-3.2-1B","target_modules":["q_proj","v_proj"]}"#;

fn run(json: &str, specs: &[Spec]) -> Result<LoraSummary, FormatError> {
    let (h, size) = header(specs);
    summarize(&config(json), &h, size)
}

fn assert_err(result: Result<LoraSummary, FormatError>, code: &str, fragments: &[&str]) {
    let e = result.unwrap_err();
    assert_eq!(e.code(), code, "{e}");
    let msg = e.to_string();
    for f in fragments {
        assert!(msg.contains(f), "message {msg:?} should contain {f:?}");
    }
}

#[test]
fn key_grammar() {
    use TensorRole::*;
    let cases = [
        (
            "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
            "model.layers.0.self_attn.q_proj",
            A,
        ),
        (
            "model.layers.0.self_attn.q_proj.lora_B.weight",
            "model.layers.0.self_attn.q_proj",
            B,
        ),
        (
            "base_model.model.model.embed_tokens.lora_embedding_A",
            "model.embed_tokens",
            EmbA,
        ),
        (
            "base_model.model.model.embed_tokens.lora_embedding_B",
            "model.embed_tokens",
            EmbB,
        ),
        (
            "base_model.model.x.o_proj.lora_magnitude_vector",
            "x.o_proj",
            Magnitude,
        ),
        (
            "x.o_proj.lora_magnitude_vector.weight",
            "x.o_proj",
            Magnitude,
        ),
        ("x.o_proj.lora_B.bias", "x.o_proj", BBias),
        ("base_model.model.score.weight", "score.weight", Other),
        ("lora_A.weight", "lora_A.weight", Other),
        ("x.lora_A.default.weight", "x.lora_A.default.weight", Other),
    ];
    for (name, path, role) in cases {
        assert_eq!(split_key(name), (path, role), "{name}");
    }
    assert_eq!(leaf_name("model.layers.0.self_attn.q_proj"), "q_proj");
    assert_eq!(leaf_name("q_proj"), "q_proj");
}

#[test]
fn summarizes_a_valid_adapter() {
    let mut specs = llama(P, 8);
    specs.push((format!("{P}score.weight"), Dtype::F32, vec![2, 16]));
    let (h, size) = header(&specs);
    let s = summarize(&config(BASIC), &h, size).unwrap();
    let n_params = 2 * (8 * 16 + 16 * 8 + 8 * 16 + 4 * 8) + 32;
    assert_eq!(
        s,
        LoraSummary {
            peft_type: "LORA".into(),
            r: 8,
            lora_alpha: 16.0,
            use_rslora: false,
            use_dora: false,
            target_modules: vec!["q_proj".into(), "v_proj".into()],
            rank_pattern: BTreeMap::new(),
            alpha_pattern: BTreeMap::new(),
            n_params,
            dtype: "F32".into(),
            size,
            n_modules: 4,
            base_model: Some("meta-llama/Llama-3.2-1B".into()),
            module_shapes: BTreeMap::from([
                ("q_proj".to_string(), vec![[16, 16]]),
                ("v_proj".to_string(), vec![[4, 16]]),
            ]),
            modules_to_save: Vec::new(),
            max_rank: 8,
        }
    );
    // Serde round trip.
    let json = serde_json::to_string(&s).unwrap();
    assert_eq!(serde_json::from_str::<LoraSummary>(&json).unwrap(), s);
}

#[test]
fn rejects_missing_lora_b() {
    let mut specs = llama(P, 8);
    specs.retain(|(n, _, _)| n != "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight");
    assert_err(
        run(BASIC, &specs),
        "invalid_adapter",
        &["\"model.layers.1.self_attn.v_proj\"", "no lora_B"],
    );
}

#[test]
fn rejects_missing_lora_a() {
    let mut specs = llama("", 8);
    specs.retain(|(n, _, _)| n != "model.layers.0.self_attn.q_proj.lora_A.weight");
    assert_err(
        run(BASIC, &specs),
        "invalid_adapter",
        &["\"model.layers.0.self_attn.q_proj\"", "no lora_A"],
    );
}

#[test]
fn rejects_rank_disagreeing_with_config() {
    assert_err(
        run(BASIC, &llama(P, 16)),
        "adapter_mismatch",
        &[
            "\"model.layers.0.self_attn.q_proj\"",
            "rank 16",
            "rank 8",
            "`r`",
        ],
    );
    let json = r#"{"peft_type":"LORA","r":8,"rank_pattern":{"q_proj":32}}"#;
    assert_err(
        run(json, &llama(P, 16)),
        "adapter_mismatch",
        &["rank 16", "rank 32", "rank_pattern key \"q_proj\""],
    );
}

#[test]
fn rejects_a_and_b_rank_disagreement() {
    let mut specs = llama(P, 8);
    specs[1].2 = vec![16, 4];
    assert_err(
        run(BASIC, &specs),
        "invalid_adapter",
        &["\"model.layers.0.self_attn.q_proj\"", "rank 8", "rank 4"],
    );
}

#[test]
fn accepts_rank_pattern_adapter() {
    let json = r#"{"peft_type":"LORA","r":8,"lora_alpha":8,"rank_pattern":{"q_proj":16},"alpha_pattern":{"q_proj":32}}"#;
    let s = run(json, &llama(P, 16)).unwrap();
    assert_eq!(s.rank_pattern, BTreeMap::from([("q_proj".to_string(), 16)]));
    assert_eq!(
        s.alpha_pattern,
        BTreeMap::from([("q_proj".to_string(), 32.0)])
    );
    assert_eq!(s.r, 8);
    assert_eq!(s.max_rank, 16, "the rank_pattern module is the largest");
}

#[test]
fn records_modules_to_save() {
    let json = r#"{"peft_type":"LORA","r":8,"modules_to_save":["score"]}"#;
    let s = run(json, &llama(P, 8)).unwrap();
    assert_eq!(s.modules_to_save, vec!["score".to_string()]);
    let bad = r#"{"peft_type":"LORA","r":8,"modules_to_save":[1]}"#;
    let e = AdapterConfig::from_json(bad.as_bytes()).unwrap_err();
    assert_eq!(e.code(), "invalid_adapter_config");
    assert!(e.to_string().contains("`modules_to_save`"), "{e}");
}

#[test]
fn base_model_prefix_is_optional() {
    let with = run(BASIC, &llama(P, 8)).unwrap();
    let without = run(BASIC, &llama("", 8)).unwrap();
    assert_eq!(with.target_modules, without.target_modules);
    assert_eq!(with.n_modules, without.n_modules);
    // Patterns are resolved against the path without the prefix.
    let json =
        r#"{"peft_type":"LORA","rank_pattern":{"model\\.layers\\.0\\.self_attn\\.q_proj":4}}"#;
    let mut specs = llama(P, 8);
    specs[0].2 = vec![4, 16];
    specs[1].2 = vec![16, 4];
    run(json, &specs).unwrap();
    // The same module under both spellings is a duplicate.
    let mut specs = llama(P, 8);
    specs.push((
        "model.layers.0.self_attn.q_proj.lora_A.weight".into(),
        Dtype::F32,
        vec![8, 16],
    ));
    assert_err(run(BASIC, &specs), "invalid_adapter", &["keep only one"]);
}

#[test]
fn embedding_keys() {
    let mut specs = llama(P, 8);
    specs.push((
        format!("{P}model.embed_tokens.lora_embedding_A"),
        Dtype::F32,
        vec![8, 100],
    ));
    specs.push((
        format!("{P}model.embed_tokens.lora_embedding_B"),
        Dtype::F32,
        vec![16, 8],
    ));
    let s = run(BASIC, &specs).unwrap();
    assert_eq!(s.target_modules, ["embed_tokens", "q_proj", "v_proj"]);
    assert_eq!(s.n_modules, 5);

    specs.pop();
    assert_err(
        run(BASIC, &specs),
        "invalid_adapter",
        &["\"model.embed_tokens\"", "no lora_embedding_B"],
    );
    specs.push((
        format!("{P}model.embed_tokens.lora_embedding_B"),
        Dtype::F32,
        vec![16, 4],
    ));
    assert_err(run(BASIC, &specs), "invalid_adapter", &["same rank"]);
}

#[test]
fn dora_is_flagged() {
    let mut specs = llama(P, 8);
    specs.push((
        format!("{P}model.layers.0.self_attn.q_proj.lora_magnitude_vector"),
        Dtype::F32,
        vec![16],
    ));
    let s = run(BASIC, &specs).unwrap();
    assert!(s.use_dora);
    assert!(!run(BASIC, &llama(P, 8)).unwrap().use_dora);
    let dora_cfg = r#"{"peft_type":"LORA","use_dora":true}"#;
    assert!(run(dora_cfg, &llama(P, 8)).unwrap().use_dora);

    specs.last_mut().unwrap().2 = vec![15];
    assert_err(
        run(BASIC, &specs),
        "invalid_adapter",
        &["magnitude", "output dimension is 16"],
    );
    // A magnitude vector without a pair.
    let mut specs = llama(P, 8);
    specs.push((
        format!("{P}lm_head.lora_magnitude_vector"),
        Dtype::F32,
        vec![16],
    ));
    assert_err(
        run(BASIC, &specs),
        "invalid_adapter",
        &["\"lm_head\"", "no lora_A/lora_B pair"],
    );
}

#[test]
fn lora_b_bias() {
    let mut specs = llama(P, 8);
    specs.push((
        format!("{P}model.layers.0.self_attn.v_proj.lora_B.bias"),
        Dtype::F32,
        vec![4],
    ));
    run(BASIC, &specs).unwrap();
    specs.last_mut().unwrap().2 = vec![16];
    assert_err(
        run(BASIC, &specs),
        "invalid_adapter",
        &["lora_B bias", "expected [4]"],
    );
}

#[test]
fn conv_shapes() {
    let specs = vec![
        (
            format!("{P}unet.conv_in.lora_A.weight"),
            Dtype::F16,
            vec![8, 4, 3, 3],
        ),
        (
            format!("{P}unet.conv_in.lora_B.weight"),
            Dtype::F16,
            vec![32, 8, 1, 1],
        ),
    ];
    let s = run(r#"{"peft_type":"LORA"}"#, &specs).unwrap();
    assert_eq!(s.dtype, "F16");
    let mut bad = specs.clone();
    bad[1].2 = vec![32, 8, 3, 3];
    assert_err(
        run(r#"{"peft_type":"LORA"}"#, &bad),
        "invalid_adapter",
        &["[out_channels, r, 1, 1]"],
    );
    let mut bad = specs.clone();
    bad[1].2 = vec![32, 8];
    assert_err(
        run(r#"{"peft_type":"LORA"}"#, &bad),
        "invalid_adapter",
        &["lora_B"],
    );
    let mut bad = specs;
    bad[0].2 = vec![8];
    assert_err(
        run(r#"{"peft_type":"LORA"}"#, &bad),
        "invalid_adapter",
        &["expected [r, d_in]"],
    );
}

#[test]
fn dtype_rules() {
    let mut specs = llama(P, 8);
    specs[0].1 = Dtype::BF16;
    assert_eq!(run(BASIC, &specs).unwrap().dtype, "mixed");
    for s in specs.iter_mut() {
        s.1 = Dtype::BF16;
    }
    assert_eq!(run(BASIC, &specs).unwrap().dtype, "BF16");
    specs[2].1 = Dtype::I32;
    assert_err(
        run(BASIC, &specs),
        "invalid_adapter",
        &["dtype I32", "v_proj"],
    );
}

#[test]
fn rejects_files_without_lora_tensors() {
    let specs = vec![("score.weight".to_string(), Dtype::F32, vec![2, 2])];
    assert_err(
        run(BASIC, &specs),
        "invalid_adapter",
        &["no LoRA tensors", "score.weight"],
    );
    let kohya = vec![
        (
            "lora_unet_x.lora_down.weight".to_string(),
            Dtype::F32,
            vec![4, 8],
        ),
        (
            "lora_unet_x.lora_up.weight".to_string(),
            Dtype::F32,
            vec![8, 4],
        ),
    ];
    assert_err(run(BASIC, &kohya), "invalid_adapter", &["kohya"]);
    assert_err(run(BASIC, &[]), "invalid_adapter", &["no tensors at all"]);
}

#[test]
fn infers_config_for_bare_files() {
    let (h, _) = header(&llama(P, 16));
    let c = infer_config(&h);
    // Two q_proj modules at rank 16 and two v_proj at rank 8: tie → the smaller rank.
    assert_eq!(c.r, 8);
    assert_eq!(c.lora_alpha, 8.0);
    assert_eq!(c.rank_for("model.layers.0.self_attn.q_proj"), 16);
    assert_eq!(c.rank_for("model.layers.1.self_attn.v_proj"), 8);
    assert_eq!(c.scale_for("model.layers.1.self_attn.q_proj"), 1.0);
    summarize(&c, &h, 0).unwrap();
}

#[test]
fn inspect_directory_and_bare_file() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = file(&llama(P, 8));
    std::fs::write(dir.path().join("adapter_model.safetensors"), &bytes).unwrap();
    std::fs::write(dir.path().join("adapter_config.json"), BASIC).unwrap();
    let s = inspect_path(dir.path()).unwrap();
    assert_eq!(s.size, bytes.len() as u64);
    assert_eq!(s.lora_alpha, 16.0);
    assert_eq!(s.base_model.as_deref(), Some("meta-llama/Llama-3.2-1B"));

    let bare = inspect_path(&dir.path().join("adapter_model.safetensors")).unwrap();
    assert_eq!((bare.r, bare.lora_alpha, bare.base_model), (8, 8.0, None));
    assert_eq!(bare.peft_type, "LORA");
    assert_eq!(bare.n_modules, 4);

    // Config mismatch surfaces from the directory form.
    std::fs::write(
        dir.path().join("adapter_config.json"),
        r#"{"peft_type":"LORA","r":4}"#,
    )
    .unwrap();
    assert_eq!(
        inspect_path(dir.path()).unwrap_err().code(),
        "adapter_mismatch"
    );
    std::fs::write(
        dir.path().join("adapter_config.json"),
        r#"{"peft_type":"LOHA"}"#,
    )
    .unwrap();
    assert_eq!(
        inspect_path(dir.path()).unwrap_err().code(),
        "unsupported_peft_type"
    );
}

#[test]
fn inspect_errors() {
    let dir = tempfile::tempdir().unwrap();
    let e = inspect_path(&dir.path().join("nope")).unwrap_err();
    assert_eq!(e.code(), "io_error");
    assert!(e.to_string().contains("nope"), "{e}");

    // Directory without a config.
    std::fs::write(
        dir.path().join("adapter_model.safetensors"),
        file(&llama(P, 8)),
    )
    .unwrap();
    let e = inspect_path(dir.path()).unwrap_err();
    assert_eq!(e.code(), "io_error");
    assert!(e.to_string().contains("adapter_config.json"), "{e}");

    // Pickled weights are refused.
    let legacy = tempfile::tempdir().unwrap();
    std::fs::write(legacy.path().join("adapter_model.bin"), b"\x80\x02").unwrap();
    std::fs::write(legacy.path().join("adapter_config.json"), BASIC).unwrap();
    assert_eq!(
        inspect_path(legacy.path()).unwrap_err().code(),
        "unsupported_format"
    );
    assert_eq!(
        inspect_path(&legacy.path().join("adapter_model.bin"))
            .unwrap_err()
            .code(),
        "unsupported_format"
    );

    // A corrupt safetensors file.
    let corrupt = dir.path().join("corrupt.safetensors");
    std::fs::write(&corrupt, [9u8; 4]).unwrap();
    assert_eq!(
        inspect_path(&corrupt).unwrap_err().code(),
        "invalid_safetensors"
    );
}
