//! What the commands that talk to a server's API share (`token`, `webhook`, `org`): the
//! `--server` / `--token` flags, one request to `{server}/api/v1{path}` with the token as bearer,
//! the server's error envelope as the error's text, and printing the answer.

use clap::Args;
use serde_json::{Value, json};

type CmdResult = Result<(), Box<dyn std::error::Error>>;

/// The server and token (flags, or `QUIVER_URL` / `QUIVER_TOKEN`), given before or after the
/// subcommand.
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
    /// The token to act with (write, or admin for what only an admin may do).
    #[arg(long, env = "QUIVER_TOKEN", global = true)]
    pub token: Option<String>,
}

impl Remote {
    /// [`call`] with these flags.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, Box<dyn std::error::Error>> {
        call(&self.server, self.token.as_deref(), method, path, body).await
    }
}

/// One path segment (or query value), percent-encoded: `/`, `?`, `#`, `&`, `+` and spaces
/// included.
pub fn seg(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

/// The envelope's `message (status, code)`, or `status: body` when the body is not the envelope.
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

/// `method {server}/api/v1{path}` with `token` as bearer and `body` as JSON. Answers the JSON
/// (a string when the body is not JSON, `{"status": N}` when it is empty); a connection failure
/// is `cannot reach {url}: …` and a non-2xx answer the server's message ([`error_message`]).
/// `path` must already be encoded ([`seg`]).
pub async fn call(
    server: &str,
    token: Option<&str>,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> Result<Value, Box<dyn std::error::Error>> {
    let url = format!("{}/api/v1{path}", server.trim_end_matches('/'));
    let mut request = reqwest::Client::new().request(method, &url);
    if let Some(token) = token {
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

/// The answer, pretty-printed on stdout.
pub fn print(v: &Value) -> CmdResult {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
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
        assert_eq!(seg("x+y?z#w&v"), "x%2By%3Fz%23w%26v");
    }
}
