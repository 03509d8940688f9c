//! `shoal node`: the node admin commands, a client of the admin API (`/admin/v1/...`) of
//! any node of the cluster.

use std::io::Read;

use clap::{Args, Subcommand};
use serde_json::Value;

#[derive(Args, Debug)]
pub struct NodeArgs {
    /// Any node's HTTP address.
    #[arg(
        long,
        env = "SHOAL_HTTP_ADDR",
        default_value = "127.0.0.1:7480",
        global = true
    )]
    host: String,
    /// The admin token (`admin_token` on the nodes); better from the environment.
    #[arg(long, env = "SHOAL_ADMIN_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// Print the admin API's JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    /// The cluster CA (`certs/ca.crt`) for nodes serving HTTPS; implies https://.
    #[arg(long, env = "SHOAL_CA_CERT", global = true)]
    ca_cert: Option<String>,
    #[command(subcommand)]
    command: NodeCommand,
}

#[derive(Subcommand, Debug)]
enum NodeCommand {
    /// Every node: id, addresses, lifecycle, SWIM state, replicas, leaderships, disk, version, uptime.
    Ls,
    /// One node's state.
    Status { id: u64 },
    /// Drains a node and keeps it up: unready, leading nothing, until `undrain` or a restart.
    Drain { id: u64 },
    /// Ends a node's drain.
    Undrain { id: u64 },
    /// Moves every replica off these nodes and retires them for good (refused, with every
    /// reason, if it could not finish). A node that is down can be decommissioned too.
    Decommission {
        #[arg(required = true)]
        ids: Vec<u64>,
        /// Wait until every one is DECOMMISSIONED, printing progress.
        #[arg(long)]
        wait: bool,
    },
    /// Cancels a decommission still in progress (the node is ACTIVE again).
    Recommission { id: u64 },
    /// Sets a user's password (`ALTER USER` without SQL): with the admin token, the way
    /// back in when every admin password is lost.
    SetPassword {
        user: String,
        /// A file holding the new password (surrounding whitespace ignored); `-` reads
        /// it from standard input. Never an argument, where `ps` would show it.
        #[arg(long, required = true)]
        password_file: String,
    },
}

/// The new password from `file` (`-`: standard input), surrounding whitespace trimmed.
fn read_password(file: &str) -> Result<String, String> {
    let text = if file == "-" {
        let mut s = String::new();
        std::io::stdin()
            .take(64 * 1024)
            .read_to_string(&mut s)
            .map_err(|e| format!("reading the password from standard input: {e}"))?;
        s
    } else {
        std::fs::read_to_string(file).map_err(|e| format!("{file}: {e}"))?
    };
    let pw = text.trim().to_string();
    if pw.is_empty() {
        return Err(format!("{file}: the password is empty"));
    }
    Ok(pw)
}

/// How often `decommission --wait` looks at the progress.
const WAIT_POLL_MS: u64 = 2_000;

/// `decommission --wait` gives up after the node it asks has not answered for this long
/// (the decommission itself goes on in the cluster).
const WAIT_UNREACHABLE_MS: u64 = 60_000;

/// Longest an admin request may take (a drain waits `drain_wait_unready_ms`, then hands
/// leaderships off).
const REQUEST_TIMEOUT_SECS: u64 = 180;

/// The columns `shoal node ls` shows, from `system.nodes`.
const LS_COLUMNS: &[&str] = &[
    "node_id",
    "http_addr",
    "lifecycle",
    "state",
    "replicas",
    "leaderships",
    "data_bytes",
    "disk_free_bytes",
    "version",
    "uptime_s",
];

