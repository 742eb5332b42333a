//! `quiver token create|list|revoke|invite --server URL --token T`: manage tokens on a server through
//! its API (docs/tokens.md). `create` without `--server` is the local bootstrap (database
//! access, `crate::cli`). `create` prints the new token's JSON to stderr and the secret alone on
//! the last line of stdout, as the bootstrap does; `list` and `revoke` print the server's JSON.
//! An error prints the server's message (its envelope's code and message) and exits non-zero;
//! the request itself is `crate::cli::remote`'s.

use quiver_store::{AuditContext, NewToken, Scope, Store, StoreError};
use serde_json::json;

use crate::cli::remote::{call, print, seg};

type CmdResult = Result<(), Box<dyn std::error::Error>>;

/// The audit actor of the local bootstrap (docs/audit.md): not a user name (those cannot hold
/// parentheses), so it is never mistaken for one.
pub const LOCAL_ACTOR: &str = "(local)";

/// `token create --user U --scope S` without `--server`: creates the user if new and an unnamed,
/// unrestricted, unexpiring token for it, with a `token.create` audit entry by [`LOCAL_ACTOR`]
/// (no token id, request or address) in the same transaction. Returns the secret.
pub async fn create_local(store: &Store, user: &str, scope: Scope) -> Result<String, StoreError> {
    let (secret, hash) = crate::auth::new_token();
    let local = AuditContext {
        actor: Some(LOCAL_ACTOR.to_string()),
        ..AuditContext::default()
    };
    store
        .meta
        .insert_token_audited(
            &NewToken {
                user: user.to_string(),
                name: None,
                prefix: None,
                scope,
                restrict: None,
                expires_at: None,
                created_by: None,
                secret_sha256: hash,
                max_active: i64::MAX,
            },
            Some(&local),
        )
        .await?;
    Ok(secret)
}

/// What `create` asks of a server.
pub struct RemoteCreate {
    pub server: String,
    pub token: Option<String>,
    pub name: String,
    pub scope: String,
    pub user: Option<String>,
    pub expires_in_days: Option<i64>,
    pub restrict: Vec<String>,
}

pub async fn create(c: RemoteCreate) -> CmdResult {
    let mut body = json!({ "name": c.name, "scope": c.scope });
    if let Some(u) = c.user {
        body["user"] = u.into();
    }
    if let Some(d) = c.expires_in_days {
        body["expires_in_days"] = d.into();
    }
    if !c.restrict.is_empty() {
        body["restrict"] = c.restrict.into();
    }
    let mut made = call(
        &c.server,
        c.token.as_deref(),
        reqwest::Method::POST,
        "/tokens",
        Some(body),
    )
    .await?;
    let secret = made
        .as_object_mut()
        .and_then(|o| o.remove("token"))
        .and_then(|t| t.as_str().map(str::to_owned))
        .ok_or("the server's answer holds no token")?;
    eprintln!("{}", serde_json::to_string_pretty(&made)?);
    eprintln!("token — shown once, store it now:");
    println!("{secret}");
    Ok(())
}

pub async fn list(server: &str, token: Option<&str>, user: Option<&str>, all: bool) -> CmdResult {
    let mut path = "/tokens".to_string();
    if let Some(u) = user {
        path.push_str(&format!("?user={}", seg(u)));
    } else if all {
        path.push_str("?all=true");
    }
    print(&call(server, token, reqwest::Method::GET, &path, None).await?)
}

pub async fn revoke(server: &str, token: Option<&str>, id: &str) -> CmdResult {
    let path = format!("/tokens/{}", seg(id));
    print(&call(server, token, reqwest::Method::DELETE, &path, None).await?)
}

pub async fn invite(
    server: &str,
    token: Option<&str>,
    user: &str,
    scope: &str,
    expires_in_days: Option<i64>,
) -> CmdResult {
    let mut body = json!({ "user": user, "scope": scope });
    if let Some(d) = expires_in_days {
        body["expires_in_days"] = d.into();
    }
    let v = call(server, token, reqwest::Method::POST, "/invites", Some(body)).await?;
    eprintln!("{}", serde_json::to_string_pretty(&v)?);
    eprintln!("one-time sign-in link (prefix it with the server's address), shown once:");
    println!("{}", v["link"].as_str().unwrap_or_default());
    Ok(())
}
