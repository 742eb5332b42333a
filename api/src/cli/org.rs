//! `quiver org create|show|list|member set|member remove` and `quiver adapter transfer`:
//! organisations and moving an adapter between namespaces on a server, through its API
//! (docs/orgs.md). Prints the server's JSON; an error prints the server's message (its envelope's
//! code and message) and exits non-zero.

use clap::{Args, Subcommand};
use serde_json::json;

use crate::cli::remote::{Remote, print, seg};

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

pub async fn run(args: OrgArgs) -> CmdResult {
    use reqwest::Method;
    let r = &args.remote;
    let v = match args.command {
        OrgCommand::Create { name, admin } => {
            let mut body = json!({ "name": name });
            if let Some(a) = admin {
                body["admin"] = a.into();
            }
            r.call(Method::POST, "/orgs", Some(body)).await?
        }
        OrgCommand::Show { name } => {
            r.call(Method::GET, &format!("/orgs/{}", seg(&name)), None)
                .await?
        }
        OrgCommand::List => r.call(Method::GET, "/orgs", None).await?,
        OrgCommand::Member {
            command: MemberCommand::Set { org, user, role },
        } => {
            let path = format!("/orgs/{}/members/{}", seg(&org), seg(&user));
            r.call(Method::PUT, &path, Some(json!({ "role": role })))
                .await?
        }
        OrgCommand::Member {
            command: MemberCommand::Remove { org, user },
        } => {
            let path = format!("/orgs/{}/members/{}", seg(&org), seg(&user));
            r.call(Method::DELETE, &path, None).await?
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
            let v = args
                .remote
                .call(reqwest::Method::POST, &path, Some(json!({ "to": to })))
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
    let v = args.remote.call(reqwest::Method::POST, &path, None).await?;
    print(&v)
}
