//! The dashboard in a real browser: headless Chromium (Debian's package, installed by
//! `scripts/chromium.sh`) loads `GET /dashboard` while the ledger is stopped and invoices
//! pile up, and the page shows the lag and the ledger's group in status ERR (its partitions
//! STOP: nobody reads them); with the ledger back it shows the lag drain to zero and the
//! group OK.
//! A screenshot of each state is kept under `<target>/test-artifacts/`.
//!
//! Chromium runs with `--virtual-time-budget`: the page's timers run on a virtual clock
//! that only pauses while a fetch is in flight, so an 8 s budget lets the page poll
//! `/metrics` about eight times, each against the real server, in a second or two of real
//! time (checked on Chromium 156; `samples >= 2` below would fail if it stopped advancing).
//! The page reports its readings as plain `<output>` elements and `<body data-state>`, so
//! `--dump-dom` is enough and no devtools-protocol client is needed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::process::Command;
use uuid::Uuid;

use crate::helpers::*;

/// The browser: `DHANMAN_CHROMIUM`, else what `scripts/chromium.sh` finds or installs.
async fn chromium() -> String {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/chromium.sh");
    let output = Command::new(&script)
        .output()
        .await
        .expect("run scripts/chromium.sh");
    assert!(
        output.status.success(),
        "scripts/chromium.sh failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("DHANMAN_CHROMIUM="))
        .expect("a DHANMAN_CHROMIUM= line from scripts/chromium.sh")
        .to_string()
}

/// Where screenshots are kept: `test-artifacts/` in the target dir the binary was built in.
fn artifacts() -> PathBuf {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_dhanman"));
    let target = bin
        .ancestors()
        .nth(2)
        .expect("the binary sits in <target>/<profile>/");
    let dir = target.join("test-artifacts");
    std::fs::create_dir_all(&dir).expect("create the test-artifacts dir");
    dir
}

/// Loads `url` in headless Chromium for a virtual 8 s and returns the DOM it ended with; the
/// screenshot, when asked for, is of that same page at that same moment.
async fn browse(chromium: &str, url: &str, screenshot: Option<&Path>) -> Shown {
    // A profile of its own: runs of this test (and a developer's browser) never share one.
    let profile = std::env::temp_dir().join(format!("dhanman-chromium-{}", Uuid::new_v4()));
    let mut command = Command::new(chromium);
    command
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--virtual-time-budget=8000",
            "--window-size=1280,900",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .kill_on_drop(true);
    if let Some(path) = screenshot {
        command.arg(format!("--screenshot={}", path.display()));
    }
    let output = tokio::time::timeout(Duration::from_secs(60), command.arg(url).output())
        .await
        .expect("chromium finished within 60 s")
        .expect("run chromium");
    let _ = std::fs::remove_dir_all(&profile);
    assert!(
        output.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Shown::read(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// What the page showed when the budget ran out.
#[derive(Debug)]
struct Shown {
    state: String,
    samples: u64,
    lag_total: f64,
    lag_peak: f64,
    dom: String,
}

impl Shown {
    fn read(dom: String) -> Shown {
        // A reading the page has not written yet (`–`) is -1: never a match for a count.
        let number = |id| output(&dom, id).parse().unwrap_or(-1.0);
        let (lag_total, lag_peak) = (number("lag-total"), number("lag-peak"));
        Shown {
            state: between(&dom, "<body data-state=\"", "\"").unwrap_or_default(),
            samples: output(&dom, "samples").parse().unwrap_or(0),
            lag_total,
            lag_peak,
            dom,
        }
    }
}

/// The text of `<output id="{id}">`.
fn output(dom: &str, id: &str) -> String {
    let open = format!("<output id=\"{id}\">");
    between(dom, &open, "</output>").unwrap_or_default()
}

/// A row of the page's group table for a group in status ERR (the page's stylesheet names
/// the attribute too, without the cell after it).
const ERR_ROW: &str = "data-status=\"ERR\"><td";

/// The status the page's group table shows for `group`: its row's `data-status`.
fn group_status(dom: &str, group: &str) -> Option<String> {
    let row = format!("<tr data-group=\"{group}\" data-status=\"");
    between(dom, &row, "\"")
}

fn between(text: &str, open: &str, close: &str) -> Option<String> {
    let start = text.find(open)? + open.len();
    let len = text[start..].find(close)?;
    Some(text[start..start + len].to_string())
}

/// Browses until `done` holds for what the page shows; keeps that session's screenshot as
/// the artifact `name` and prints its path.
async fn watch(
    chromium: &str,
    url: &str,
    name: &str,
    what: &str,
    timeout: Duration,
    done: fn(&Shown) -> bool,
) -> Shown {
    let artifact = artifacts().join(name);
    // Attempts get names of their own that end like `name`: Chromium picks the image format
    // from the extension, and refuses (with an empty DOM) any it does not know.
    let shown = eventually(what, timeout, || {
        let attempt = artifacts().join(format!("{}.{name}", Uuid::new_v4().simple()));
        let artifact = &artifact;
        async move {
            let shown = browse(chromium, url, Some(&attempt)).await;
            eprintln!(
                "dashboard: state {}, {} polls, lag {} (peak {})",
                shown.state, shown.samples, shown.lag_total, shown.lag_peak
            );
            if done(&shown) {
                std::fs::rename(&attempt, artifact).expect("keep the screenshot");
                Some(shown)
            } else {
                let _ = std::fs::remove_file(&attempt);
                None
            }
        }
    })
    .await;
    println!("dashboard screenshot: {}", artifact.display());
    shown
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_lag_while_the_ledger_is_stopped_and_the_drain_after() {
    let chromium = chromium().await;
    let db = TestDb::new().await;
    let setup = Setup::new(&db);
    let sampled = [
        ("DHANMAN_LAG_INTERVAL_MS", "200"),
        ("DHANMAN_LAG_WINDOW", "3"),
    ];
    let api_proc = setup.spawn_with_env(&["api"], &sampled);
    setup.wait_ready(&api_proc).await;
    let _relay = setup.spawn(&["relay"]);
    let mut ledger = setup.spawn(&["process", "ledger"]);
    let ledger_group = format!("{}dhanman.ledger", setup.topic_prefix);
    let (_, key) = create_org(&setup, "Dashboard Heights").await;
    let api = Api::new(&setup.base_url(), &key);
    let customer = api.customer("Ira").await;
    let (_, token) = invoice(&api, customer, "100.00").await;
    ledger_applied(&api, &token).await;

    // The page and its bundled library are served with their types.
    let http = reqwest::Client::new();
    for (path, kind) in [
        ("/dashboard", "text/html"),
        ("/dashboard/dashboard.js", "text/javascript"),
        ("/dashboard/uplot.js", "text/javascript"),
        ("/dashboard/uplot.css", "text/css"),
    ] {
        let response = http
            .get(format!("{}{path}", setup.base_url()))
            .send()
            .await
            .expect("GET a dashboard asset");
        assert_eq!(response.status(), 200, "{path}");
        let content_type = response.headers()["content-type"].to_str().unwrap();
        assert!(content_type.starts_with(kind), "{path}: {content_type}");
        assert!(response.headers().contains_key("cache-control"), "{path}");
    }

    // The ledger stops (as a service manager stops it: it leaves its group, so the ledger
    // started below is handed the partitions at once); thirty invoices wait on the topic.
    let stopped = ledger.stop().await;
    assert!(stopped.success(), "{stopped}: {}", ledger.log_text());
    for _ in 0..30 {
        invoice(&api, customer, "10.00").await;
    }
    let url = format!("{}/dashboard", setup.base_url());
    let lagging = watch(
        &chromium,
        &url,
        "dashboard-lagging.png",
        "the dashboard to show the lag",
        Duration::from_secs(60),
        |shown| shown.lag_total >= 30.0 && shown.dom.contains(ERR_ROW),
    )
    .await;
    assert_eq!(
        group_status(&lagging.dom, &ledger_group).as_deref(),
        Some("ERR"),
        "{}",
        lagging.dom
    );
    assert_eq!(lagging.state, "live", "{}", lagging.dom);
    // Virtual time moved the page's poll timer on: several polls in one budget.
    assert!(lagging.samples >= 2, "{}", lagging.dom);
    let seconds: f64 = output(&lagging.dom, "lag-max-seconds")
        .parse()
        .unwrap_or(0.0);
    assert!(seconds > 0.0, "{}", lagging.dom);
    assert_eq!(output(&lagging.dom, "dlq-total"), "0", "{}", lagging.dom);
    assert!(
        lagging.dom.contains("class=\"uplot"),
        "no chart drawn: {}",
        lagging.dom
    );

    // The ledger is back: the page shows the lag drain to zero.
    let _ledger = setup.spawn(&["process", "ledger"]);
    let drained = watch(
        &chromium,
        &url,
        "dashboard-drained.png",
        "the dashboard to show the drain",
        Duration::from_secs(90),
        |shown| shown.lag_total == 0.0 && !shown.dom.contains(ERR_ROW),
    )
    .await;
    assert_eq!(drained.state, "live", "{}", drained.dom);
    assert_eq!(
        group_status(&drained.dom, &ledger_group).as_deref(),
        Some("OK"),
        "{}",
        drained.dom
    );
    // Each load is a fresh page, so whether one session saw the fall itself is luck; say so.
    println!(
        "drained session: {} polls, peak lag in its window {}",
        drained.samples, drained.lag_peak
    );
    db.drop_db().await;
}
