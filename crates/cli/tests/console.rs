//! The web console (`GET /`) against real nodes: the page and its files as served, a 401
//! the console can handle without the browser's own login dialog, and the console driven
//! in a real headless Chromium (tests/console/console_test.py, Selenium) on a three-node
//! cluster and on a node that requires a login.
//!
//! The browser tests need `chromium`, `chromedriver` and Selenium. As root with apt-get the
//! browser is installed from Debian's packages (as `.ci/run` does) and Selenium goes into
//! the tests' virtualenv; otherwise they print SKIP and pass. Their screenshots go to
//! `$SHOAL_ARTIFACTS_DIR` (else the target directory's tmp/) and the log names the path.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::Node;

/// How long the browser script may take in all (each of its waits has its own deadline).
const SCRIPT_DEADLINE: Duration = Duration::from_secs(300);

/// The script that drives the console (found from the directory cargo runs the test in:
/// see `shoal_common::fuzz::repo_root`).
fn script() -> PathBuf {
    shoal_common::fuzz::repo_root().join("crates/cli/tests/console/console_test.py")
}

/// `GET /` is the console's page whatever the client accepts, its script and style sheet
/// are served with their types, nothing is cached stale, and the other routes still answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_is_served_at_the_root() {
    let dir = tempfile::tempdir().expect("tmp");
    let node = Node::start(&dir.path().join("data"), &[]).await;
    let http = node.http();
    let get = |path: &str| http.get(node.url(path)).header("accept", "*/*").send();

    let page = get("/").await.expect("GET /");
    assert_eq!(page.status(), 200);
    let header = |r: &reqwest::Response, name: &str| {
        r.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    assert_eq!(header(&page, "content-type"), "text/html; charset=utf-8");
    assert_eq!(header(&page, "cache-control"), "no-cache");
    let csp = header(&page, "content-security-policy");
    assert!(csp.contains("script-src 'self'"), "{csp}");
    let html = page.text().await.expect("body");
    assert!(
        html.contains(r#"<script type="module" src="console/app.js"></script>"#),
        "{html}"
    );

    let js = get("/console/app.js").await.expect("GET app.js");
    assert_eq!(js.status(), 200);
    assert_eq!(
        header(&js, "content-type"),
        "text/javascript; charset=utf-8"
    );
    assert_eq!(header(&js, "cache-control"), "no-cache");
    let js = js.text().await.expect("body");
    assert!(
        js.contains("v1/sql") && js.contains("function "),
        "not the app"
    );

    let css = get("/console/style.css").await.expect("GET style.css");
    assert_eq!(css.status(), 200);
    assert_eq!(header(&css, "content-type"), "text/css; charset=utf-8");

    assert_eq!(get("/console/nope.js").await.expect("GET").status(), 404);
    assert_eq!(get("/health/ready").await.expect("ready").status(), 200);
    assert_eq!(get("/metrics").await.expect("metrics").status(), 200);
    assert_eq!(node.sql("SELECT 1").await.0, 200);
}

/// On a node that requires logins the page still loads (it holds no data), SQL answers
/// 401, and a request marked as a script's (`X-Requested-With`, as the console sends)
/// gets its 401 without `WWW-Authenticate`, so the browser leaves the login to the page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_gets_its_401_without_a_basic_challenge() {
    let dir = tempfile::tempdir().expect("tmp");
    let node = secured_node(dir.path()).await;
    let http = node.http();
    assert_eq!(
        http.get(node.url("/"))
            .send()
            .await
            .expect("GET /")
            .status(),
        200
    );

    let plain = http
        .post(node.url("/v1/sql"))
        .body("SELECT 1")
        .send()
        .await
        .expect("sql");
    assert_eq!(plain.status(), 401);
    assert!(plain.headers().get("www-authenticate").is_some());

    let script = http
        .post(node.url("/v1/sql"))
        .header("x-requested-with", "shoal-console")
        .header("content-type", "application/json")
        .body(r#"{"sql": "SELECT 1"}"#)
        .send()
        .await
        .expect("sql");
    assert_eq!(script.status(), 401);
    assert!(script.headers().get("www-authenticate").is_none());
    let v: serde_json::Value = script.json().await.expect("json");
    assert_eq!(v["sqlstate"], "28000", "{v}");

    let admin = http
        .post(node.url("/v1/sql"))
        .header("x-requested-with", "shoal-console")
        .basic_auth("admin", Some(ADMIN_PW))
        .body("SELECT 1")
        .send()
        .await
        .expect("sql");
    assert_eq!(admin.status(), 200);
}

/// A three-node cluster with known rows, driven in Chromium: the Cluster page lists the
/// three nodes ALIVE with rates, the Vshards and Tables pages fill, and the SQL page finds
/// the rows and draws them as a chart, with nothing SEVERE in the browser's console.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_in_a_real_browser() {
    let tools = match browser_tools() {
        Ok(tools) => tools,
        Err(why) => {
            println!("SKIP: {why}");
            return;
        }
    };
    let dir = tempfile::tempdir().expect("tmp");
    let dirs: Vec<PathBuf> = (1..=3).map(|i| dir.path().join(format!("n{i}"))).collect();
    let refs: Vec<&Path> = dirs.iter().map(PathBuf::as_path).collect();
    let nodes = support::cluster(&refs).await;

    assert_eq!(nodes[1].write(&probe_rows()).await.0, 204);
    support::eventually("the probe rows readable on node 1", || async {
        let rows = support::rows(&nodes[0], "SELECT count(*) FROM console_probe").await?;
        (rows[0][0].as_i64() == Some(10)).then_some(())
    })
    .await;

    let ok = run_script(
        tools,
        &[
            "--url",
            &nodes[0].url("/"),
            "--nodes",
            "3",
            "--table",
            "console_probe",
            "--sql",
            "SELECT ts, host, usage FROM console_probe ORDER BY host, ts",
            "--expect-row",
            r#"["2024-03-01T00:00:00Z", "h1", "10.5"]"#,
            "--expect-row",
            r#"["2024-03-01T00:04:00Z", "h2", "24.25"]"#,
            "--chart",
        ],
        "console-cluster.png",
    )
    .await;
    assert!(
        ok,
        "the console failed in the browser (its output is above)"
    );
}

