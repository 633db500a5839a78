//! `chat21-engine doctor` against the private broker set up right, then against each broken
//! variant this machine can make: wrong password, missing vhost, an expired token as the
//! password, a JWT secret or key id the broker does not know, MQTT or Web-MQTT not where
//! they are said to be, an engine queue declared with other arguments, an unreachable store,
//! a bad policy file. Every failure is one line that names the fix.

use crate::common::*;
use base64::Engine as _;

/// Run the doctor with the engine's environment (and `env` over it) against the broker's
/// listeners unless `args` says otherwise; (exit code, stdout).
fn doctor(b: &Broker, e: &Running, env: &[(&str, &str)], args: &[&str]) -> (i32, String) {
    let mqtt = format!("127.0.0.1:{}", b.mqtt_port);
    let mut all = vec!["doctor"];
    for (flag, value) in [("--mqtt", mqtt.as_str()), ("--web-mqtt", b.ws_url.as_str())] {
        if !args.contains(&flag) {
            all.extend([flag, value]);
        }
    }
    all.extend_from_slice(args);
    let (code, out, err) = e.cli_with(env, &all);
    (code, format!("{out}{err}"))
}

/// The line of check `name` (`ok    name…`, `FAIL  name…`, `skip  name…`: the name in a
/// column of 18 after the status).
fn line<'a>(out: &'a str, name: &str) -> &'a str {
    out.lines()
        .find(|l| l.get(6..24).map(str::trim_end) == Some(name))
        .unwrap_or_else(|| panic!("no line for {name}:\n{out}"))
}

fn failed(out: &str, name: &str, says: &str) {
    let l = line(out, name);
    assert!(l.starts_with("FAIL"), "{name} should fail:\n{out}");
    assert!(l.contains(says), "{name}'s line should say {says:?}:\n{out}");
}

#[tokio::test]
async fn a_broker_set_up_right_passes_every_check() {
    let b = broker();
    let e = EngineTask::start(b, &[]).await;
    let (code, out) = doctor(b, &e, &[], &[]);
    assert_eq!(code, 0, "{out}");
    for name in [
        "amqp login",
        "vhost",
        "amq.topic",
        "engine queues",
        "engine publishes",
        "mqtt",
        "mqtt confinement",
        "web-mqtt",
        "store",
        "policy file",
    ] {
        assert!(line(&out, name).starts_with("ok"), "{name}:\n{out}");
    }
    assert!(out.contains("all 10 checks passed"), "{out}");
    e.stop().await;
}

#[tokio::test]
async fn each_broken_part_is_named_with_its_fix() {
    let b = broker();
    let e = EngineTask::start(b, &[]).await;
    let uri = b.amqp_uri.clone();

    let wrong_password = uri.replacen("chat21:chat21@", "chat21:wrong-password@", 1);
    let (code, out) = doctor(b, &e, &[("RABBITMQ_URI", &wrong_password)], &[]);
    assert_eq!(code, 1, "{out}");
    failed(&out, "amqp login", "RABBITMQ_PASSWORD");
    assert!(line(&out, "engine queues").starts_with("skip"), "{out}");

    // A JWT as the password, expired: the broker refuses it, the doctor says why.
    let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"sub":"chat21","exp":1600000000}"#);
    let expired = uri.replacen(
        "chat21:chat21@",
        &format!("chat21:eyJhbGciOiJIUzI1NiJ9.{claims}.c2ln@"),
        1,
    );
    let (_, out) = doctor(b, &e, &[("RABBITMQ_URI", &expired)], &[]);
    failed(&out, "amqp login", "expired");

    let no_vhost = uri.replacen("/%2f", "/no-such-vhost", 1);
    let (code, out) = doctor(b, &e, &[("RABBITMQ_URI", &no_vhost)], &[]);
    assert_eq!(code, 1, "{out}");
    failed(&out, "vhost", "add_vhost");

    let (_, out) = doctor(b, &e, &[("JWT_SECRET", "another-secret-0123456789")], &[]);
    failed(&out, "mqtt", "JWT_SECRET");
    failed(&out, "web-mqtt", "JWT_KID");
    assert!(line(&out, "amqp login").starts_with("ok"), "{out}");

    let (_, out) = doctor(b, &e, &[("JWT_KID", "not-the-brokers-key")], &[]);
    failed(&out, "mqtt", "JWT_KID");

    let nothing = format!("127.0.0.1:{}", free_port());
    let (_, out) = doctor(b, &e, &[], &["--mqtt", &nothing]);
    failed(&out, "mqtt", "rabbitmq_mqtt");
    assert!(line(&out, "mqtt confinement").starts_with("skip"), "{out}");
    let nothing_ws = format!("ws://127.0.0.1:{}/ws", free_port());
    let (_, out) = doctor(b, &e, &[], &["--web-mqtt", &nothing_ws]);
    failed(&out, "web-mqtt", "rabbitmq_web_mqtt");

    let pg = format!("postgres://nobody@127.0.0.1:{}/none", free_port());
    let (code, out) = doctor(b, &e, &[("DATABASE_URL", &pg)], &[]);
    assert_eq!(code, 1, "{out}");
    failed(&out, "store", "PostgreSQL");

    let bad_policy = b.dir.join(format!("{}.toml", fresh("policy")));
    std::fs::write(&bad_policy, "[[deny]]\npattern = \"(unclosed\"\naction = \"reject\"\n").unwrap();
    let (_, out) = doctor(b, &e, &[("POLICY_FILE", bad_policy.to_str().unwrap())], &[]);
    failed(&out, "policy file", "deploy/policy.example.toml");

    // A queue of the engine's name made by something else, with other arguments.
    let queue = format!("chat21.engine.{}", fresh("taken"));
    let admin = lapin::Connection::connect(&b.amqp_uri, Default::default())
        .await
        .unwrap();
    admin
        .create_channel()
        .await
        .unwrap()
        .queue_declare(
            format!("{queue}.p00").as_str().into(),
            lapin::options::QueueDeclareOptions::durable(),
            Default::default(),
        )
        .await
        .unwrap();
    let (_, out) = doctor(b, &e, &[("QUEUE_NAME", &queue)], &[]);
    failed(&out, "engine queues", "delete_queue");

    // The engine's own least-privilege user, with topic permissions that allow no key.
    let queue = format!("chat21.engine.{}", fresh("topics"));
    let user = fresh("engine");
    let engine_uri = b.engine_user(&user, "engine-password", &queue);
    let (code, out) = doctor(b, &e, &[("RABBITMQ_URI", &engine_uri), ("QUEUE_NAME", &queue)], &[]);
    assert_eq!(code, 0, "the least-privilege user passes:\n{out}");
    b.ctl(&["set_topic_permissions", "-p", "/", &user, "amq.topic", "^$", "^$"]);
    let (_, out) = doctor(b, &e, &[("RABBITMQ_URI", &engine_uri), ("QUEUE_NAME", &queue)], &[]);
    failed(&out, "engine publishes", "topic permissions");
    e.stop().await;
}
