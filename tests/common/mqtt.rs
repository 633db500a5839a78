//! Real MQTT clients (TCP and Web-MQTT) logging in with minted JWTs, as Chat21 clients do,
//! and the helpers the tests drive them with.

use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS, Transport};
use serde_json::Value;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

use super::broker::Broker;
use super::engine::Running;

/// What an MQTT client saw.
#[derive(Debug, Clone)]
pub enum Ev {
    ConnAck,
    SubAck,
    PubAck(u16),
    /// pkid given to an outgoing QoS 1 publish, in the order publishes were sent.
    Sent(u16),
    Msg {
        topic: String,
        body: Value,
    },
    Error(String),
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Via {
    Tcp,
    Ws,
    /// MQTT over TLS (the broker's private CA trusted).
    Tls,
    /// Web-MQTT over TLS.
    Wss,
}

/// A Chat21-like MQTT client: username `JWT`, password = the user's token, clean session,
/// random client id.
pub struct Mqtt {
    pub client: AsyncClient,
    pub rx: mpsc::UnboundedReceiver<Ev>,
    /// Messages that arrived while waiting for a SUBACK or PUBACK (an engine copy can beat
    /// the PUBACK of the publish that caused it); `messages` returns them first.
    stash: std::collections::VecDeque<(String, Value)>,
    pub user: String,
    pub app: String,
    pub client_id: String,
    task: tokio::task::JoinHandle<()>,
}

impl Mqtt {
    pub async fn connect(broker: &Broker, app: &str, user: &str, via: Via) -> Mqtt {
        Self::connect_with_token(broker, app, user, &broker.token(app, user), via, false).await
    }

    /// `reconnect`: keep polling after errors (rumqttc reconnects), for broker-restart tests.
    pub async fn connect_with_token(
        broker: &Broker,
        app: &str,
        user: &str,
        token: &str,
        via: Via,
        reconnect: bool,
    ) -> Mqtt {
        match Self::try_connect(broker, app, user, token, via, reconnect).await {
            Ok(m) => m,
            Err(e) => panic!("no CONNACK for {user}: {e}"),
        }
    }

    /// Ok once the broker sent CONNACK; Err with what happened instead.
    pub async fn try_connect(
        broker: &Broker,
        app: &str,
        user: &str,
        token: &str,
        via: Via,
        reconnect: bool,
    ) -> Result<Mqtt, String> {
        Self::try_connect_as(broker, app, user, token, via, reconnect, false).await
    }

