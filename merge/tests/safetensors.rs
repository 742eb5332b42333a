#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use quiver_merge::safetensors::write;
use quiver_merge::{Dtype, FormatError, MAX_HEADER_LEN, header_len, parse_header};

/// A file with the given raw JSON header (not padded) and data buffer.
fn raw(json: &str, data: &[u8]) -> Vec<u8> {
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(json.as_bytes());
    out.extend_from_slice(data);
    out
}

fn parse(bytes: &[u8]) -> Result<quiver_merge::SafetensorsHeader, FormatError> {
    parse_header(bytes, bytes.len() as u64)
}

/// Asserts an `invalid_safetensors` error whose message contains every fragment.
fn assert_rejects(bytes: &[u8], fragments: &[&str]) {
    let err = parse(bytes).unwrap_err();
    assert_eq!(err.code(), "invalid_safetensors", "{err}");
    let msg = err.to_string();
    for f in fragments {
        assert!(msg.contains(f), "message {msg:?} should contain {f:?}");
    }
}

fn meta(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn round_trip_f32_bf16_scalar_empty_and_metadata() {
    let w: Vec<u8> = (0..16).collect();
    let b: Vec<u8> = vec![0x80, 0x3f, 0x00, 0x40, 0x40, 0x40];
    let alpha = 16.0f32.to_le_bytes();
    let tensors: [(&str, Dtype, &[u64], &[u8]); 4] = [
        ("weight", Dtype::F32, &[2, 2], &w),
        ("bias", Dtype::BF16, &[3], &b),
        ("alpha", Dtype::F32, &[], &alpha),
        ("empty", Dtype::F32, &[0, 4], &[]),
    ];
    let bytes = write(&tensors, &meta(&[("format", "pt"), ("note", "x\"y")]));
    let h = parse(&bytes).unwrap();

    assert_eq!(h.data_start % 8, 0, "data must be 8-byte aligned");
    assert_eq!(h.data_start, 8 + header_len(&bytes).unwrap());
    assert_eq!(h.metadata, meta(&[("format", "pt"), ("note", "x\"y")]));
    let names: Vec<&str> = h.tensors.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["alpha", "bias", "empty", "weight"], "name order");
    for (name, dtype, shape, data) in tensors {
        let t = h.get(name).unwrap();
        assert_eq!(t.dtype, dtype);
        assert_eq!(t.shape, shape);
        let (s, e) = h.absolute_range(t);
        assert_eq!(&bytes[s as usize..e as usize], data, "{name}");
    }
    let alpha_t = h.get("alpha").unwrap();
    assert_eq!(alpha_t.n_elements(), 1, "0-dim tensor has one element");
    assert_eq!(h.get("empty").unwrap().byte_len(), 0);
    // Parsing only the header prefix gives the same result.
    let prefix = &bytes[..h.data_start as usize];
    assert_eq!(parse_header(prefix, bytes.len() as u64).unwrap(), h);
}

#[test]
fn writer_layout_matches_reference_writer() {
    // The layout the reference (Python/Rust safetensors) writer produces for one F32 tensor:
    // __metadata__ first, compact JSON, space padding to a multiple of 8.
    let data = [0u8; 16];
    let bytes = write(
        &[("a", Dtype::F32, &[2, 2], &data)],
        &meta(&[("format", "pt")]),
    );
    let json = r#"{"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}}"#;
    let padded = format!("{json}{}", " ".repeat((8 - json.len() % 8) % 8));
    assert_eq!(bytes, raw(&padded, &data));
}

#[test]
fn empty_file_with_no_tensors_is_valid() {
    let bytes = write(&[], &BTreeMap::new());
    let h = parse(&bytes).unwrap();
    assert!(h.tensors.is_empty());
    assert!(h.metadata.is_empty());
}

#[test]
fn dtype_names_sizes_and_serde() {
    for d in Dtype::ALL {
        assert_eq!(Dtype::from_name(d.as_str()), Some(d));
        assert_eq!(d.as_str().parse::<Dtype>().unwrap(), d);
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(json, format!("\"{}\"", d.as_str()));
        assert_eq!(serde_json::from_str::<Dtype>(&json).unwrap(), d);
    }
    assert_eq!(Dtype::BF16.size_bytes(), 2);
    assert_eq!(Dtype::F8E4M3.as_str(), "F8_E4M3");
    assert_eq!(Dtype::Bool.as_str(), "BOOL");
    assert_eq!(Dtype::F64.size_bytes(), 8);
    assert!(Dtype::from_name("f32").is_none());
}

