//! Merge and compression jobs through the API: every method against the CLI's bytes, bad specs,
//! idempotency, cancel, privacy, lineage.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use quiver_api::cli::{Cli, Command};
use quiver_tests::{
    Backend, TestApp, app_or_skip, assert_error, sized_adapter, spawn_app_with_workers,
    synthetic_adapter,
};
use reqwest::Method;
use rstest::rstest;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(180);
const MODULES: [&str; 4] = ["q_proj", "k_proj", "v_proj", "o_proj"];

/// alice/a, alice/b, alice/c: three small adapters of one base model.
async fn seed(app: &TestApp) {
    for (i, name) in ["a", "b", "c"].into_iter().enumerate() {
        app.adapter_with(
            &format!("alice/{name}"),
            &synthetic_adapter(4, &MODULES, i as u32 + 1),
        )
        .await;
    }
}

/// Writes the adapter files of `repo@main` into `dir/<name>`.
async fn stage(app: &TestApp, dir: &Path, repo: &str, name: &str) -> PathBuf {
    let out = dir.join(name);
    std::fs::create_dir_all(&out).expect("dir");
    let (_, v) = app
        .get_json(&format!("/api/v1/adapters/{repo}/versions/main"), "alice")
        .await;
    for f in v["files"].as_array().expect("files") {
        let path = f["path"].as_str().expect("path");
        let bytes = app.download(repo, "main", path, "alice").await;
        std::fs::write(out.join(path), bytes).expect("write");
    }
    out
}

/// Runs `quiver <args>` in-process, the way the CLI does.
async fn cli(args: Vec<String>) {
    let cli = Cli::try_parse_from(std::iter::once("quiver".to_string()).chain(args.clone()))
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    tokio::task::spawn_blocking(move || match cli.command {
        Command::Merge(a) => quiver_api::cli::merge::run(a).map_err(|e| e.to_string()),
        Command::Compress(a) => quiver_api::cli::compress::run(a).map_err(|e| e.to_string()),
        _ => Err("not a merge or compress command".into()),
    })
    .await
    .expect("cli task")
    .unwrap_or_else(|e| panic!("{args:?}: {e}"));
}

/// Drops timing and memory fields, which differ between two runs of the same merge; the peak
/// memory must be there and positive.
fn without_timings(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.remove("seconds");
            if let Some(peak) = m.remove("peak_rss_bytes") {
                assert!(
                    peak.as_u64().is_some_and(|b| b > 0),
                    "peak_rss_bytes: {peak}"
                );
            }
            m.values_mut().for_each(without_timings);
        }
        Value::Array(a) => a.iter_mut().for_each(without_timings),
        _ => {}
    }
}

/// Asserts the version's files are the CLI output's, byte for byte (reports: but for timings).
async fn assert_same_as_cli(app: &TestApp, repo: &str, version: i64, cli_out: &Path) {
    let (_, v) = app
        .get_json(
            &format!("/api/v1/adapters/{repo}/versions/{version}"),
            "alice",
        )
        .await;
    let mut published: Vec<String> = v["files"]
        .as_array()
        .expect("files")
        .iter()
        .map(|f| f["path"].as_str().expect("path").to_string())
        .collect();
    published.sort();
    let mut local: Vec<String> = std::fs::read_dir(cli_out)
        .expect("cli out")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    local.sort();
    assert_eq!(
        published, local,
        "{repo}@{version}: the same files as the CLI's"
    );
    for path in &local {
        let api = app
            .download(repo, &version.to_string(), path, "alice")
            .await;
        let cli = std::fs::read(cli_out.join(path)).expect("cli file");
        if path.ends_with("_report.json") {
            let (mut a, mut c): (Value, Value) = (
                serde_json::from_slice(&api).expect("json"),
                serde_json::from_slice(&cli).expect("json"),
            );
            without_timings(&mut a);
            without_timings(&mut c);
            assert_eq!(a, c, "{repo}@{version}/{path}");
        } else {
            assert!(
                api == cli,
                "{repo}@{version}/{path} differs from the CLI's output"
            );
        }
    }
}

async fn run_job(app: &TestApp, route: &str, body: &Value) -> Value {
    let (status, job) = app.post_json(route, "alice", body).await;
    assert_eq!(status, 202, "{body} → {job}");
    assert_eq!(job["state"], "queued");
    let job = app
        .wait_job(job["id"].as_str().expect("id"), "alice", WAIT)
        .await;
    assert_eq!(job["state"], "succeeded", "{job}");
    job
}

