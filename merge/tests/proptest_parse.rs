//! Robustness: the parsers never panic, whatever the bytes.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use proptest::prelude::*;
use quiver_merge::summary::infer_config;
use quiver_merge::{AdapterConfig, Dtype, parse_header, summarize, write_safetensors};

/// Parses and, when that succeeds, also runs the summary code on the result.
fn exercise(bytes: &[u8], file_len: u64) {
    if let Ok(h) = parse_header(bytes, file_len) {
        let _ = summarize(&AdapterConfig::default(), &h, file_len);
        let _ = summarize(&infer_config(&h), &h, file_len);
    }
}

fn dtype() -> impl Strategy<Value = Dtype> {
    prop::sample::select(Dtype::ALL.to_vec())
}

/// A valid file: tensors with small shapes, LoRA-ish or arbitrary names.
fn valid_file() -> impl Strategy<Value = Vec<u8>> {
    let name = prop_oneof![
        "[a-z]{1,6}",
        "(base_model\\.model\\.)?m\\.[0-3]\\.(q|v)_proj\\.lora_(A|B)\\.weight",
    ];
    let tensor = (dtype(), prop::collection::vec(0u64..5, 0..4));
    (
        prop::collection::btree_map(any::<String>(), any::<String>(), 0..3),
        prop::collection::btree_map(name, tensor, 0..6),
    )
        .prop_map(|(meta, tensors)| {
            let owned: Vec<(String, Dtype, Vec<u64>, Vec<u8>)> = tensors
                .into_iter()
                .map(|(n, (d, s))| {
                    let len = s.iter().product::<u64>() * d.size_bytes();
                    (n, d, s, vec![0xA5; len as usize])
                })
                .collect();
            let refs: Vec<(&str, Dtype, &[u64], &[u8])> = owned
                .iter()
                .map(|(n, d, s, b)| (n.as_str(), *d, s.as_slice(), b.as_slice()))
                .collect();
            write_safetensors(&refs, &meta)
        })
}

/// Numbers that stress the size arithmetic.
fn edgy_u64() -> impl Strategy<Value = u64> {
    prop_oneof![
        0u64..20,
        Just(u64::MAX),
        Just(u64::MAX / 2),
        Just(u64::MAX / 4 + 1),
        Just(1u64 << 32),
        any::<u64>(),
    ]
}

/// Header JSON made of plausible, implausible and hostile entries.
fn header_json() -> impl Strategy<Value = String> {
    let dtype_name = prop_oneof![
        dtype().prop_map(|d| d.as_str().to_string()),
        Just("F4".to_string()),
        "[A-Z0-9_]{0,6}",
    ];
    let entry = (
        prop_oneof![Just("__metadata__".to_string()), "[ab]", "\\PC{0,4}"],
        dtype_name,
        prop::collection::vec(edgy_u64(), 0..4),
        (edgy_u64(), edgy_u64()),
        prop_oneof![
            Just(""),
            Just(",\"x\":1"),
            Just(",\"shape\":[1]"),
            Just("]"),
            Just("{")
        ],
    )
        .prop_map(|(name, d, shape, (b, e), extra)| {
            let shape: Vec<String> = shape.iter().map(u64::to_string).collect();
            format!(
                "{}:{{\"dtype\":\"{d}\",\"shape\":[{}],\"data_offsets\":[{b},{e}]{extra}}}",
                serde_json::Value::String(name),
                shape.join(",")
            )
        });
    let meta = prop_oneof![
        Just("\"__metadata__\":{\"format\":\"pt\"}".to_string()),
        Just("\"__metadata__\":{\"format\":1}".to_string()),
        Just("\"__metadata__\":[]".to_string()),
    ];
    prop_oneof![
        4 => (prop::collection::vec(prop_oneof![4 => entry, 1 => meta], 0..5), " {0,9}")
            .prop_map(|(entries, pad)| format!("{{{}}}{pad}", entries.join(","))),
        1 => "\\PC{0,40}",
        1 => "[\\[\\]{}\":,0-9a-z ]{0,60}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200), len in edgy_u64(), exact in any::<bool>()) {
        let file_len = if exact { bytes.len() as u64 } else { len };
        exercise(&bytes, file_len);
        let _ = quiver_merge::header_len(&bytes);
        let _ = AdapterConfig::from_json(&bytes);
    }

    #[test]
    fn arbitrary_header_json_never_panics(json in header_json(), data_len in 0usize..64, file_len in edgy_u64(), exact in any::<bool>()) {
        let mut bytes = (json.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(json.as_bytes());
        bytes.extend(std::iter::repeat_n(0u8, data_len));
        let file_len = if exact { bytes.len() as u64 } else { file_len };
        exercise(&bytes, file_len);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn valid_files_round_trip(bytes in valid_file()) {
        let h = parse_header(&bytes, bytes.len() as u64).unwrap();
        prop_assert_eq!(h.data_start % 8, 0);
        let names: Vec<&str> = h.tensors.iter().map(|t| t.name.as_str()).collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        prop_assert_eq!(names, sorted);
        for t in &h.tensors {
            let (s, e) = h.absolute_range(t);
            prop_assert!(bytes[s as usize..e as usize].iter().all(|&b| b == 0xA5));
        }
        exercise(&bytes, bytes.len() as u64);
    }

    #[test]
    fn mutated_valid_files_never_panic(
        bytes in valid_file(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
        truncate in prop::option::of(any::<prop::sample::Index>()),
        lie in prop::option::of(edgy_u64()),
    ) {
        let mut bytes = bytes;
        for (i, x) in flips {
            let i = i.index(bytes.len());
            bytes[i] ^= x;
        }
        if let Some(t) = truncate {
            bytes.truncate(t.index(bytes.len() + 1));
        }
        let file_len = lie.unwrap_or(bytes.len() as u64);
        exercise(&bytes, file_len);
    }

    #[test]
    fn arbitrary_config_json_never_panics(json in prop_oneof![
        "\\PC{0,80}",
        ("(LORA|LOHA)", "[-0-9.e]{1,6}", "[-0-9.e]{1,6}", "[a-z_|().*\\\\]{0,8}", "[-0-9.e]{1,4}").prop_map(
            |(t, r, a, k, v)| format!(
                r#"{{"peft_type":"{t}","r":{r},"lora_alpha":{a},"rank_pattern":{{"{k}":{v}}},"alpha_pattern":{{"{k}":{v}}}}}"#
            )
        ),
    ]) {
        if let Ok(c) = AdapterConfig::from_json(json.as_bytes()) {
            let _ = c.scale_for("model.layers.0.self_attn.q_proj");
        }
    }
}

#[test]
fn empty_metadata_map_round_trips() {
    let bytes = write_safetensors(&[], &BTreeMap::new());
    assert!(parse_header(&bytes, bytes.len() as u64).is_ok());
}