pub async fn run(args: NodeArgs) -> Result<(), String> {
    let (http, base) =
        crate::client::http_client(&args.host, args.ca_cert.as_deref(), REQUEST_TIMEOUT_SECS)?;
    let api = Api {
        http,
        base,
        token: args.token.clone(),
    };
    let get = reqwest::Method::GET;
    let post = reqwest::Method::POST;
    let v = match &args.command {
        NodeCommand::Ls => api.call(get, "/admin/v1/nodes".into(), None).await?,
        NodeCommand::Status { id } => api.call(get, format!("/admin/v1/nodes/{id}"), None).await?,
        NodeCommand::Drain { id } => {
            api.call(post, format!("/admin/v1/nodes/{id}/drain"), None)
                .await?
        }
        NodeCommand::Undrain { id } => {
            api.call(post, format!("/admin/v1/nodes/{id}/undrain"), None)
                .await?
        }
        NodeCommand::Decommission { ids, .. } => {
            let body = serde_json::json!({ "nodes": ids });
            api.call(post, "/admin/v1/decommission".into(), Some(body))
                .await?
        }
        NodeCommand::Recommission { id } => {
            api.call(post, format!("/admin/v1/nodes/{id}/recommission"), None)
                .await?
        }
        NodeCommand::SetPassword {
            user,
            password_file,
        } => {
            let body = serde_json::json!({ "password": read_password(password_file)? });
            api.call(post, format!("/admin/v1/users/{user}/password"), Some(body))
                .await?
        }
    };
    if args.json {
        println!("{v}");
        return Ok(());
    }
    match args.command {
        NodeCommand::Ls => {
            let rows = v
                .get("nodes")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            print!("{}", table(&rows));
        }
        NodeCommand::Status { .. } => {
            if let Some(o) = v.as_object() {
                let w = o.keys().map(String::len).max().unwrap_or(0);
                for (k, x) in o {
                    println!("{k:<w$}  {}", cell(x));
                }
            }
        }
        NodeCommand::Drain { id } => {
            let left = v
                .get("still_leading")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            println!(
                "node {id} drained: unready for {} ms, leaderships handed off in {} ms{}",
                v.get("unready_wait_ms")
                    .and_then(Value::as_u64)
                    .unwrap_or(0),
                v.get("handoff_ms").and_then(Value::as_u64).unwrap_or(0),
                if left == 0 {
                    String::new()
                } else {
                    format!("; {left} groups found no peer to lead them")
                }
            );
        }
        NodeCommand::Undrain { id } => println!("node {id} undrained"),
        NodeCommand::Recommission { id } => {
            println!("node {id} recommissioned: ACTIVE again")
        }
        NodeCommand::SetPassword { user, .. } => println!("password of {user} set"),
        NodeCommand::Decommission { ids, wait } => {
            let list: Vec<String> = ids.iter().map(u64::to_string).collect();
            println!("decommissioning node(s) {}", list.join(", "));
            if wait {
                wait_decommissioned(&api, &ids).await?;
            }
        }
    }
    Ok(())
}

/// The admin API of one node.
struct Api {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Api {
    /// One request; a non-2xx answer is an error carrying the API's message.
    async fn call(
        &self,
        method: reqwest::Method,
        path: String,
        body: Option<Value>,
    ) -> Result<Value, String> {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| format!("cannot reach {}: {e}", self.base))?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| e.to_string())?;
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if !status.is_success() {
            let msg = v
                .get("error")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| v.to_string());
            return Err(format!("{path} ({}): {msg}", status.as_u16()));
        }
        Ok(v)
    }
}

/// Polls each node until it is DECOMMISSIONED, printing its progress when it changes.
async fn wait_decommissioned(api: &Api, ids: &[u64]) -> Result<(), String> {
    let mut last: std::collections::BTreeMap<u64, String> = Default::default();
    let mut left: Vec<u64> = ids.to_vec();
    let mut answered = std::time::Instant::now();
    while !left.is_empty() {
        tokio::time::sleep(std::time::Duration::from_millis(WAIT_POLL_MS)).await;
        let mut still = vec![];
        for id in left {
            let v = match api
                .call(reqwest::Method::GET, format!("/admin/v1/nodes/{id}"), None)
                .await
            {
                Ok(v) => {
                    answered = std::time::Instant::now();
                    v
                }
                Err(e) if answered.elapsed().as_millis() < u128::from(WAIT_UNREACHABLE_MS) => {
                    eprintln!("node {id}: {e}; retrying");
                    still.push(id);
                    continue;
                }
                Err(e) => {
                    return Err(format!(
                        "no answer for {} s ({e}); the decommission goes on in the cluster: follow it with `shoal node ls` through another node",
                        WAIT_UNREACHABLE_MS / 1000
                    ))
                }
            };
            let state = v.get("lifecycle").and_then(Value::as_str).unwrap_or("");
            match state {
                "DECOMMISSIONED" => println!("node {id}: DECOMMISSIONED"),
                "DECOMMISSIONING" => {
                    let p = v.get("decommission").map(cell).unwrap_or_default();
                    if last.get(&id) != Some(&p) {
                        println!("node {id}: {p}");
                        last.insert(id, p);
                    }
                    still.push(id);
                }
                other => {
                    return Err(format!(
                        "node {id} is {other}: its decommission was cancelled"
                    ))
                }
            }
        }
        left = still;
    }
    Ok(())
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        x => x.to_string(),
    }
}

/// `system.nodes` rows (JSON objects) as an aligned table of [`LS_COLUMNS`].
fn table(rows: &[Value]) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            LS_COLUMNS
                .iter()
                .map(|c| r.get(*c).map(cell).unwrap_or_default())
                .collect()
        })
        .collect();
    let widths: Vec<usize> = LS_COLUMNS
        .iter()
        .enumerate()
        .map(|(i, c)| {
            cells
                .iter()
                .map(|r| r[i].len())
                .chain([c.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |r: Vec<String>| {
        r.iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
            + "\n"
    };
    let mut out = line(LS_COLUMNS.iter().map(|c| c.to_string()).collect());
    for r in cells {
        out += &line(r);
    }
    out
}
