//! The official Chat21 client library, which nobody here wrote, against the engine: the npm
//! package `@chat21/chat21-server` 0.2.21 ships `mqttclient/chat21client.js` (v0.1.11), the
//! client the web widget is built on. `tests/js/real_client.js` drives it over Web-MQTT and
//! the HTTP API (groups create/join/leave/set members, group data, conversation detail and
//! archived detail, last conversations, last messages, archive, device instance), checking
//! what its callbacks see. The packages come from `npm ci` in `tests/js` (run here when
//! missing, as `.ci/run` does).

use crate::common::*;
use std::path::Path;
use std::process::Command;

/// `tests/js/node_modules`, installed from the lockfile when missing.
fn node_modules() -> std::path::PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/js");
    if !dir
        .join("node_modules/@chat21/chat21-server/mqttclient/chat21client.js")
        .exists()
    {
        let st = Command::new("npm")
            .args(["ci", "--ignore-scripts", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .status()
            .expect("npm (Node.js) is needed for the real-client test: install nodejs and npm");
        assert!(st.success(), "npm ci in tests/js failed");
    }
    dir
}

#[tokio::test]
async fn the_official_chat21_client_works_unchanged() {
    let dir = node_modules();
    let b = broker();
    // The client hardcodes `tilechat` in its inbox subscription and archive topic: the
    // engine serves that app (the only test that does, so no other test's engine shares its
    // bindings).
    let e = EngineTask::start(b, &[("APP_ID", "tilechat")]).await;
    let users: Vec<String> = (0..3).map(|_| fresh("U")).collect();
    let mut cmd = Command::new("node");
    cmd.arg("real_client.js")
        .current_dir(&dir)
        .env("API_ENDPOINT", format!("http://127.0.0.1:{}/api", e.http_port))
        .env("MQTT_ENDPOINT", &b.ws_url)
        .env("GROUP_ID", fresh("group-"));
    for (i, u) in users.iter().enumerate() {
        cmd.env(format!("U{}_ID", i + 1), u);
        cmd.env(format!("U{}_JWT", i + 1), b.token("tilechat", u));
    }
    let out =
        tokio::task::spawn_blocking(move || cmd.output().expect("node (Node.js) is needed for the real-client test"))
            .await
            .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "the real client failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("every step passed"), "{stdout}");
}