    /// Like a Chat21 client with presence: a last will `{"disconnected":true}` on
    /// `apps/{app}/users/{user}/presence/{client_id}`, then `{"connected":true}` there.
    /// Dropping the client without DISCONNECT makes the broker publish the will.
    pub async fn connect_with_presence(broker: &Broker, app: &str, user: &str) -> Mqtt {
        let token = broker.token(app, user);
        let m = Self::try_connect_as(broker, app, user, &token, Via::Tcp, false, true)
            .await
            .expect("CONNACK");
        let topic = format!("apps.{app}.users.{user}.presence.{}", m.client_id);
        m.publish(&topic, br#"{"connected":true}"#).await;
        m
    }

    async fn try_connect_as(
        broker: &Broker,
        app: &str,
        user: &str,
        token: &str,
        via: Via,
        reconnect: bool,
        presence_will: bool,
    ) -> Result<Mqtt, String> {
        let client_id = format!("c{}", uuid::Uuid::new_v4().simple());
        let will_topic = format!("apps/{app}/users/{user}/presence/{client_id}");
        let mut opts = match via {
            Via::Tcp => MqttOptions::new(client_id.clone(), "127.0.0.1", broker.mqtt_port),
            Via::Ws => {
                let mut o = MqttOptions::new(client_id.clone(), broker.ws_url.clone(), 0);
                o.set_transport(Transport::Ws);
                o
            }
            Via::Tls => {
                let mut o = MqttOptions::new(client_id.clone(), "127.0.0.1", broker.mqtts_port);
                o.set_transport(Transport::tls_with_config(tls(broker)));
                o
            }
            Via::Wss => {
                let mut o = MqttOptions::new(client_id.clone(), broker.wss_url.clone(), 0);
                o.set_transport(Transport::wss_with_config(tls(broker)));
                o
            }
        };
        opts.set_credentials("JWT", token);
        if presence_will {
            let will = rumqttc::LastWill::new(will_topic, r#"{"disconnected":true}"#, QoS::AtLeastOnce, false);
            opts.set_last_will(will);
        }
        opts.set_keep_alive(Duration::from_secs(30));
        opts.set_clean_session(true);
        opts.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut eventloop) = AsyncClient::new(opts, 1000);
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => drop(tx.send(Ev::ConnAck)),
                    Ok(Event::Incoming(Packet::SubAck(_))) => drop(tx.send(Ev::SubAck)),
                    Ok(Event::Incoming(Packet::PubAck(a))) => drop(tx.send(Ev::PubAck(a.pkid))),
                    Ok(Event::Outgoing(Outgoing::Publish(pkid))) if pkid != 0 => drop(tx.send(Ev::Sent(pkid))),
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let body = serde_json::from_slice(&p.payload)
                            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&p.payload).into()));
                        let _ = tx.send(Ev::Msg { topic: p.topic, body });
                    }
                    Ok(_) => {}
                    Err(e) => {
                        if tx.send(Ev::Error(e.to_string())).is_err() || !reconnect {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        });
        let mut m = Mqtt {
            client,
            rx,
            stash: Default::default(),
            user: user.to_string(),
            app: app.to_string(),
            client_id,
            task,
        };
        match m.next_event(Duration::from_secs(10)).await {
            Some(Ev::ConnAck) => Ok(m),
            other => Err(format!("{other:?}")),
        }
    }

    pub async fn next_event(&mut self, within: Duration) -> Option<Ev> {
        tokio::time::timeout(within, self.rx.recv()).await.ok().flatten()
    }

    /// Subscribe to the user's whole inbox, as Chat21 clients do, and wait for the SUBACK.
    pub async fn subscribe_inbox(&mut self) {
        let filter = format!("apps/{}/users/{}/#", self.app, self.user);
        self.subscribe(&filter).await.expect("inbox SUBACK");
    }

    /// Ok on SUBACK; Err with what happened instead.
    pub async fn subscribe(&mut self, filter: &str) -> Result<(), String> {
        self.client
            .subscribe(filter, QoS::AtMostOnce)
            .await
            .map_err(|e| e.to_string())?;
        loop {
            match self.next_event(Duration::from_secs(5)).await {
                Some(Ev::SubAck) => return Ok(()),
                Some(Ev::Error(e)) => return Err(e),
                None => return Err("no SUBACK".into()),
                Some(Ev::Msg { topic, body }) if is_engine_output(&topic) => self.stash.push_back((topic, body)),
                Some(_) => {}
            }
        }
    }

    /// Publish a JSON body on an AMQP-form key (converted to an MQTT topic) at QoS 1.
    pub async fn publish(&self, amqp_key: &str, body: &[u8]) {
        // A topic name, not a filter: only the level separator is converted.
        let topic = amqp_key.replace('.', "/");
        self.client
            .publish(topic, QoS::AtLeastOnce, false, body.to_vec())
            .await
            .unwrap();
    }

    /// Publish and wait for the PUBACK; Err if the broker refused (closed the connection).
    pub async fn publish_acked(&mut self, amqp_key: &str, body: &[u8]) -> Result<(), String> {
        self.publish(amqp_key, body).await;
        loop {
            match self.next_event(Duration::from_secs(5)).await {
                Some(Ev::PubAck(_)) => return Ok(()),
                Some(Ev::Error(e)) => return Err(e),
                None => return Err("no PUBACK".into()),
                Some(Ev::Msg { topic, body }) if is_engine_output(&topic) => self.stash.push_back((topic, body)),
                Some(_) => {}
            }
        }
    }

    /// Collect `n` engine outputs (within `within`), in arrival order. A client subscribed to
    /// its whole inbox also receives its own commands back (`…update`, `…archive`: MQTT 3.1.1
    /// has no no-local), as Chat21 clients do; like them, only `client*` topics count here.
    pub async fn messages(&mut self, n: usize, within: Duration) -> Vec<(String, Value)> {
        let deadline = Instant::now() + within;
        let mut out = Vec::new();
        while out.len() < n {
            if let Some(m) = self.stash.pop_front() {
                out.push(m);
                continue;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_event(left).await {
                Some(Ev::Msg { topic, body }) if is_engine_output(&topic) => out.push((topic, body)),
                Some(Ev::Msg { .. }) => {}
                Some(Ev::Error(e)) => panic!(
                    "MQTT connection of {} failed while waiting for messages: {e}",
                    self.user
                ),
                Some(_) => {}
                None => break,
            }
        }
        out
    }

    /// Whatever else arrives within `within` (to prove nothing more came).
    pub async fn extra_messages(&mut self, within: Duration) -> Vec<(String, Value)> {
        self.messages(usize::MAX, within).await
    }
}