/// On a node with users, the console asks for a login, shows the node's 401 for a wrong
/// password, and works once logged in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_logs_in_in_a_real_browser() {
    let tools = match browser_tools() {
        Ok(tools) => tools,
        Err(why) => {
            println!("SKIP: {why}");
            return;
        }
    };
    let dir = tempfile::tempdir().expect("tmp");
    let node = secured_node(dir.path()).await;
    let r = node
        .http()
        .post(node.url("/write?db=test"))
        .basic_auth("admin", Some(ADMIN_PW))
        .body(probe_rows())
        .send()
        .await
        .expect("write");
    assert_eq!(r.status(), 204);

    let login = format!("admin:{ADMIN_PW}");
    let ok = run_script(
        tools,
        &[
            "--url",
            &node.url("/"),
            "--nodes",
            "1",
            "--login",
            &login,
            "--sql",
            "SELECT ts, host, usage FROM console_probe WHERE host = 'h1' ORDER BY ts",
            "--expect-row",
            r#"["2024-03-01T00:01:00Z", "h1", "11.5"]"#,
            "--chart",
        ],
        "console-login.png",
    )
    .await;
    assert!(
        ok,
        "the console failed in the browser (its output is above)"
    );
}

const ADMIN_PW: &str = "c0nsole-Pa55";

async fn secured_node(dir: &Path) -> Node {
    let pw_file = dir.join("admin-password");
    std::fs::write(&pw_file, format!("{ADMIN_PW}\n")).expect("write password file");
    Node::start(
        &dir.join("data"),
        &[
            "--init-admin-password-file",
            pw_file.to_str().expect("utf8"),
        ],
    )
    .await
}

