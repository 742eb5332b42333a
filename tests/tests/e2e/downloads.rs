use quiver_tests::{Backend, app_or_skip, sha256_hex, synthetic_adapter};
use reqwest::Method;
use reqwest::header::{CONTENT_LENGTH, CONTENT_RANGE, ETAG, IF_NONE_MATCH, RANGE};
use rstest::rstest;

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn downloads_stream_with_etag_range_and_head(#[case] backend: Backend) {
    let app = app_or_skip!(backend);
    app.create_adapter("alice", "a", false, "alice").await;
    let mut files = synthetic_adapter(4, &["q_proj"], 3);
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    files.push(("data/big.bin.txt".into(), big.clone()));
    files.push(("empty.txt".into(), Vec::new()));
    let (status, body) = app.upload("alice/a", "alice", &files).await;
    assert_eq!(status, 201, "{body}");
    let path = "/api/v1/adapters/alice/a/versions/1/files/data/big.bin.txt";
    let etag = format!("\"{}\"", sha256_hex(&big));

    let res = app
        .request(Method::GET, path, "")
        .send()
        .await
        .expect("get");
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()[ETAG].to_str().ok(), Some(etag.as_str()));
    assert_eq!(res.headers()[CONTENT_LENGTH].to_str().ok(), Some("3000000"));
    assert!(res.bytes().await.expect("body").as_ref() == big.as_slice());

    let res = app
        .request(Method::HEAD, path, "")
        .send()
        .await
        .expect("head");
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()[CONTENT_LENGTH].to_str().ok(), Some("3000000"));
    assert_eq!(res.headers()[ETAG].to_str().ok(), Some(etag.as_str()));
    assert!(res.bytes().await.expect("body").is_empty());

    let res = app
        .request(Method::GET, path, "")
        .header(IF_NONE_MATCH, &etag)
        .send()
        .await
        .expect("304");
    assert_eq!(res.status(), 304);
    assert!(res.bytes().await.expect("body").is_empty());

    for (range, start, end) in [
        ("bytes=10-19", 10usize, 20usize),
        ("bytes=2999990-", 2_999_990, 3_000_000),
        ("bytes=-5", 2_999_995, 3_000_000),
    ] {
        let res = app
            .request(Method::GET, path, "")
            .header(RANGE, range)
            .send()
            .await
            .expect("range");
        assert_eq!(res.status(), 206, "{range}");
        assert_eq!(
            res.headers()[CONTENT_RANGE].to_str().ok(),
            Some(format!("bytes {}-{}/3000000", start, end - 1).as_str())
        );
        assert!(
            res.bytes().await.expect("body").as_ref() == &big[start..end],
            "{range}"
        );
    }
    let res = app
        .request(Method::GET, path, "")
        .header(RANGE, "bytes=3000000-")
        .send()
        .await
        .expect("416");
    assert_eq!(res.status(), 416);

    let res = app
        .request(
            Method::GET,
            "/api/v1/adapters/alice/a/versions/1/files/empty.txt",
            "",
        )
        .send()
        .await
        .expect("empty");
    assert_eq!(res.status(), 200);
    assert!(res.bytes().await.expect("body").is_empty());

    let (status, body) = app
        .get_json("/api/v1/adapters/alice/a/versions/1/files/nope.txt", "")
        .await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "file_not_found");

    // Downloads of the weights count.
    let res = app
        .request(
            Method::GET,
            "/api/v1/adapters/alice/a/versions/main/files/adapter_model.safetensors",
            "",
        )
        .send()
        .await
        .expect("w");
    assert_eq!(res.status(), 200);
    let (_, adapter) = app.get_json("/api/v1/adapters/alice/a", "").await;
    assert_eq!(adapter["downloads"], 1);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn identical_files_are_stored_once(#[case] backend: Backend) {
    let app = app_or_skip!(backend);
    app.create_adapter("alice", "a", false, "alice").await;
    app.create_adapter("alice", "b", false, "alice").await;
    let files = synthetic_adapter(4, &["q_proj"], 9);
    assert_eq!(app.upload("alice/a", "alice", &files).await.0, 201);
    assert_eq!(app.upload("alice/b", "alice", &files).await.0, 201);
    assert_eq!(app.upload("alice/a", "alice", &files).await.0, 201);
    app.assert_no_leftovers(3, 2).await;
}