fn inputs(names: &[&str]) -> Value {
    Value::Array(
        names
            .iter()
            .map(|n| json!({"adapter": format!("alice/{n}")}))
            .collect(),
    )
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_merge_method_publishes_the_clis_bytes(#[case] backend: Backend) {
    let app = app_or_skip!(backend);
    seed(&app).await;
    let tmp = tempfile::tempdir().expect("tmp");
    let mut dirs: Vec<PathBuf> = Vec::new();
    for n in ["a", "b", "c"] {
        dirs.push(stage(&app, tmp.path(), &format!("alice/{n}"), n).await);
    }
    let d = |n: usize| {
        dirs[..n]
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
    };
    // (JSON spec, the same as CLI flags, number of inputs)
    let cases: Vec<(Value, Vec<&str>, usize)> = vec![
        (json!({"method": "cat"}), vec!["--method", "cat"], 3),
        (
            json!({"method": "linear", "rank": 3, "weights": [1.0, -0.5, 0.25]}),
            vec![
                "--method",
                "linear",
                "--rank",
                "3",
                "--weights",
                "1,-0.5,0.25",
            ],
            3,
        ),
        (
            json!({"method": "svd", "rank": 4, "dtype": "bf16"}),
            vec!["--method", "svd", "--rank", "4", "--dtype", "bf16"],
            2,
        ),
        (
            json!({"method": "ties", "density": 0.5, "rank": 4, "lambda": 1.2}),
            vec![
                "--method",
                "ties",
                "--density",
                "0.5",
                "--rank",
                "4",
                "--lambda",
                "1.2",
            ],
            3,
        ),
        (
            json!({"method": "dare_linear", "density": 0.5, "seed": 7}),
            vec!["--method", "dare_linear", "--density", "0.5", "--seed", "7"],
            2,
        ),
        (
            json!({"method": "dare_ties", "density": 0.6, "seed": 3, "majority_sign": "frequency", "svd": "exact"}),
            vec![
                "--method",
                "dare_ties",
                "--density",
                "0.6",
                "--seed",
                "3",
                "--majority-sign",
                "frequency",
                "--svd",
                "exact",
            ],
            3,
        ),
        (
            json!({"method": "magnitude_prune", "density": 0.4, "trim_scope": "global"}),
            vec![
                "--method",
                "magnitude_prune",
                "--density",
                "0.4",
                "--trim-scope",
                "global",
            ],
            2,
        ),
        (
            json!({"method": "lora_lego", "k": 4, "seed": 1, "iters": 10, "output_reweight": false}),
            vec![
                "--method",
                "lora_lego",
                "--k",
                "4",
                "--seed",
                "1",
                "--iters",
                "10",
                "--no-output-reweight",
            ],
            3,
        ),
        (
            json!({"method": "ziplora", "steps": 20, "lr": 0.02, "lambda_sim": 0.05, "seed": 2}),
            vec![
                "--method",
                "ziplora",
                "--steps",
                "20",
                "--lr",
                "0.02",
                "--lambda-sim",
                "0.05",
                "--seed",
                "2",
            ],
            2,
        ),
        (
            json!({"method": "ties_svd", "compat": "peft", "density": 0.5}),
            vec![
                "--method",
                "ties_svd",
                "--compat",
                "peft",
                "--density",
                "0.5",
            ],
            3,
        ),
    ];
    for (i, (spec, flags, n)) in cases.into_iter().enumerate() {
        let out = format!("m{i}");
        let mut body = spec.clone();
        body["inputs"] = inputs(&["a", "b", "c"][..n]);
        body["output"] = json!({"adapter": format!("alice/{out}"), "create": true});
        let job = run_job(&app, "/api/v1/merges", &body).await;
        assert_eq!(job["result"]["adapter"], format!("alice/{out}"), "{job}");
        assert_eq!(job["result"]["version"], 1);
        assert_eq!(job["progress"]["done"], job["progress"]["total"], "{job}");
        assert!(job["report"]["modules"].is_array(), "{job}");

        let cli_out = tmp.path().join(format!("cli-{out}"));
        let mut args: Vec<String> = vec!["merge".into()];
        args.extend(flags.iter().map(|s| s.to_string()));
        args.extend(["--out".to_string(), cli_out.display().to_string()]);
        args.extend(d(n));
        cli(args).await;
        assert_same_as_cli(&app, &format!("alice/{out}"), 1, &cli_out).await;

        // Lineage on the version: parents pinned to revisions, method, params, seed, the job.
        let (_, v) = app
            .get_json(&format!("/api/v1/adapters/alice/{out}/versions/1"), "alice")
            .await;
        let lineage = &v["lineage"];
        assert_eq!(lineage["parents"].as_array().map(Vec::len), Some(n), "{v}");
        assert_eq!(lineage["parents"][0]["adapter"], "alice/a");
        assert_eq!(lineage["job"], job["id"]);
        assert_eq!(
            lineage["seed"],
            spec.get("seed").cloned().unwrap_or(json!(0))
        );
        assert!(v["lora"]["r"].as_u64().is_some(), "{v}");
    }

    // Lineage graph and derived_from.
    let (status, g) = app
        .get_json("/api/v1/adapters/alice/a/versions/main/lineage", "")
        .await;
    assert_eq!(status, 200, "{g}");
    assert_eq!(g["root"], "alice/a@1");
    assert_eq!(g["nodes"].as_array().map(Vec::len), Some(11), "{g}");
    assert!(
        g["edges"]
            .as_array()
            .expect("edges")
            .contains(&json!({"from": "alice/a@1", "to": "alice/m0@1"}))
    );
    let (_, listed) = app
        .get_json("/api/v1/adapters?derived_from=alice/c&limit=500", "")
        .await;
    let mut names: Vec<&str> = listed["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|a| a["name"].as_str().expect("name"))
        .collect();
    names.sort();
    assert_eq!(names, ["m0", "m1", "m3", "m5", "m7", "m9"]);
    let (status, _) = app
        .get_json("/api/v1/adapters?derived_from=nonsense", "")
        .await;
    assert_eq!(status, 400);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn compressions_publish_the_clis_bytes(#[case] backend: Backend) {
    let app = app_or_skip!(backend);
    seed(&app).await;
    let tmp = tempfile::tempdir().expect("tmp");
    let mut dirs = Vec::new();
    for n in ["a", "b", "c"] {
        let dir = stage(&app, tmp.path(), &format!("alice/{n}"), n).await;
        dirs.push(dir.display().to_string());
    }
    let out = |n: &str| tmp.path().join(format!("cli-{n}")).display().to_string();
    // (spec, input adapters, output, the same as CLI flags); `{coll}` is the CLI's collection.
    let cases: Vec<(Value, Vec<&str>, &str, Vec<String>)> = vec![
        (
            json!({"mode": "individual", "rank": 2}),
            vec!["a"],
            "a-r2",
            vec![
                "--mode".into(),
                "individual".into(),
                "--rank".into(),
                "2".into(),
                dirs[0].clone(),
            ],
        ),
        (
            json!({"mode": "individual", "energy": 0.9}),
            vec!["b"],
            "b-e",
            vec![
                "--mode".into(),
                "individual".into(),
                "--energy".into(),
                "0.9".into(),
                dirs[1].clone(),
            ],
        ),
        (
            json!({"mode": "joint", "rank": 4, "clusters": 2, "seed": 5}),
            vec!["a", "b", "c"],
            "coll",
            [
                "--mode",
                "joint",
                "--rank",
                "4",
                "--clusters",
                "2",
                "--seed",
                "5",
            ]
            .map(String::from)
            .into_iter()
            .chain(dirs.clone())
            .collect(),
        ),
        (
            json!({"mode": "extract", "member": "b"}),
            vec!["coll"],
            "b-back",
            vec!["--extract".into(), "b".into(), "--from".into(), out("coll")],
        ),
    ];
    for (mut body, ins, output, flags) in cases {
        body["inputs"] = inputs(&ins);
        body["output"] = json!({"adapter": format!("alice/{output}"), "create": true});
        let job = run_job(&app, "/api/v1/compressions", &body).await;
        if output == "coll" {
            assert!(job["report"]["bytes_after"].as_u64().is_some(), "{job}");
            let (_, v) = app
                .get_json("/api/v1/adapters/alice/coll/versions/1", "alice")
                .await;
            assert_eq!(v["lora"]["kind"], "collection", "{v}");
            assert_eq!(v["lora"]["members"], json!(["a", "b", "c"]));
            // A collection is not a merge input; extract gives a member back.
            let (status, e) = app.post_json("/api/v1/merges", "alice", &json!({"method": "cat",
                "inputs": [{"adapter": "alice/coll"}], "output": {"adapter": "alice/x", "create": true}})).await;
            assert_error(
                status,
                &e,
                (422, "incompatible_inputs"),
                "a collection as a merge input",
            );
        }
        let mut args = vec!["compress".to_string(), "--out".into(), out(output)];
        args.extend(flags);
        cli(args).await;
        assert_same_as_cli(&app, &format!("alice/{output}"), 1, Path::new(&out(output))).await;
    }
    let (_, g) = app
        .get_json("/api/v1/adapters/alice/b-back/versions/1/lineage", "alice")
        .await;
    assert_eq!(
        g["nodes"].as_array().map(Vec::len),
        Some(5),
        "b-back ← coll ← a, b, c: {g}"
    );
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn bad_specs_are_refused_before_anything_is_queued(#[case] backend: Backend) {
    let app = app_or_skip!(backend);
    seed(&app).await;
    app.create_adapter("bob", "secret", true, "bob").await;
    app.upload("bob/secret", "bob", &synthetic_adapter(4, &MODULES, 9))
        .await;
    app.create_adapter("bob", "public", false, "bob").await;
    let other_base = json!({"owner": "alice", "name": "other", "base_model": "someone/else"});
    app.post_json("/api/v1/adapters", "alice", &other_base)
        .await;
    app.upload("alice/other", "alice", &synthetic_adapter(4, &MODULES, 5))
        .await;
    app.create_adapter("alice", "dora", false, "alice").await;
    let dora = quiver_tests::peft_fixtures()
        .into_iter()
        .find(|(n, _)| n == "dora")
        .expect("dora fixture")
        .1;
    let (s, body) = app.upload("alice/dora", "alice", &dora).await;
    assert_eq!(s, 201, "{body}");
    // Same base model name, other shapes (8 × 16 instead of 16 × 16 projections).
    app.create_adapter("alice", "narrow", false, "alice").await;
    let (s, body) = app
        .upload(
            "alice/narrow",
            "alice",
            &quiver_tests::sized_adapter(4, 8, 1, 3),
        )
        .await;
    assert_eq!(s, 201, "{body}");
    let (_, versions_before, _) = app.store.meta.row_counts().await.expect("counts");
    let blobs_before = app.store.blobs.list_hashes().await.expect("blobs").len();

    let out = json!({"adapter": "alice/out", "create": true});
    let ab = inputs(&["a", "b"]);
    let cases: Vec<(&str, Value, u16, &str)> = vec![
        (
            "/api/v1/merges",
            json!({"method": "bogus", "inputs": ab, "output": out}),
            422,
            "invalid_spec",
        ),
        (
            "/api/v1/merges",
            json!({"method": "cat", "density": 0.5, "inputs": ab, "output": out}),
            422,
            "invalid_spec",
        ),
        (
            "/api/v1/merges",
            json!({"method": "ties", "density": 2, "inputs": ab, "output": out}),
            422,
            "invalid_spec",
        ),
        (
            "/api/v1/merges",
            json!({"method": "ties", "densty": 0.5, "inputs": ab, "output": out}),
            422,
            "invalid_spec",
        ),
        // Work and numbers are bounded before anything is queued (issue 20: a wedge and inf/NaN).
        (
            "/api/v1/merges",
            json!({"method": "ziplora", "steps": 4_000_000_000u64, "inputs": ab, "output": out}),
            422,
            "invalid_spec",
        ),
        (
            "/api/v1/merges",
            json!({"method": "linear", "weights": [1e300, 1.0], "inputs": ab, "output": out}),
            422,
            "invalid_spec",
        ),
        (
            "/api/v1/merges",
            json!({"method": "lora_lego", "iters": 1_000_000_000u64, "inputs": ab, "output": out}),
            422,
            "invalid_spec",
        ),
        (
            "/api/v1/compressions",
            json!({"mode": "joint", "rank": 4, "iters": 1_000_000_000u64, "inputs": ab, "output": out}),
            422,
            "invalid_spec",
        ),
        (
            "/api/v1/merges",
            json!({"method": "ziplora", "inputs": inputs(&["a"]), "output": out}),
            422,
            "invalid_spec",
        ),
        (
            "/api/v1/merges",
            json!({"method": "linear", "weights": [1], "inputs": ab, "output": out}),
            422,
            "invalid_spec",
        ),
        (
            "/api/v1/merges",
            json!({"method": "linear", "weights": [1, 1], "inputs": [{"adapter": "alice/a", "weight": 2}, {"adapter": "alice/b"}], "output": out}),
            422,
            "invalid_spec",
        ),
        (
            "/api/v1/merges",
            json!({"method": "cat", "output": out}),
            422,
            "invalid_spec",
        ),
        (
            "/api/v1/merges",
            json!({"method": "cat", "inputs": ab}),
            422,
            "invalid_spec",
        ),
        (
            "/api/v1/merges",
            json!({"method": "cat", "inputs": [{"adapter": "no-slash"}], "output": out}),
            422,
            "invalid_spec",
        ),
        (
            "/api/v1/merges",
            json!({"method": "cat", "inputs": ab, "output": out, "idempotency_key": ""}),
            422,
            "invalid_spec",
        ),
        (
            "/api/v1/merges",
            json!({"method": "cat", "inputs": [{"adapter": "bob/secret"}, {"adapter": "alice/a"}], "output": out}),
            404,
            "adapter_not_found",
        ),
        (
            "/api/v1/merges",
            json!({"method": "cat", "inputs": [{"adapter": "alice/nope"}], "output": out}),
            404,
            "adapter_not_found",
        ),
        (
            "/api/v1/merges",
            json!({"method": "cat", "inputs": [{"adapter": "alice/a", "ref": "v9"}], "output": out}),
            404,
            "version_not_found",
        ),
        (
            "/api/v1/merges",
            json!({"method": "cat", "inputs": ab, "output": {"adapter": "bob/public"}}),
            403,
            "forbidden",
        ),
        (
            "/api/v1/merges",
            // Another user's private adapter answers like a name that does not exist (403
            // both, asked before existence), not 404 (which told the two apart).
            json!({"method": "cat", "inputs": ab, "output": {"adapter": "bob/secret"}}),
            403,
            "forbidden",
        ),
        (
            "/api/v1/merges",
            json!({"method": "cat", "inputs": ab, "output": {"adapter": "bob/secret", "create": true}}),
            403,
            "forbidden",
        ),
        (
            "/api/v1/merges",
            json!({"method": "cat", "inputs": ab, "output": {"adapter": "bob/nothing-here"}}),
            403,
            "forbidden",
        ),
        (
            "/api/v1/merges",
            json!({"method": "cat", "inputs": ab, "output": {"adapter": "bob/new", "create": true}}),
            403,
            "forbidden",
        ),
        (
            "/api/v1/merges",
            json!({"method": "cat", "inputs": ab, "output": {"adapter": "alice/missing"}}),
            404,
            "adapter_not_found",
        ),
        (
            "/api/v1/merges",
            json!({"method": "cat", "inputs": inputs(&["a", "other"]), "output": out}),
            422,
            "incompatible_inputs",
        ),
        (
            "/api/v1/merges",
            json!({"method": "cat", "inputs": inputs(&["a", "dora"]), "output": out}),
            422,
            "incompatible_inputs",
        ),
        (
            "/api/v1/merges",
            json!({"method": "cat", "inputs": ab, "output": {"adapter": "alice/other"}}),
            422,
            "incompatible_inputs",
        ),
        (
            "/api/v1/compressions",
            json!({"mode": "individual", "inputs": ab, "output": out}),
            422,
            "invalid_spec",
        ),
        (
            "/api/v1/compressions",
            json!({"mode": "individual", "rank": 2, "inputs": ab, "output": out}),
            422,
            "invalid_spec",
        ),
        (
            "/api/v1/compressions",
            json!({"mode": "zip", "inputs": ab, "output": out}),
            422,
            "invalid_spec",
        ),
        (
            "/api/v1/compressions",
            json!({"mode": "joint", "rank": 0, "inputs": ab, "output": out}),
            422,
            "invalid_spec",
        ),
        (
            "/api/v1/compressions",
            json!({"mode": "extract", "member": "a", "inputs": inputs(&["a"]), "output": out}),
            422,
            "incompatible_inputs",
        ),
    ];
    for (route, body, status, code) in cases {
        let (s, e) = app.post_json(route, "alice", &body).await;
        assert_error(s, &e, (status, code), &body.to_string());
    }
    // Wrong content type, no token, read-only token.
    let res = app
        .request(Method::POST, "/api/v1/merges", "alice")
        .body("{}")
        .send()
        .await
        .expect("req");
    assert_eq!(res.status(), 415);
    let ok = json!({"method": "cat", "inputs": ab, "output": out});
    assert_eq!(app.post_json("/api/v1/merges", "", &ok).await.0, 401);
    assert_eq!(
        app.post_json("/api/v1/merges", "alice_read", &ok).await.0,
        403
    );

    let (_, jobs) = app.get_json("/api/v1/jobs", "admin").await;
    assert_eq!(jobs["items"], json!([]), "no job was queued");
    let (_, versions_after, _) = app.store.meta.row_counts().await.expect("counts");
    assert_eq!(versions_after, versions_before, "no version");
    assert_eq!(
        app.store.blobs.list_hashes().await.expect("blobs").len(),
        blobs_before,
        "no blob"
    );
    assert_eq!(
        app.get_json("/api/v1/adapters/alice/out", "alice").await.0,
        404,
        "no adapter"
    );
}

/// Inputs may also be `"owner/name@ref"` strings, next to objects in one request, each pinned to
/// the version its ref names; a bad string is a 422 naming the entry.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn inputs_may_be_owner_name_at_ref_strings(#[case] backend: Backend) {
    let app = app_or_skip!(backend);
    seed(&app).await;
    // alice/a v2 is its main now: `alice/a@v1` must still pin v1.
    let (s, body) = app
        .upload("alice/a", "alice", &synthetic_adapter(4, &MODULES, 11))
        .await;
    assert_eq!(s, 201, "{body}");
    let body = json!({"method": "linear",
        "inputs": ["alice/a@v1", {"adapter": "alice/b", "weight": 0.5}, "alice/a"],
        "output": {"adapter": "alice/strings", "create": true}});
    let job = run_job(&app, "/api/v1/merges", &body).await;
    let pinned: Vec<(&str, &str, i64)> = job["spec"]["inputs"]
        .as_array()
        .expect("inputs")
        .iter()
        .map(|i| {
            (
                i["adapter"].as_str().expect("adapter"),
                i["ref"].as_str().expect("ref"),
                i["version"].as_i64().expect("version"),
            )
        })
        .collect();
    assert_eq!(
        pinned,
        [
            ("alice/a", "v1", 1),
            ("alice/b", "main", 1),
            ("alice/a", "main", 2)
        ],
        "{job}"
    );
    assert_eq!(job["spec"]["params"]["weights"], json!([1.0, 0.5, 1.0]));
    let (_, v) = app
        .get_json("/api/v1/adapters/alice/strings/versions/1", "alice")
        .await;
    let parents: Vec<(&str, i64)> = v["lineage"]["parents"]
        .as_array()
        .expect("parents")
        .iter()
        .map(|p| {
            (
                p["adapter"].as_str().expect("adapter"),
                p["version"].as_i64().expect("version"),
            )
        })
        .collect();
    assert_eq!(
        parents,
        [("alice/a", 1), ("alice/b", 1), ("alice/a", 2)],
        "{v}"
    );
    assert_eq!(v["lineage"]["method"], "linear", "{v}");

    for bad in [
        json!("alice"),
        json!("alice/a@"),
        json!("no such/name@v1"),
        json!(7),
    ] {
        let body = json!({"method": "cat", "inputs": ["alice/a@v1", bad],
            "output": {"adapter": "alice/bad", "create": true}});
        let (s, e) = app.post_json("/api/v1/merges", "alice", &body).await;
        assert_error(s, &e, (422, "invalid_spec"), &body.to_string());
        let message = e["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("inputs[1]"), "{body} → {message}");
    }
    // A well-formed string whose ref names no version: the version's 404, as with an object.
    let body = json!({"method": "cat", "inputs": ["alice/a@v9"],
        "output": {"adapter": "alice/bad", "create": true}});
    let (s, e) = app.post_json("/api/v1/merges", "alice", &body).await;
    assert_error(s, &e, (404, "version_not_found"), &body.to_string());
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn idempotency_keys_and_queued_cancel(#[case] backend: Backend) {
    // No workers here: jobs stay queued.
    let Some(app) = spawn_app_with_workers(backend, 0).await else {
        return;
    };
    seed(&app).await;
    let body = json!({"method": "linear", "inputs": inputs(&["a", "b"]),
        "output": {"adapter": "alice/m", "create": true}, "idempotency_key": "nightly-1"});
    let (s1, first) = app.post_json("/api/v1/merges", "alice", &body).await;
    assert_eq!(s1, 202, "{first}");
    let (s2, again) = app.post_json("/api/v1/merges", "alice", &body).await;
    assert_eq!((s2, &again["id"]), (200, &first["id"]), "{again}");
    let mut other = body.clone();
    other["method"] = json!("svd");
    let (s3, e) = app.post_json("/api/v1/merges", "alice", &other).await;
    assert_eq!(
        (s3, e["error"]["code"].as_str()),
        (409, Some("idempotency_conflict")),
        "{e}"
    );
    // Keys are per user.
    app.create_adapter("bob", "m", false, "bob").await;
    let (_, bob_first) = app.post_json("/api/v1/merges", "bob", &json!({"method": "linear",
        "inputs": inputs(&["a", "b"]), "output": {"adapter": "bob/m"}, "idempotency_key": "nightly-1"})).await;
    assert_ne!(bob_first["id"], first["id"]);

    // Pinned at submission: moving `main` later does not change the queued job.
    let pinned = first["spec"]["inputs"][0]["revision"].clone();
    app.upload("alice/a", "alice", &synthetic_adapter(4, &MODULES, 77))
        .await;
    let (_, job) = app
        .get_json(
            &format!("/api/v1/jobs/{}", first["id"].as_str().expect("id")),
            "alice",
        )
        .await;
    assert_eq!(job["spec"]["inputs"][0]["revision"], pinned);
    assert_eq!(job["spec"]["inputs"][0]["version"], 1);

    let id = first["id"].as_str().expect("id");
    assert_eq!(
        app.get_json(&format!("/api/v1/jobs/{id}"), "bob").await.0,
        404,
        "another user's job"
    );
    assert_eq!(
        app.post_json(&format!("/api/v1/jobs/{id}/cancel"), "bob", &json!({}))
            .await
            .0,
        404
    );
    let (s, c) = app
        .post_json(&format!("/api/v1/jobs/{id}/cancel"), "alice", &json!({}))
        .await;
    assert_eq!((s, c["state"].as_str()), (200, Some("cancelled")), "{c}");
    let (_, listed) = app.get_json("/api/v1/jobs?state=cancelled", "alice").await;
    assert_eq!(
        listed["items"].as_array().map(Vec::len),
        Some(1),
        "{listed}"
    );
    let (_, mine) = app.get_json("/api/v1/jobs", "bob").await;
    assert_eq!(
        mine["items"].as_array().map(Vec::len),
        Some(1),
        "bob sees his own only"
    );
    let (_, all) = app
        .get_json("/api/v1/jobs?kind=merge&limit=1", "admin")
        .await;
    assert_eq!(all["items"].as_array().map(Vec::len), Some(1));
    assert!(
        all["next_cursor"].is_string(),
        "admin sees both, one per page"
    );
    assert_eq!(
        app.get_json("/api/v1/jobs?state=bogus", "alice").await.0,
        400
    );
    assert_eq!(app.get_json("/api/v1/jobs", "").await.0, 401);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_running_job_cancelled_publishes_nothing(#[case] backend: Backend) {
    let app = app_or_skip!(backend);
    for (i, name) in ["big1", "big2"].into_iter().enumerate() {
        app.adapter_with(
            &format!("alice/{name}"),
            &sized_adapter(8, 256, 48, i as u32),
        )
        .await;
    }
    let (_, versions_before, _) = app.store.meta.row_counts().await.expect("counts");
    let (_, job) = app
        .post_json(
            "/api/v1/merges",
            "alice",
            &json!({"method": "ziplora", "steps": 400,
        "inputs": inputs(&["big1", "big2"]), "output": {"adapter": "alice/zip", "create": true}}),
        )
        .await;
    let id = job["id"].as_str().expect("id").to_string();
    // Wait until it is running and has made progress, then cancel.
    let start = std::time::Instant::now();
    loop {
        let (_, j) = app.get_json(&format!("/api/v1/jobs/{id}"), "alice").await;
        if j["state"] == "running" && j["progress"]["done"].as_i64() > Some(0) {
            break;
        }
        assert!(j["state"] == "queued" || j["state"] == "running", "{j}");
        assert!(start.elapsed() < WAIT, "{j}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (s, c) = app
        .post_json(&format!("/api/v1/jobs/{id}/cancel"), "alice", &json!({}))
        .await;
    assert_eq!(s, 200, "{c}");
    let done = app.wait_job(&id, "alice", WAIT).await;
    assert_eq!(done["state"], "cancelled", "{done}");
    assert!(
        done["progress"]["done"].as_i64() < done["progress"]["total"].as_i64(),
        "stopped early: {done}"
    );
    assert!(done["result"].is_null());
    assert_eq!(
        app.get_json("/api/v1/adapters/alice/zip", "alice").await.0,
        404,
        "nothing published"
    );
    let (_, versions_after, _) = app.store.meta.row_counts().await.expect("counts");
    assert_eq!(versions_after, versions_before);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn private_inputs_and_outputs_stay_private(#[case] backend: Backend) {
    let app = app_or_skip!(backend);
    seed(&app).await;
    app.create_adapter("alice", "hidden", true, "alice").await;
    app.upload("alice/hidden", "alice", &synthetic_adapter(4, &MODULES, 11))
        .await;
    // Bob cannot name alice's private adapter.
    let (s, e) = app
        .post_json(
            "/api/v1/merges",
            "bob",
            &json!({"method": "cat",
        "inputs": inputs(&["a", "hidden"]), "output": {"adapter": "bob/m", "create": true}}),
        )
        .await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (404, Some("adapter_not_found")),
        "{e}"
    );
    // Alice merges a public and a private input into a private output.
    let job = run_job(&app, "/api/v1/merges", &json!({"method": "linear",
        "inputs": inputs(&["a", "hidden"]), "output": {"adapter": "alice/secret-mix", "create": true,
        "private": true, "description": "mix", "tags": ["merged"]}})).await;
    let (_, a) = app
        .get_json("/api/v1/adapters/alice/secret-mix", "alice")
        .await;
    assert_eq!(
        (a["private"].as_bool(), a["tags"].clone()),
        (Some(true), json!(["merged"])),
        "{a}"
    );
    let job_url = format!("/api/v1/jobs/{}", job["id"].as_str().expect("id"));
    for (path, who, status) in [
        ("/api/v1/adapters/alice/secret-mix", "bob", 404),
        (job_url.as_str(), "bob", 404),
        (job_url.as_str(), "admin", 200),
    ] {
        assert_eq!(app.get_json(path, who).await.0, status, "{who} {path}");
    }
    // A public descendant of a private input: the lineage hides what the caller may not see.
    let pub_job = run_job(&app, "/api/v1/merges", &json!({"method": "linear",
        "inputs": inputs(&["b", "secret-mix"]), "output": {"adapter": "alice/open", "create": true}})).await;
    assert_eq!(pub_job["state"], "succeeded");
    let (_, g) = app
        .get_json("/api/v1/adapters/alice/open/versions/1/lineage", "")
        .await;
    let ids: Vec<&str> = g["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| n["id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids.len(), 2, "{g}");
    assert!(
        ids.contains(&"alice/b@1") && ids.contains(&"alice/open@1"),
        "{g}"
    );
    assert_eq!(
        g["edges"],
        json!([{"from": "alice/b@1", "to": "alice/open@1"}])
    );
    let (_, g) = app
        .get_json("/api/v1/adapters/alice/open/versions/1/lineage", "alice")
        .await;
    assert_eq!(
        g["nodes"].as_array().map(Vec::len),
        Some(5),
        "the owner sees all: {g}"
    );
    for (parent, who, expected, why) in [
        ("alice/b", "", vec!["alice/open"], "a public child"),
        ("alice/a", "", vec![], "the private child is not shown"),
        (
            "alice/a",
            "alice",
            vec!["alice/secret-mix"],
            "the owner sees it",
        ),
        (
            "alice/secret-mix",
            "bob",
            vec![],
            "a private parent names nothing",
        ),
        (
            "alice/secret-mix",
            "alice",
            vec!["alice/open"],
            "its owner's view",
        ),
    ] {
        let (_, listed) = app
            .get_json(&format!("/api/v1/adapters?derived_from={parent}"), who)
            .await;
        let ids: Vec<&str> = listed["items"]
            .as_array()
            .expect("items")
            .iter()
            .filter_map(|a| a["id"].as_str())
            .collect();
        assert_eq!(ids, expected, "{why}: {listed}");
    }

    // Metrics count jobs by kind and state.
    let text = app.metrics_text().await;
    let value = |line: &str| -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(line).and_then(|v| v.trim().parse().ok()))
    };
    assert_eq!(
        value("quiver_jobs{kind=\"merge\",state=\"succeeded\"}"),
        Some(2.0),
        "{text}"
    );
    assert_eq!(value("quiver_job_queue_depth"), Some(0.0), "{text}");
    assert!(
        value("quiver_job_attempts_total{kind=\"merge\"}").is_some_and(|n| n >= 2.0),
        "{text}"
    );
}