/// Two hosts, five minutes each, from 2024-03-01T00:00:00Z; h1 reads 10.5, 11.5, …,
/// h2 20.25, 21.25, ….
fn probe_rows() -> String {
    let t0: i64 = 1_709_251_200_000_000_000;
    let minute: i64 = 60_000_000_000;
    let mut body = String::new();
    for (host, base) in [("h1", 10.5), ("h2", 20.25)] {
        for i in 0..5i64 {
            let usage = base + i as f64;
            body.push_str(&format!(
                "console_probe,host={host} usage={usage} {}\n",
                t0 + i * minute
            ));
        }
    }
    body
}

/// What the browser script needs: Chromium, its driver and a python with Selenium.
struct Tools {
    python: PathBuf,
    chromium: PathBuf,
    chromedriver: PathBuf,
}

/// One browser at a time: the tests of this file run in parallel, on small CI machines.
static ONE_BROWSER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Runs the console script with `args` plus the tools and a screenshot path; prints its
/// output and the screenshot's path. Whether every check passed.
async fn run_script(tools: &Tools, args: &[&str], screenshot: &str) -> bool {
    let _browser = ONE_BROWSER.lock().await;
    let shots = std::env::var_os("SHOAL_ARTIFACTS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")));
    std::fs::create_dir_all(&shots).expect("screenshot directory");
    let shot = shots.join(screenshot);
    let run = tokio::process::Command::new(&tools.python)
        .arg(script())
        .args(args)
        .arg("--screenshot")
        .arg(&shot)
        .arg("--chromium")
        .arg(&tools.chromium)
        .arg("--chromedriver")
        .arg(&tools.chromedriver)
        // Selenium must not go looking for a browser or driver on the network.
        .env("SE_OFFLINE", "true")
        .kill_on_drop(true)
        .output();
    let out = match tokio::time::timeout(SCRIPT_DEADLINE, run).await {
        Ok(out) => out.expect("run the console script"),
        Err(_) => panic!(
            "the console script took over {} s",
            SCRIPT_DEADLINE.as_secs()
        ),
    };
    println!("{}", String::from_utf8_lossy(&out.stdout));
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    println!("console screenshot: {}", shot.display());
    out.status.success()
}

/// The first of `names` found on PATH.
fn on_path(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|d| names.iter().map(move |n| d.join(n)))
        .find(|p| p.is_file())
}

/// Chromium, chromedriver and Selenium, looked for (and installed) once per test process;
/// `Err` says why they are not to be had.
fn browser_tools() -> Result<&'static Tools, &'static str> {
    static TOOLS: std::sync::OnceLock<Result<Tools, String>> = std::sync::OnceLock::new();
    TOOLS
        .get_or_init(find_browser_tools)
        .as_ref()
        .map_err(String::as_str)
}

/// Chromium, chromedriver and Selenium; as root with apt-get the browser is installed from
/// Debian's packages first.
fn find_browser_tools() -> Result<Tools, String> {
    const BROWSERS: &[&str] = &[
        "chromium",
        "chromium-browser",
        "google-chrome",
        "google-chrome-stable",
    ];
    let find = || Some((on_path(BROWSERS)?, on_path(&["chromedriver"])?));
    if find().is_none() {
        let root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
        let apt = Command::new("apt-get").arg("--version").output().is_ok();
        if root && apt {
            let installed = Command::new("sh")
                .arg("-c")
                .arg("apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null")
                .env("DEBIAN_FRONTEND", "noninteractive")
                .status()
                .is_ok_and(|s| s.success());
            if !installed {
                println!("apt-get could not install chromium and chromium-driver");
            }
        }
    }
    let Some((chromium, chromedriver)) = find() else {
        return Err("no chromium and chromedriver on PATH (.ci/run installs them)".into());
    };
    let Some(python) = support::selenium_venv() else {
        return Err("no Selenium in the tests' virtualenv (.ci/run installs it)".into());
    };
    Ok(Tools {
        python,
        chromium,
        chromedriver,
    })
}
