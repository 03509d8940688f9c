//! `shoal sql`: runs SQL against a node's HTTP API and prints aligned tables; with no
//! statement, an interactive shell (history, multi-line statements ending in `;`, `\q`).

use clap::Args;
use serde_json::Value;

#[derive(Args, Debug)]
pub struct SqlArgs {
    /// The node's HTTP address.
    #[arg(long, env = "SHOAL_HTTP_ADDR", default_value = "127.0.0.1:7480")]
    host: String,
    /// Output format: table (default), json, csv, jsonl.
    #[arg(long, default_value = "table")]
    format: String,
    /// An API token (`CREATE TOKEN FOR user`), sent as `Authorization: Bearer`.
    #[arg(long, env = "SHOAL_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// A user name, with `--password` (HTTP Basic).
    #[arg(long, env = "SHOAL_USER")]
    user: Option<String>,
    /// The user's password (better from the environment: SHOAL_PASSWORD).
    #[arg(long, env = "SHOAL_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// The cluster CA (`certs/ca.crt`) for a node serving HTTPS; implies https://.
    #[arg(long, env = "SHOAL_CA_CERT")]
    ca_cert: Option<String>,
    /// The SQL to run; omit for an interactive shell.
    sql: Option<String>,
}

/// Longest a single request may take before the client gives up.
const REQUEST_TIMEOUT_SECS: u64 = 600;

struct Client {
    http: reqwest::Client,
    url: String,
    format: String,
    token: Option<String>,
    user: Option<(String, Option<String>)>,
}

impl Client {
    async fn run(&self, sql: &str) -> Result<String, String> {
        let wire = if self.format == "table" {
            "json"
        } else {
            self.format.as_str()
        };
        let mut req = self
            .http
            .post(format!("{}?format={wire}", self.url))
            .body(sql.to_string());
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        } else if let Some((u, p)) = &self.user {
            req = req.basic_auth(u, p.as_ref());
        }
        let resp = req
            .send()
            .await
            .map_err(|e| format!("cannot reach {}: {e}", self.url))?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| e.to_string())?;
        if !status.is_success() {
            let msg = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
                .unwrap_or(text);
            return Err(format!("error ({}): {msg}", status.as_u16()));
        }
        if self.format != "table" {
            return Ok(text);
        }
        let v: Value = serde_json::from_str(&text).map_err(|e| format!("bad response: {e}"))?;
        Ok(render(&v))
    }
}

/// Renders a `/v1/sql` JSON answer as an aligned table.
pub fn render(v: &Value) -> String {
    if let Some(cmd) = v.get("command").and_then(|c| c.as_str()) {
        return format!(
            "{cmd} {}\n",
            v.get("rows").and_then(|r| r.as_u64()).unwrap_or(0)
        );
    }
    let names: Vec<String> = v
        .get("columns")
        .and_then(|c| c.as_array())
        .map(|cols| {
            cols.iter()
                .map(|c| {
                    c.get("name")
                        .and_then(|n| n.as_str())
                        .unwrap_or("")
                        .to_string()
                })
                .collect()
        })
        .unwrap_or_default();
    let rows: Vec<Vec<String>> = v
        .get("rows")
        .and_then(|r| r.as_array())
        .map(|rows| {
            rows.iter()
                .map(|r| {
                    r.as_array()
                        .map(|cells| {
                            cells
                                .iter()
                                .map(|c| match c {
                                    Value::Null => "NULL".to_string(),
                                    Value::String(s) => s.clone(),
                                    other => other.to_string(),
                                })
                                .collect()
                        })
                        .unwrap_or_default()
                })
                .collect()
        })
        .unwrap_or_default();
    let mut widths: Vec<usize> = names.iter().map(|n| n.chars().count()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let line = |cells: &[String]| -> String {
        let parts: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths.get(i).copied().unwrap_or(0)))
            .collect();
        format!(" {} \n", parts.join(" | ")).trim_end().to_string() + "\n"
    };
    let mut out = line(&names);
    let sep: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    out.push_str(&format!("-{}-\n", sep.join("-+-")));
    for r in &rows {
        out.push_str(&line(r));
    }
    out.push_str(&format!(
        "({} row{})\n",
        rows.len(),
        if rows.len() == 1 { "" } else { "s" }
    ));
    out
}