#[test]
fn rejects_truncated_file() {
    assert_rejects(&[1, 2, 3], &["shorter than the 8-byte header length"]);
    assert!(header_len(&[0; 7]).is_err());
    assert_rejects(&[], &["shorter"]);
}

#[test]
fn rejects_header_length_beyond_file() {
    let mut bytes = 100u64.to_le_bytes().to_vec();
    bytes.extend_from_slice(b"{}");
    assert_rejects(&bytes, &["header length 100", "past the end of the file"]);
}

#[test]
fn rejects_header_larger_than_max() {
    let first8 = (MAX_HEADER_LEN + 1).to_le_bytes();
    let err = header_len(&first8).unwrap_err();
    assert!(err.to_string().contains("exceeds the maximum"), "{err}");
    assert_eq!(
        header_len(&MAX_HEADER_LEN.to_le_bytes()).unwrap(),
        MAX_HEADER_LEN
    );
    assert!(parse_header(&first8, u64::MAX).is_err());
    assert!(parse_header(&u64::MAX.to_le_bytes(), u64::MAX).is_err());
}

#[test]
fn rejects_short_prefix() {
    let bytes = raw(
        r#"{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}"#,
        &[7],
    );
    let err = parse_header(&bytes[..20], bytes.len() as u64).unwrap_err();
    assert!(err.to_string().contains("header needs"), "{err}");
}

#[test]
fn rejects_non_utf8() {
    let mut bytes = raw("{\"a\":1}", &[]);
    bytes[10] = 0xff;
    assert_rejects(&bytes, &["not valid UTF-8"]);
}

#[test]
fn rejects_non_object_json() {
    assert_rejects(&raw("[1, 2]", &[]), &["must be an object"]);
    assert_rejects(&raw("42", &[]), &["must be an object"]);
    assert_rejects(&raw("", &[]), &["empty header"]);
    assert_rejects(&raw("{\"a\":", &[]), &["malformed"]);
    assert_rejects(&raw("{} x", &[]), &["malformed"]);
}

#[test]
fn accepts_space_padding() {
    let h = parse(&raw("{}      ", &[])).unwrap();
    assert_eq!(h.data_start, 16);
}

