//! `quiver org create|show|list|member set|member remove` and `quiver adapter transfer`:
//! organisations and moving an adapter between namespaces on a server, through its API
//! (docs/orgs.md). Prints the server's JSON; an error prints the server's message (its envelope's
//! code and message) and exits non-zero.

use clap::{Args, Subcommand};
use serde_json::{Value, json};

/// The server and token every command here takes (flags, or `QUIVER_URL` / `QUIVER_TOKEN`).
#[derive(Args, Debug)]
pub struct Remote {
    /// The server.
    #[arg(
        long,
        env = "QUIVER_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub server: String,
    /// The token to act with (write, or admin for another first admin).
    #[arg(long, env = "QUIVER_TOKEN", global = true)]
    pub token: Option<String>,
}

#[derive(Args, Debug)]
pub struct OrgArgs {
    #[command(flatten)]
    pub remote: Remote,
    #[command(subcommand)]
    pub command: OrgCommand,
}

#[derive(Subcommand, Debug)]
pub enum OrgCommand {
    /// Create an organisation; you become its first admin (an instance admin token may name
    /// another with `--admin`).
    Create {
        name: String,
        #[arg(long)]
        admin: Option<String>,
    },
    /// An organisation and its members (members and instance admins).
    Show { name: String },
    /// The organisations you belong to, with your role in each.
    List,
    /// Members of an organisation (its admins).
    Member {
        #[command(subcommand)]
        command: MemberCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum MemberCommand {
    /// Add a user to an organisation or change their role.
    Set {
        org: String,
        user: String,
        #[arg(long, value_parser = ["read", "write", "admin"])]
        role: String,
    },
    /// Remove a user from an organisation (yourself: leave it).
    Remove { org: String, user: String },
}

#[derive(Args, Debug)]
pub struct AdapterArgs {
    #[command(flatten)]
    pub remote: Remote,
    #[command(subcommand)]
    pub command: AdapterCommand,
}

#[derive(Subcommand, Debug)]
pub enum AdapterCommand {
    /// Move OWNER/NAME to another namespace (a user or an organisation); you must administer
    /// both. Versions, revisions, aliases and lineage move with it.
    Transfer {
        /// `owner/name`.
        repo: String,
        /// The namespace to move it to.
        #[arg(long)]
        to: String,
    },
}

#[derive(Args, Debug)]
pub struct UserArgs {
    #[command(flatten)]
    pub remote: Remote,
    #[command(subcommand)]
    pub command: UserCommand,
}

#[derive(Subcommand, Debug)]
pub enum UserCommand {
    /// Deactivate a departed colleague (an admin token): every token revoked, unused invites
    /// withdrawn, every organisation left, at once.
    Deactivate { user: String },
    /// Let a deactivated user have tokens again (their old tokens stay revoked).
    Reactivate { user: String },
}

type CmdResult = Result<(), Box<dyn std::error::Error>>;

/// A path segment, percent-encoded.
fn seg(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

/// The envelope's `code: message`, or the body as it came.
fn error_message(status: reqwest::StatusCode, text: &str) -> String {
    let v: Option<Value> = serde_json::from_str(text).ok();
    match v
        .as_ref()
        .map(|v| (&v["error"]["code"], &v["error"]["message"]))
    {
        Some((Value::String(code), Value::String(message))) => {
            format!("{message} ({}, {code})", status.as_u16())
        }
        _ => format!("{status}: {}", text.trim()),
    }
}

async fn call(
    remote: &Remote,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> Result<Value, Box<dyn std::error::Error>> {
    let url = format!("{}/api/v1{path}", remote.server.trim_end_matches('/'));
    let mut request = reqwest::Client::new().request(method, &url);
    if let Some(token) = &remote.token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request
        .send()
        .await
        .map_err(|e| format!("cannot reach {url}: {e}"))?;
    let status = response.status();
    let text = response.text().await?;
    if !status.is_success() {
        return Err(error_message(status, &text).into());
    }
    if text.is_empty() {
        return Ok(json!({"status": status.as_u16()}));
    }
    Ok(serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

fn print(v: &Value) -> CmdResult {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

pub async fn run(args: OrgArgs) -> CmdResult {
    use reqwest::Method;
    let r = &args.remote;
    let v = match args.command {
        OrgCommand::Create { name, admin } => {
            let mut body = json!({ "name": name });
            if let Some(a) = admin {
                body["admin"] = a.into();
            }
            call(r, Method::POST, "/orgs", Some(body)).await?
        }
        OrgCommand::Show { name } => {
            call(r, Method::GET, &format!("/orgs/{}", seg(&name)), None).await?
        }
        OrgCommand::List => call(r, Method::GET, "/orgs", None).await?,
        OrgCommand::Member {
            command: MemberCommand::Set { org, user, role },
        } => {
            let path = format!("/orgs/{}/members/{}", seg(&org), seg(&user));
            call(r, Method::PUT, &path, Some(json!({ "role": role }))).await?
        }
        OrgCommand::Member {
            command: MemberCommand::Remove { org, user },
        } => {
            let path = format!("/orgs/{}/members/{}", seg(&org), seg(&user));
            call(r, Method::DELETE, &path, None).await?
        }
    };
    print(&v)
}

pub async fn run_adapter(args: AdapterArgs) -> CmdResult {
    match args.command {
        AdapterCommand::Transfer { repo, to } => {
            let (owner, name) = repo
                .split_once('/')
                .filter(|(o, n)| !o.is_empty() && !n.is_empty() && !n.contains('/'))
                .ok_or_else(|| format!("expected OWNER/NAME, got {repo:?}"))?;
            let path = format!("/adapters/{}/{}/transfer", seg(owner), seg(name));
            let v = call(
                &args.remote,
                reqwest::Method::POST,
                &path,
                Some(json!({ "to": to })),
            )
            .await?;
            print(&v)
        }
    }
}

pub async fn run_user(args: UserArgs) -> CmdResult {
    let (user, action) = match &args.command {
        UserCommand::Deactivate { user } => (user, "deactivate"),
        UserCommand::Reactivate { user } => (user, "reactivate"),
    };
    let path = format!("/users/{}/{action}", seg(user));
    let v = call(&args.remote, reqwest::Method::POST, &path, None).await?;
    print(&v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_read_as_the_servers_message() {
        let s = reqwest::StatusCode::NOT_FOUND;
        assert_eq!(
            error_message(
                s,
                r#"{"error":{"code":"org_not_found","message":"organisation x was not found"}}"#
            ),
            "organisation x was not found (404, org_not_found)"
        );
        assert_eq!(error_message(s, "plain\n"), "404 Not Found: plain");
        assert_eq!(seg("a b/c"), "a%20b%2Fc");
    }
}
