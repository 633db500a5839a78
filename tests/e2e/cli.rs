//! The binary's command line: token minting, configuration errors, --help.

use crate::common::ENGINE;
use std::process::{Command, Stdio};

/// Run the binary to completion. Every case here must exit on its own; it is killed
/// after 10 s so a configuration that unexpectedly validates cannot hang the suite (and the
/// broker address points at a closed port, never at the machine's own broker).
fn engine(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(ENGINE);
    cmd.env_clear()
        .args(args)
        .env("RABBITMQ_HOST", "127.0.0.1")
        .env("RABBITMQ_PORT", "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    // Outputs here are a few lines: they fit in the pipe buffers while we wait.
    child.wait_with_output().unwrap()
}

#[test]
fn token_command_mints_a_verifiable_user_token() {
    let secret = "cli-test-secret-0123456789";
    let out = engine(&["token", "USER1"], &[("JWT_SECRET", secret), ("APP_ID", "myapp")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8(out.stdout).unwrap();
    let claims = chat21_engine::jwt::Minter::new(secret, "tiledesk-key")
        .verify(token.trim())
        .unwrap();
    assert_eq!(claims.sub, "USER1");
    assert_eq!(claims.app_id, "myapp");
    assert_eq!(claims.exp - claims.iat, 30 * 86_400, "JWT_TTL default");
    assert!(claims
        .scope
        .contains(&"rabbitmq.read:*/amq.topic/apps.myapp.users.USER1.*".to_string()));

    let out = engine(&["token", "bad.user"], &[("JWT_SECRET", secret)]);
    assert_eq!(out.status.code(), Some(2));
    let out = engine(&["token", "U1", "--app", "a*b"], &[("JWT_SECRET", secret)]);
    assert_eq!(out.status.code(), Some(2), "an app id that is not an id");
    // Ids the broker would URL-decode or expand inside the scopes into someone else's.
    for id in ["%55%31", "%73ystem", "{app_id}", "{sub}"] {
        let out = engine(&["token", id], &[("JWT_SECRET", secret)]);
        assert_eq!(out.status.code(), Some(2), "{id}");
        assert!(out.stdout.is_empty());
    }
    // A trusted sender's token only when asked for by name.
    let out = engine(&["token", "system"], &[("JWT_SECRET", secret)]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--trusted"));
    let out = engine(&["token", "system", "--trusted"], &[("JWT_SECRET", secret)]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = engine(
        &["token", "bot", "--trusted"],
        &[("JWT_SECRET", secret), ("TRUSTED_SENDERS", "bot")],
    );
    assert!(out.status.success());
    let out = engine(&["token", "bot"], &[("JWT_SECRET", secret), ("TRUSTED_SENDERS", "bot")]);
    assert_eq!(out.status.code(), Some(2));
}

/// In the seed layout the token carries that layout's topics, leading empty word included;
/// it serves one app, so a token for another one is refused.
#[test]
fn token_command_follows_the_seed_layout() {
    let secret = "cli-test-secret-0123456789";
    let seed = [
        ("JWT_SECRET", secret),
        ("APP_ID", "myapp"),
        ("TOPIC_LAYOUT", "seed"),
        ("PATH_PREFIX", "/apps/myapp/users"),
    ];
    let out = engine(&["token", "USER1"], &seed);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8(out.stdout).unwrap();
    let claims = chat21_engine::jwt::Minter::new(secret, "tiledesk-key")
        .verify(token.trim())
        .unwrap();
    let topic_scopes: Vec<&str> = claims
        .scope
        .iter()
        .map(String::as_str)
        .filter(|s| s.contains("amq.topic"))
        .collect();
    assert_eq!(
        topic_scopes,
        [
            "rabbitmq.write:*/amq.topic/.apps.myapp.users.USER1.*.messages.outgoing",
            "rabbitmq.read:*/amq.topic/.apps.myapp.users.USER1.*",
        ]
    );
    let out = engine(&["token", "USER1", "--app", "otherapp"], &seed);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("seed layout serves one app"));
}

#[test]
fn configuration_errors_are_one_line_and_exit_2() {
    for (env, needle) in [
        (vec![("RABBITMQ_USER", "u"), ("RABBITMQ_PORT", "abc")], "RABBITMQ_PORT"),
        (vec![("RABBITMQ_USER", "u"), ("TOPIC_LAYOUT", "weird")], "TOPIC_LAYOUT"),
        (
            vec![("RABBITMQ_USER", "u"), ("PREFETCH_MESSAGES", "0")],
            "PREFETCH_MESSAGES",
        ),
        (vec![("RABBITMQ_USER", "u"), ("APP_ID", "a.b")], "APP_ID"),
        (vec![("RABBITMQ_USER", "u"), ("LOG_LEVEL", "info,a=b=c")], "LOG_LEVEL"),
        (vec![], "RABBITMQ_URI"),
        (
            vec![
                ("RABBITMQ_USER", "u"),
                ("PRESENCE_ENABLED", "true"),
                ("DATABASE_URL", "off"),
            ],
            "PRESENCE_ENABLED",
        ),
        (
            vec![("RABBITMQ_USER", "u"), ("RATE_LIMIT_BURST", "0")],
            "RATE_LIMIT_BURST",
        ),
        (vec![("RABBITMQ_USER", "u"), ("CACHE_TTL", "0")], "CACHE_TTL"),
        (
            vec![("RABBITMQ_USER", "u"), ("JWT_SECRET", "change-me-to-32-random-bytes")],
            "JWT_SECRET",
        ),
        (
            vec![("RABBITMQ_USER", "u"), ("MAX_MESSAGE_BYTES", "20000000")],
            "MAX_FANOUT_BYTES",
        ),
        (
            vec![("RABBITMQ_USER", "u"), ("MAX_IN_FLIGHT_BYTES", "1000")],
            "MAX_IN_FLIGHT_BYTES",
        ),
        (
            vec![("RABBITMQ_USER", "u"), ("TRUSTED_SENDERS", "a,b c")],
            "TRUSTED_SENDERS",
        ),
        (
            vec![("RABBITMQ_USER", "u"), ("POLICY_FILE", "/nonexistent/p.toml")],
            "POLICY_FILE",
        ),
        // The broker would URL-decode `%74` in every token's scopes: refused, not reinterpreted.
        (
            vec![
                ("RABBITMQ_USER", "u"),
                ("TOPIC_LAYOUT", "seed"),
                ("PATH_PREFIX", "/apps/%74ilechat/users"),
            ],
            "PATH_PREFIX",
        ),
    ] {
        for args in [&[][..], &["check-config"][..]] {
            let out = engine(args, &env);
            assert_eq!(out.status.code(), Some(2), "{env:?}");
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
            assert!(err.contains(needle), "{needle} not in: {err}");
        }
    }
}

/// A policy file that does not compile stops the engine at start: one line, exit 2, saying
/// which rule is wrong. The example shipped in deploy/ is valid.
#[test]
fn bad_policy_file_is_a_configuration_error() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("policy.toml");
    std::fs::write(&bad, "[[deny]]\npattern = \"(unclosed\"\naction = \"reject\"\n").unwrap();
    let wrong_kind = dir.path().join("policy.yaml");
    std::fs::write(&wrong_kind, "deny: []").unwrap();
    for (file, needle) in [(&bad, "deny[0] pattern"), (&wrong_kind, ".toml or .json")] {
        let env = [("RABBITMQ_USER", "u"), ("POLICY_FILE", file.to_str().unwrap())];
        for args in [&[][..], &["check-config"][..]] {
            let out = engine(args, &env);
            assert_eq!(out.status.code(), Some(2));
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
            assert!(err.contains("POLICY_FILE") && err.contains(needle), "{err}");
        }
    }
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/policy.example.toml");
    let out = engine(&["check-config"], &[("RABBITMQ_USER", "u"), ("POLICY_FILE", example)]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn help_lists_every_variable() {
    let out = engine(&["--help"], &[]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for v in chat21_engine::config::VARIABLES {
        assert!(help.contains(v.name), "{} missing from --help", v.name);
    }
    assert!(help.contains("token"));
}

/// `check-config` prints the whole configuration in force, defaults included, and never a
/// secret.
#[test]
fn check_config_prints_the_effective_configuration_without_secrets() {
    let env = [
        ("RABBITMQ_USER", "engine"),
        ("RABBITMQ_PASSWORD", "broker-password"),
        ("JWT_SECRET", "a-jwt-secret-of-enough-bytes"),
        ("DATABASE_URL", "postgres://chat:db-password@db/chat21"),
        ("PREFETCH_MESSAGES", "64"),
    ];
    let out = engine(&["check-config"], &env);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let shown = String::from_utf8(out.stdout).unwrap();
    for v in chat21_engine::config::VARIABLES {
        assert!(shown.contains(&format!("{}=", v.name)), "{} not shown", v.name);
    }
    for line in [
        "PREFETCH_MESSAGES=64",
        "APP_ID=tilechat",
        "RABBITMQ_PASSWORD=<redacted>",
        "JWT_SECRET=<redacted>",
    ] {
        assert!(shown.lines().any(|l| l == line), "{line} not in:\n{shown}");
    }
    assert!(shown.contains("DATABASE_URL=postgres://chat:<redacted>@db/chat21"));
    for secret in ["broker-password", "a-jwt-secret-of-enough-bytes", "db-password"] {
        assert!(!shown.contains(secret), "{secret} printed");
    }
}
