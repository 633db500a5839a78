//! Packaging checked by the tools that read it: the systemd unit by `systemd-analyze verify`,
//! `docker-compose.yml` by the Compose Specification's JSON schema, and the `.deb` by
//! building it with cargo-deb, installing it with dpkg into a scratch root (no change to this
//! machine) and running the installed binary against the test broker.

mod common;

use common::*;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// `systemd-analyze verify` of the unit with its binary at `bin`: no complaint at all.
fn verify_unit(unit: &Path, bin: &Path) {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(unit).unwrap();
    assert!(
        text.contains("/usr/bin/chat21-engine"),
        "the unit runs /usr/bin/chat21-engine"
    );
    let copy = dir.path().join("chat21-engine.service");
    std::fs::write(&copy, text.replace("/usr/bin/chat21-engine", bin.to_str().unwrap())).unwrap();
    let (ok, out) = run(Command::new("systemd-analyze").args(["verify", "--man=no"]).arg(&copy));
    assert!(ok && out.trim().is_empty(), "systemd-analyze verify:\n{out}");
}

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    verify_unit(
        &Path::new(ROOT).join("deploy/systemd/chat21-engine.service"),
        Path::new(ENGINE),
    );
}

/// A compose file as Compose reads it: YAML merge keys (`<<: *anchor`) applied.
fn compose_file(name: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(Path::new(ROOT).join(name)).unwrap();
    let mut yaml: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).unwrap();
    yaml.apply_merge().unwrap();
    serde_json::to_value(yaml).unwrap()
}

#[test]
fn the_compose_files_are_valid_compose_and_set_only_engine_variables() {
    let mut schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(ROOT).join("tests/fixtures/compose-spec.json")).unwrap(),
    )
    .unwrap();
    // Its `$schema` names draft-07 by a URI the library does not know offline (no `#`, https):
    // the canonical one, so the meta-schema is the built-in one and nothing is fetched.
    schema["$schema"] = "http://json-schema.org/draft-07/schema#".into();
    let validator = jsonschema::draft7::new(&schema).expect("the Compose Specification schema compiles");
    // The single engine, and the cluster (three brokers, three engines, PostgreSQL).
    for (file, engines) in [
        ("docker-compose.yml", &["engine"][..]),
        ("docker-compose.cluster.yml", &["engine1", "engine2", "engine3"][..]),
    ] {
        let compose = compose_file(file);
        let errors: Vec<String> = validator
            .iter_errors(&compose)
            .map(|e| format!("{e} at {}", e.instance_path))
            .collect();
        assert!(errors.is_empty(), "{file} is not valid Compose:\n{}", errors.join("\n"));
        // The schema does bite: a restart policy that is a number is not Compose.
        let mut broken = compose.clone();
        broken["services"][engines[0]]["restart"] = 42.into();
        assert!(!validator.is_valid(&broken), "the schema let an invalid file through");
        // A variable the engine does not read is a typo that silently does nothing.
        for engine in engines {
            let env = compose["services"][engine]["environment"]
                .as_object()
                .unwrap_or_else(|| panic!("{file}: {engine}'s environment map"));
            for name in env.keys() {
                assert!(
                    chat21_engine::config::variable(name).is_some(),
                    "{file} sets {name} for {engine}, which the engine does not read"
                );
            }
        }
    }
}

#[tokio::test]
async fn the_deb_installs_and_its_binary_runs() {
    let b = broker();
    let dir = tempfile::tempdir().unwrap();
    let deb = dir.path().join("chat21-engine.deb");
    // The binary this test run built (the dev profile: a release build here would add
    // minutes); stripped, as a release package is. cargo-deb warns that it prefers release.
    let (ok, out) = run(Command::new("cargo")
        .current_dir(ROOT)
        .args(["deb", "--no-build", "--profile", "dev", "--strip", "-o"])
        .arg(&deb));
    assert!(ok, "cargo deb (installed by .ci/run: cargo install cargo-deb):\n{out}");
    let (_, depends) = run(Command::new("dpkg-deb").args(["-f"]).arg(&deb).arg("Depends"));
    assert!(depends.contains("libc6"), "{depends}");

    // Installed with dpkg into a scratch root: the files land where the unit and docs say.
    let root = dir.path().join("root");
    for d in ["var/lib/dpkg/info", "var/lib/dpkg/updates"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::write(root.join("var/lib/dpkg/status"), "").unwrap();
    let (ok, out) = run(Command::new("dpkg")
        .arg(format!("--root={}", root.display()))
        .args(["--force-depends", "--force-not-root", "-i"])
        .arg(&deb));
    assert!(ok, "dpkg -i:\n{out}");
    for f in [
        "usr/bin/chat21-engine",
        "lib/systemd/system/chat21-engine.service",
        "etc/chat21-engine/env.example",
        "usr/share/chat21-engine/rabbitmq/rabbitmq.conf",
        "usr/share/chat21-engine/rabbitmq/enabled_plugins",
        "usr/share/chat21-engine/rabbitmq/advanced.config.template",
        "usr/share/chat21-engine/rabbitmq/engine-permissions.sh",
        "usr/share/chat21-engine/rabbitmq/conf.d/10-listeners.conf",
        "usr/share/chat21-engine/policy.example.toml",
    ] {
        assert!(root.join(f).exists(), "{f} is not in the package");
    }
    let bin = root.join("usr/bin/chat21-engine");
    verify_unit(&root.join("lib/systemd/system/chat21-engine.service"), &bin);

    // The installed binary, with the installed example environment and this broker.
    let example = std::fs::read_to_string(root.join("etc/chat21-engine/env.example")).unwrap();
    let http_port = free_port();
    let app = fresh("deb");
    let mut cmd = Command::new(&bin);
    cmd.env_clear();
    for (k, v) in example
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
    {
        cmd.env(k, v);
    }
    cmd.env("RABBITMQ_URI", &b.amqp_uri)
        .env("JWT_SECRET", &b.jwt_secret)
        .env("JWT_KID", &b.jwt_kid)
        .env("APP_ID", &app)
        .env("QUEUE_NAME", format!("chat21.engine.{app}"))
        .env("DATABASE_URL", format!("sqlite://{}/deb.db", dir.path().display()))
        .env("HTTP_PORT", http_port.to_string())
        .env("HTTP_HOST", "127.0.0.1");
    let (ok, out) = run(cmd.arg("check-config"));
    assert!(ok, "check-config with the installed env.example:\n{out}");
    let mut serve = Command::new(&bin);
    serve
        .env_clear()
        .envs(cmd.get_envs().filter_map(|(k, v)| Some((k, v?))))
        .arg("serve");
    let mut child = serve.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok((200, _)) = http_get(http_port, "/readyz").await {
            break;
        }
        assert!(Instant::now() < deadline, "the installed engine was not ready in 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let status = child.wait().unwrap();
    assert!(status.success(), "the installed engine stopped with {status}");
}