#[test]
fn rejects_bad_metadata() {
    assert_rejects(
        &raw(r#"{"__metadata__":{"format":1}}"#, &[]),
        &["__metadata__", "strings to strings"],
    );
    assert_rejects(&raw(r#"{"__metadata__":"pt"}"#, &[]), &["__metadata__"]);
    assert_rejects(&raw(r#"{"__metadata__":null}"#, &[]), &["__metadata__"]);
    assert_rejects(
        &raw(r#"{"__metadata__":{"a":"1","a":"2"}}"#, &[]),
        &["metadata key \"a\"", "more than once"],
    );
    assert_rejects(
        &raw(r#"{"__metadata__":{},"__metadata__":{}}"#, &[]),
        &["__metadata__", "more than once"],
    );
}

#[test]
fn rejects_overlapping_offsets() {
    let json = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#;
    assert_rejects(&raw(json, &[0; 12]), &["\"b\"", "overlap", "\"a\""]);
}

#[test]
fn rejects_same_range_twice() {
    let json = r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
    assert_rejects(&raw(json, &[0; 4]), &["overlap"]);
}

#[test]
fn rejects_gapped_offsets() {
    let json = r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}"#;
    assert_rejects(&raw(json, &[0; 12]), &["\"b\"", "gap of 4"]);
    // A gap at the very start.
    let json = r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#;
    assert_rejects(&raw(json, &[0; 8]), &["\"a\"", "gap"]);
}

#[test]
fn rejects_data_not_ending_at_eof() {
    let json = r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
    assert_rejects(&raw(json, &[0; 8]), &["cover 4 bytes", "8 bytes"]);
    assert_rejects(&raw(json, &[0; 2]), &["\"a\"", "past the end"]);
}

#[test]
fn rejects_length_mismatch() {
    let json = r#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}"#;
    assert_rejects(&raw(json, &[0; 4]), &["\"w\"", "needs 8 bytes"]);
    let json = r#"{"w":{"dtype":"BF16","shape":[2,3],"data_offsets":[0,6]}}"#;
    assert_rejects(&raw(json, &[0; 6]), &["\"w\"", "needs 12 bytes"]);
}

#[test]
fn rejects_shape_product_overflow() {
    let json = format!(
        r#"{{"w":{{"dtype":"U8","shape":[{},2],"data_offsets":[0,0]}}}}"#,
        u64::MAX
    );
    assert_rejects(&raw(&json, &[]), &["\"w\"", "overflows"]);
    // Product fits but times the dtype size overflows.
    let json = format!(
        r#"{{"w":{{"dtype":"F32","shape":[{}],"data_offsets":[0,0]}}}}"#,
        u64::MAX / 2
    );
    assert_rejects(&raw(&json, &[]), &["overflows"]);
    // A zero dimension makes any other dimension harmless.
    let json = format!(
        r#"{{"w":{{"dtype":"F32","shape":[0,{}],"data_offsets":[0,0]}}}}"#,
        u64::MAX
    );
    assert!(parse(&raw(&json, &[])).is_ok());
}

#[test]
fn rejects_begin_after_end() {
    let json = r#"{"w":{"dtype":"U8","shape":[4],"data_offsets":[8,4]}}"#;
    assert_rejects(&raw(json, &[0; 8]), &["\"w\"", "begin is after its end"]);
}

#[test]
fn rejects_duplicate_tensor_names() {
    let json = r#"{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}"#;
    assert_rejects(&raw(json, &[0; 2]), &["\"a\"", "more than once"]);
}

#[test]
fn rejects_unknown_dtype() {
    let json = r#"{"w":{"dtype":"F4","shape":[2],"data_offsets":[0,1]}}"#;
    assert_rejects(&raw(json, &[0]), &["\"w\"", "unknown dtype \"F4\""]);
    let json = r#"{"w":{"dtype":"f32","shape":[1],"data_offsets":[0,4]}}"#;
    assert_rejects(&raw(json, &[0; 4]), &["unknown dtype"]);
}

#[test]
fn rejects_malformed_tensor_entries() {
    let cases = [
        r#"{"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1],"extra":1}}"#,
        r#"{"w":{"dtype":"U8","shape":[1]}}"#,
        r#"{"w":{"dtype":"U8","shape":[-1],"data_offsets":[0,1]}}"#,
        r#"{"w":{"dtype":"U8","shape":[1.5],"data_offsets":[0,1]}}"#,
        r#"{"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1,2]}}"#,
        r#"{"w":{"dtype":"U8","shape":[1],"data_offsets":[0]}}"#,
        r#"{"w":{"dtype":"U8","shape":1,"data_offsets":[0,1]}}"#,
        r#"{"w":{"dtype":8,"shape":[1],"data_offsets":[0,1]}}"#,
        r#"{"w":{"dtype":"U8","dtype":"U8","shape":[1],"data_offsets":[0,1]}}"#,
        r#"{"w":[1]}"#,
        r#"{"w":null}"#,
    ];
    for json in cases {
        let err = parse(&raw(json, &[0])).unwrap_err();
        assert_eq!(err.code(), "invalid_safetensors");
        assert!(err.to_string().contains("tensor \"w\""), "{json}: {err}");
    }
}

#[test]
fn zero_size_tensors_may_share_an_offset() {
    let json = r#"{"a":{"dtype":"F32","shape":[0],"data_offsets":[4,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"c":{"dtype":"F32","shape":[0],"data_offsets":[4,4]},"d":{"dtype":"U8","shape":[2],"data_offsets":[4,6]}}"#;
    let h = parse(&raw(json, &[0; 6])).unwrap();
    assert_eq!(h.tensors.len(), 4);
}

#[test]
fn rejects_prefix_longer_than_file() {
    let bytes = write(&[("a", Dtype::U8, &[1], &[1])], &BTreeMap::new());
    assert!(parse_header(&bytes, bytes.len() as u64 - 1).is_err());
}

#[test]
fn read_header_reads_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.safetensors");
    let bytes = write(&[("a", Dtype::F32, &[2], &[0; 8])], &BTreeMap::new());
    std::fs::write(&path, &bytes).unwrap();
    let (h, len) = quiver_merge::read_header(&path).unwrap();
    assert_eq!(len, bytes.len() as u64);
    assert_eq!(h.tensors[0].name, "a");

    std::fs::write(&path, [1u8, 2]).unwrap();
    assert_eq!(
        quiver_merge::read_header(&path).unwrap_err().code(),
        "invalid_safetensors"
    );
    let mut huge = 1_000_000u64.to_le_bytes().to_vec();
    huge.extend_from_slice(b"{}");
    std::fs::write(&path, &huge).unwrap();
    assert!(quiver_merge::read_header(&path).is_err());

    let err = quiver_merge::read_header(&dir.path().join("missing.safetensors")).unwrap_err();
    assert_eq!(err.code(), "io_error");
    assert!(err.to_string().contains("missing.safetensors"), "{err}");
}