/// An HTTP client for a node's API (trusting only `ca_cert` for HTTPS when given), and
/// the node's base URL: `host` as given if it names a scheme, else https:// with a CA and
/// http:// without.
pub fn http_client(
    host: &str,
    ca_cert: Option<&str>,
    timeout_secs: u64,
) -> Result<(reqwest::Client, String), String> {
    let mut b = reqwest::Client::builder().timeout(std::time::Duration::from_secs(timeout_secs));
    if let Some(path) = ca_cert {
        let pem = std::fs::read(path).map_err(|e| format!("--ca-cert {path}: {e}"))?;
        let ca =
            reqwest::Certificate::from_pem(&pem).map_err(|e| format!("--ca-cert {path}: {e}"))?;
        b = b.tls_built_in_root_certs(false).add_root_certificate(ca);
    }
    let http = b.build().map_err(|e| e.to_string())?;
    let host = host.trim_end_matches('/');
    let base = if host.starts_with("http://") || host.starts_with("https://") {
        host.to_string()
    } else if ca_cert.is_some() {
        format!("https://{host}")
    } else {
        format!("http://{host}")
    };
    Ok((http, base))
}

pub async fn run(args: SqlArgs) -> Result<(), String> {
    let (http, base) = http_client(&args.host, args.ca_cert.as_deref(), REQUEST_TIMEOUT_SECS)?;
    let client = Client {
        http,
        url: format!("{base}/v1/sql"),
        format: args.format.clone(),
        token: args.token.clone(),
        user: args.user.clone().map(|u| (u, args.password.clone())),
    };
    if let Some(sql) = args.sql {
        let out = client.run(&sql).await?;
        print!("{out}");
        return Ok(());
    }
    shell(&client).await
}

async fn shell(client: &Client) -> Result<(), String> {
    let mut rl = rustyline::DefaultEditor::new().map_err(|e| e.to_string())?;
    let history =
        std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".shoal_history"));
    if let Some(h) = &history {
        let _ = rl.load_history(h);
    }
    println!("Shoal SQL shell. End statements with ';'. \\q quits.");
    let mut buf = String::new();
    loop {
        let prompt = if buf.is_empty() { "shoal> " } else { "   ..> " };
        match rl.readline(prompt) {
            Ok(line) => {
                let t = line.trim();
                if buf.is_empty() && (t == "\\q" || t == "quit" || t == "exit") {
                    break;
                }
                if t.is_empty() {
                    continue;
                }
                buf.push_str(&line);
                buf.push('\n');
                if t.ends_with(';') {
                    let stmt = std::mem::take(&mut buf);
                    let _ = rl.add_history_entry(stmt.trim());
                    match client.run(&stmt).await {
                        Ok(out) => print!("{out}"),
                        Err(e) => eprintln!("{e}"),
                    }
                }
            }
            Err(rustyline::error::ReadlineError::Interrupted) => buf.clear(),
            Err(rustyline::error::ReadlineError::Eof) => break,
            Err(e) => return Err(e.to_string()),
        }
    }
    if let Some(h) = &history {
        let _ = rl.save_history(h);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_aligned_tables() {
        let v: Value = serde_json::from_str(
            r#"{"columns":[{"name":"symbol","type":"string"},{"name":"n","type":"integer"}],"rows":[["AAPL",3],["B",null]]}"#,
        )
        .expect("json");
        let out = render(&v);
        assert_eq!(
            out,
            " symbol | n\n--------+------\n AAPL   | 3\n B      | NULL\n(2 rows)\n"
        );
    }
}
