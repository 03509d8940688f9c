//! The harness' HTTP client (it runs inside the hub namespace) and how a response maps
//! to a history outcome: a write is `Ok` only on 204, `Fail` only when it certainly did
//! not happen (the connection was refused, or a 4xx rejected it), and `Info` (unknown)
//! otherwise — a timeout or a 503 may still have committed.

use std::time::Duration;

/// One request's deadline: long enough to ride out a failover, short enough that a
/// partitioned request turns into an `Info` and the process moves on.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Debug)]
pub enum Outcome {
    Ok(Option<i64>),
    Fail(String),
    Info(String),
}

/// The admin token every node of a run is started with.
pub const ADMIN_TOKEN: &str = "shoal-faults-admin";

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    /// Base URL per host, index 0 = host 1.
    urls: Vec<String>,
}

impl Client {
    pub fn new(urls: Vec<String>) -> Client {
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(Duration::from_secs(1))
            .pool_max_idle_per_host(8)
            .build()
            .expect("reqwest client");
        Client { http, urls }
    }

    /// `POST /admin/v1/<path>` on host `h`; the JSON answer on 2xx.
    pub async fn admin(&self, h: usize, path: &str) -> Result<serde_json::Value, String> {
        let r = self
            .http
            .post(format!("{}/admin/v1/{path}", self.urls[h - 1]))
            .bearer_auth(ADMIN_TOKEN)
            .timeout(Duration::from_secs(60))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = r.status();
        let text = r.text().await.unwrap_or_default();
        if !status.is_success() {
            return Err(format!("{status} {text}"));
        }
        serde_json::from_str(&text).map_err(|e| format!("{e}: {text}"))
    }

    /// Line protocol to host `h` (1-based) with an idempotency key.
    pub async fn write(&self, h: usize, body: String, key: &str) -> Outcome {
        let url = format!("{}/write?db=faults", self.urls[h - 1]);
        let r = self
            .http
            .post(url)
            .header("Idempotency-Key", key)
            .body(body)
            .send()
            .await;
        match r {
            Ok(resp) if resp.status().as_u16() == 204 => Outcome::Ok(None),
            Ok(resp) if resp.status().is_client_error() => Outcome::Fail(format!(
                "{} {}",
                resp.status(),
                resp.text().await.unwrap_or_default()
            )),
            Ok(resp) => Outcome::Info(format!(
                "{} {}",
                resp.status(),
                resp.text().await.unwrap_or_default()
            )),
            Err(e) if e.is_connect() => Outcome::Fail(format!("connect: {e}")),
            Err(e) => Outcome::Info(e.to_string()),
        }
    }

    /// SQL on host `h` with a read consistency; the JSON body on 200.
    pub async fn sql(
        &self,
        h: usize,
        sql: &str,
        consistency: &str,
    ) -> Result<serde_json::Value, String> {
        let url = format!("{}/v1/sql?read_consistency={consistency}", self.urls[h - 1]);
        let resp = self
            .http
            .post(url)
            .body(sql.to_string())
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| e.to_string())?;
        if status.as_u16() != 200 {
            return Err(format!("{status} {text}"));
        }
        serde_json::from_str(&text).map_err(|e| format!("bad JSON: {e}"))
    }

    /// The rows of a query as JSON arrays.
    pub async fn rows(
        &self,
        h: usize,
        sql: &str,
        consistency: &str,
    ) -> Result<Vec<serde_json::Value>, String> {
        let v = self.sql(h, sql, consistency).await?;
        Ok(v["rows"].as_array().cloned().unwrap_or_default())
    }

    pub async fn ready(&self, h: usize) -> bool {
        let url = format!("{}/health/ready", self.urls[h - 1]);
        matches!(self.http.get(url).send().await, Ok(r) if r.status().as_u16() == 200)
    }
}