/// Trust the private broker's CA, as a client trusts the operator's.
fn tls(broker: &Broker) -> rumqttc::TlsConfiguration {
    // Two providers are compiled in (ring, aws-lc-rs): say which; a second call is a no-op.
    let _ = rustls::crypto::ring::default_provider().install_default();
    rumqttc::TlsConfiguration::Simple {
        ca: std::fs::read(&broker.tls_ca).expect("the broker's CA"),
        alpn: None,
        client_auth: None,
    }
}

fn is_engine_output(topic: &str) -> bool {
    ["clientadded", "clientupdated", "clientdeleted"]
        .iter()
        .any(|s| topic.ends_with(s))
}

impl Drop for Mqtt {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How long a test waits for a message that must arrive.
pub const WAIT: Duration = Duration::from_secs(15);

/// Connected and subscribed to their inboxes.
pub async fn inboxes(b: &Broker, e: &Running, users: &[&str]) -> Vec<Mqtt> {
    let mut out = Vec::new();
    for u in users {
        let mut c = Mqtt::connect(b, &e.app, u, Via::Tcp).await;
        c.subscribe_inbox().await;
        out.push(c);
    }
    out
}

pub async fn send(c: &mut Mqtt, e: &Running, to: &str, body: Value) {
    c.publish_acked(&e.topics().outgoing(&c.user.clone(), to), body.to_string().as_bytes())
        .await
        .unwrap();
}

pub async fn one(c: &mut Mqtt, e: &Running) -> (String, Value) {
    let mut got = c.messages(1, WAIT).await;
    assert_eq!(got.len(), 1, "{} got nothing from the engine of {}", c.user, e.app);
    got.remove(0)
}

pub async fn nothing_more(clients: &mut [Mqtt]) {
    for c in clients.iter_mut() {
        let extra = c.extra_messages(Duration::from_millis(300)).await;
        assert!(extra.is_empty(), "{} got more: {extra:?}", c.user);
    }
}

/// MQTT 3.1.1 over a plain socket, for what no client library will send: a topic of arbitrary
/// bytes. Connects with `token` (username `JWT`), publishes `payload` on `topic` at QoS 1 and
/// returns Ok once the broker's PUBACK arrived, Err with what happened instead.
pub async fn raw_publish(broker: &Broker, token: &str, topic: &[u8], payload: &[u8]) -> Result<(), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    fn remaining_length(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let mut byte = (n % 128) as u8;
            n /= 128;
            if n > 0 {
                byte |= 0x80;
            }
            out.push(byte);
            if n == 0 {
                return;
            }
        }
    }
    fn string(s: &[u8], out: &mut Vec<u8>) {
        out.extend_from_slice(&(s.len() as u16).to_be_bytes());
        out.extend_from_slice(s);
    }
    fn packet(kind: u8, body: Vec<u8>) -> Vec<u8> {
        let mut p = vec![kind];
        remaining_length(body.len(), &mut p);
        p.extend(body);
        p
    }
    let mut connect = Vec::new();
    string(b"MQTT", &mut connect);
    // Level 4 (3.1.1); flags: username, password, clean session; keep-alive 60 s.
    connect.extend_from_slice(&[4, 0xC2, 0, 60]);
    string(format!("raw{}", uuid::Uuid::new_v4().simple()).as_bytes(), &mut connect);
    string(b"JWT", &mut connect);
    string(token.as_bytes(), &mut connect);
    let mut publish = Vec::new();
    string(topic, &mut publish);
    publish.extend_from_slice(&[0, 1]); // packet id 1
    publish.extend_from_slice(payload);

    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", broker.mqtt_port))
        .await
        .map_err(|e| e.to_string())?;
    // Send `packet`, then expect the 4-byte answer `expected` (CONNACK accepted, PUBACK 1).
    async fn exchange(
        s: &mut tokio::net::TcpStream,
        packet: Vec<u8>,
        what: &str,
        expected: [u8; 4],
    ) -> Result<(), String> {
        s.write_all(&packet).await.map_err(|e| e.to_string())?;
        let mut answer = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut answer))
            .await
            .map_err(|_| format!("no {what}"))?
            .map_err(|e| format!("{what}: {e}"))?;
        match answer == expected {
            true => Ok(()),
            false => Err(format!("{what}: {answer:?}")),
        }
    }
    exchange(&mut s, packet(0x10, connect), "CONNACK", [0x20, 2, 0, 0]).await?;
    exchange(&mut s, packet(0x32, publish), "PUBACK", [0x40, 2, 0, 1]).await
}
