//! `scripts/local-stack.sh`, the README's run command, as a new user runs it: it starts a
//! private broker and the engine, prints the MQTT and Web-MQTT URLs, two tokens and the HTTP
//! API; those work (a message sent over the API reaches the recipient over MQTT and its
//! history); Ctrl-C (SIGINT to the process group, as a terminal sends it) stops everything
//! and leaves nothing running. This test owns its broker (the script starts it).

mod common;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, Transport};
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn value_after<'a>(out: &'a str, label: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.trim_start().strip_prefix(label))
        .map(|rest| rest.split_whitespace().next().unwrap())
        .unwrap_or_else(|| panic!("no {label:?} in:\n{out}"))
}

fn refuses(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(1)).is_err()
}

#[tokio::test]
async fn one_command_brings_up_a_working_stack_and_ctrl_c_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let stack_dir = dir.path().join("stack");
    let http_port = common::free_port();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/local-stack.sh");
    let mut child = Command::new("bash")
        .arg(script)
        .env("ENGINE_BIN", env!("CARGO_BIN_EXE_chat21-engine"))
        .env("HTTP_PORT", http_port.to_string())
        .env("STACK_DIR", &stack_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap();
    let pgid = child.id() as i32;
    let stdout = child.stdout.take().unwrap();
    let printed = tokio::task::spawn_blocking(move || {
        let mut out = String::new();
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            out.push_str(&line);
            out.push('\n');
            if line.contains("Ctrl-C stops everything") {
                break;
            }
        }
        out
    });
    let out = tokio::time::timeout(Duration::from_secs(180), printed)
        .await
        .expect("the stack came up within 180 s")
        .unwrap();
    let mqtt_url = value_after(&out, "MQTT ");
    let ws_url = value_after(&out, "Web-MQTT ");
    let api = value_after(&out, "HTTP API ");
    let alice = value_after(&out, "export ALICE=");
    let bob = value_after(&out, "export BOB=");
    assert!(
        out.contains(&format!("{api}/messages")),
        "the one-line send is printed:\n{out}"
    );
    let mqtt_port: u16 = mqtt_url.rsplit(':').next().unwrap().parse().unwrap();

    // Bob listens over MQTT with the printed token; Alice connects over Web-MQTT with hers.
    let mut opts = MqttOptions::new("bob-test", "127.0.0.1", mqtt_port);
    opts.set_credentials("JWT", bob);
    let (bob_client, mut bob_events) = AsyncClient::new(opts, 10);
    bob_client
        .subscribe("apps/tilechat/users/bob/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    let mut ws = MqttOptions::new("alice-test", ws_url, 0);
    ws.set_transport(Transport::Ws);
    ws.set_credentials("JWT", alice);
    let (_alice_client, mut alice_events) = AsyncClient::new(ws, 10);
    let connack = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Event::Incoming(Packet::ConnAck(_)) = alice_events.poll().await.expect("Web-MQTT login") {
                return;
            }
        }
    });
    connack.await.expect("a Web-MQTT CONNACK");
    let suback = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Event::Incoming(Packet::SubAck(_)) = bob_events.poll().await.expect("MQTT login") {
                return;
            }
        }
    });
    suback.await.expect("bob's SUBACK");

    // The printed one-line send, through the API.
    let http = reqwest::Client::new();
    let sent: serde_json::Value = http
        .post(format!("{api}/messages"))
        .bearer_auth(alice)
        .json(&serde_json::json!({"recipient_id": "bob", "text": "hello"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(sent["success"], true, "{sent}");
    let got = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            if let Event::Incoming(Packet::Publish(p)) = bob_events.poll().await.unwrap() {
                return serde_json::from_slice::<serde_json::Value>(&p.payload).unwrap();
            }
        }
    })
    .await
    .expect("bob got the message over MQTT");
    assert_eq!(got["text"], "hello");
    let history: serde_json::Value = http
        .get(format!("{api}/bob/conversations/alice/messages"))
        .bearer_auth(bob)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(history["result"][0]["text"], "hello", "{history}");

    // Ctrl-C: the whole group, as a terminal sends it.
    drop(bob_client);
    unsafe {
        libc::kill(-pgid, libc::SIGINT);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the stack did not stop within 60 s of Ctrl-C"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(err.contains("nothing left running"), "status {status}; stderr:\n{err}");
    assert!(!stack_dir.exists(), "the stack's directory is removed");
    assert!(refuses(http_port), "the engine's HTTP port is closed");
    assert!(refuses(mqtt_port), "the broker's MQTT port is closed");
}
