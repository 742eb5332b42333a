//! Every bad upload gets a 4xx JSON error and leaves nothing behind: no version, no rows, no blob.

use std::collections::BTreeMap;

use quiver_merge::Dtype;
use quiver_tests::{
    Backend, Files, app_or_skip, f32_bytes, peft_fixtures, sha256_hex, spawn_app_with_limit,
    synthetic_adapter,
};
use rstest::rstest;

fn replace(files: &[(String, Vec<u8>)], path: &str, bytes: Vec<u8>) -> Files {
    files
        .iter()
        .map(|(p, b)| (p.clone(), if p == path { bytes.clone() } else { b.clone() }))
        .collect()
}

fn weights(tensors: &[(&str, Dtype, Vec<u64>, Vec<u8>)]) -> Vec<u8> {
    let t: Vec<(&str, Dtype, &[u64], &[u8])> = tensors
        .iter()
        .map(|(n, d, s, b)| (*n, *d, s.as_slice(), b.as_slice()))
        .collect();
    quiver_merge::write_safetensors(&t, &BTreeMap::new())
}

const A: &str = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight";
const B: &str = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight";

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn bad_uploads_are_refused_and_leave_nothing(#[case] backend: Backend) {
    let app = app_or_skip!(backend);
    app.create_adapter("alice", "a", false, "alice").await;
    let good = synthetic_adapter(4, &["q_proj"], 7);
    let config = good[0].1.clone();
    let st = good[1].1.clone();
    let mut overlapping = st.clone();
    // Point the second tensor's offsets into the first one's range.
    let header = String::from_utf8_lossy(&overlapping[8..]).to_string();
    let n = u64::from_le_bytes(overlapping[..8].try_into().expect("8 bytes")) as usize;
    let patched = header[..n].replacen("[256,512]", "[128,384]", 1);
    overlapping.splice(8..8 + n, patched.into_bytes());

    let cases: Vec<(&str, Files, u16, &str)> = vec![
        ("missing config", vec![good[1].clone()], 422, "missing_file"),
        (
            "missing weights",
            vec![good[0].clone()],
            422,
            "missing_file",
        ),
        (
            "config not json",
            replace(&good, "adapter_config.json", b"{not json".to_vec()),
            422,
            "invalid_adapter_config",
        ),
        (
            "config not object",
            replace(&good, "adapter_config.json", b"[1,2]".to_vec()),
            422,
            "invalid_adapter_config",
        ),
        (
            "wrong peft type",
            replace(
                &good,
                "adapter_config.json",
                br#"{"peft_type":"LOHA","r":4}"#.to_vec(),
            ),
            422,
            "unsupported_peft_type",
        ),
        (
            "truncated weights",
            replace(
                &good,
                "adapter_model.safetensors",
                st[..st.len() - 10].to_vec(),
            ),
            422,
            "invalid_safetensors",
        ),
        (
            "tiny weights",
            replace(&good, "adapter_model.safetensors", vec![1, 2, 3]),
            422,
            "invalid_safetensors",
        ),
        (
            "header beyond file",
            replace(
                &good,
                "adapter_model.safetensors",
                [u64::MAX / 2]
                    .iter()
                    .flat_map(|n| n.to_le_bytes())
                    .chain(*b"{}")
                    .collect(),
            ),
            422,
            "invalid_safetensors",
        ),
        (
            "overlapping offsets",
            replace(&good, "adapter_model.safetensors", overlapping),
            422,
            "invalid_safetensors",
        ),
        (
            "missing lora_B",
            replace(
                &good,
                "adapter_model.safetensors",
                weights(&[(A, Dtype::F32, vec![4, 16], f32_bytes(vec![0.1; 64]))]),
            ),
            422,
            "invalid_adapter",
        ),
        (
            "rank disagrees with config",
            replace(
                &good,
                "adapter_model.safetensors",
                weights(&[
                    (A, Dtype::F32, vec![8, 16], f32_bytes(vec![0.1; 128])),
                    (B, Dtype::F32, vec![16, 8], f32_bytes(vec![0.1; 128])),
                ]),
            ),
            422,
            "adapter_mismatch",
        ),
        (
            "byte length differs from shape",
            replace(
                &good,
                "adapter_model.safetensors",
                weights(&[
                    (A, Dtype::F32, vec![4, 16], f32_bytes(vec![0.1; 60])),
                    (B, Dtype::F32, vec![16, 4], f32_bytes(vec![0.1; 64])),
                ]),
            ),
            422,
            "invalid_safetensors",
        ),
        (
            "pickle file",
            [
                good.clone(),
                vec![("pytorch_model.bin".into(), vec![0x80, 4])],
            ]
            .concat(),
            422,
            "pickle_not_allowed",
        ),
        (
            "parent path",
            [good.clone(), vec![("../escape.txt".into(), b"x".to_vec())]].concat(),
            422,
            "invalid_file_path",
        ),
        (
            "absolute path",
            [good.clone(), vec![("/etc/x".into(), b"x".to_vec())]].concat(),
            422,
            "invalid_file_path",
        ),
        (
            "control char",
            [good.clone(), vec![("a\tb".into(), b"x".to_vec())]].concat(),
            422,
            "invalid_file_path",
        ),
        (
            "duplicate file",
            [good.clone(), vec![good[0].clone()]].concat(),
            400,
            "duplicate_file",
        ),
    ];
    for (what, files, status, code) in cases {
        let (got, body) = app.upload("alice/a", "alice", &files).await;
        assert_eq!(got, status, "{what}: {body}");
        assert_eq!(body["error"]["code"], code, "{what}: {body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{what}"
        );
        app.assert_no_leftovers(0, 0).await;
    }
    let _ = (config, st);

    // Not multipart at all.
    let (status, body) = app
        .send(
            app.request(
                reqwest::Method::POST,
                "/api/v1/adapters/alice/a/versions",
                "alice",
            )
            .body("hello"),
        )
        .await;
    assert_eq!(status, 415, "{body}");
    assert_eq!(body["error"]["code"], "unsupported_media_type");
    app.assert_no_leftovers(0, 0).await;

    // A good upload after all that gets number 1.
    let (status, body) = app.upload("alice/a", "alice", &good).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["number"], 1);
    app.assert_no_leftovers(1, 2).await;
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn uploads_over_the_limit_get_413_and_leave_nothing(#[case] backend: Backend) {
    let Some(app) = spawn_app_with_limit(backend, 20_000).await else {
        return;
    };
    app.create_adapter("alice", "a", false, "alice").await;
    let mut files = synthetic_adapter(4, &["q_proj"], 1);
    files.push(("big.txt".into(), vec![b'x'; 50_000]));
    let (status, body) = app.upload("alice/a", "alice", &files).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"]["code"], "payload_too_large");
    app.assert_no_leftovers(0, 0).await;

    // Chunked (no Content-Length): the limit is enforced while streaming.
    let stream = futures::stream::iter((0..40).map(|_| Ok::<_, std::io::Error>(vec![b'y'; 1000])));
    let part = reqwest::multipart::Part::stream(reqwest::Body::wrap_stream(stream))
        .file_name("big.bin.txt");
    let mut form = reqwest::multipart::Form::new();
    for (p, b) in synthetic_adapter(4, &["q_proj"], 1) {
        form = form.part("file", reqwest::multipart::Part::bytes(b).file_name(p));
    }
    let (status, body) = app
        .send(
            app.request(
                reqwest::Method::POST,
                "/api/v1/adapters/alice/a/versions",
                "alice",
            )
            .multipart(form.part("file", part)),
        )
        .await;
    assert_eq!(status, 413, "{body}");
    app.assert_no_leftovers(0, 0).await;
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn real_peft_adapters_round_trip_byte_identical(#[case] backend: Backend) {
    let app = app_or_skip!(backend);
    let fixtures = peft_fixtures();
    assert!(
        !fixtures.is_empty(),
        "tests/fixtures/peft holds the real PEFT adapters"
    );
    for (name, files) in fixtures {
        let repo_name = name.replace('_', "-");
        assert_eq!(
            app.create_adapter("alice", &repo_name, false, "alice")
                .await
                .0,
            201
        );
        let (status, version) = app
            .upload(&format!("alice/{repo_name}"), "alice", &files)
            .await;
        assert_eq!(status, 201, "{name}: {version}");
        assert_eq!(version["lora"]["peft_type"], "LORA");
        for (path, bytes) in &files {
            let listed = version["files"]
                .as_array()
                .expect("files")
                .iter()
                .find(|f| f["path"] == path.as_str())
                .expect("listed");
            assert_eq!(listed["sha256"], sha256_hex(bytes), "{name}/{path}");
            let res = app
                .request(
                    reqwest::Method::GET,
                    &format!("/api/v1/adapters/alice/{repo_name}/versions/main/files/{path}"),
                    "",
                )
                .send()
                .await
                .expect("download");
            assert_eq!(res.status(), 200);
            let got = res.bytes().await.expect("bytes");
            assert!(
                got.as_ref() == bytes.as_slice(),
                "{name}/{path} differs after the round trip"
            );
        }
    }
}
