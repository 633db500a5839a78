//! Benchmark of the HTTP API's history reads under load (issue 12): a store seeded with
//! `--messages` (default 1,000,000) messages in `--conversations` conversations, the engine
//! serving `GET /api/{app}/{me}/conversations/{with}/messages?limit=50` and walking back with
//! `before`, while a message flow runs through the same engine at `--rate` msg/s.
//!
//! Rounds alternate two phases on the same engine: the message flow alone, and the message
//! flow with `--readers` concurrent readers (each read: a random conversation's newest page,
//! then up to `--pages` older pages). Reported (medians over rounds): read p50/p99 and reads/s;
//! the flow's delivered rate and p50/p99 send-to-recipient latency with and without reads.
//!
//! Build, then run:  cargo build --release --bins && target/release/bench_history --store sqlite
//! (or `--store postgres://…` : a fresh schema is made in that database).

use clap::Parser;
use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Connection};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chat21_engine::domain::{AppId, UserId};
use chat21_engine::jwt::Minter;
use chat21_engine::topic::Topics;

#[path = "bench/common.rs"]
mod common;
use common::{cpu_seconds, median, peak_rss_mb, percentile, PrivateNode, Sink};

#[derive(Parser, Debug, Clone)]
#[command(about = "chat21-engine HTTP history reads against a large store, under a message flow")]
struct Args {
    /// `sqlite` (a fresh file in the temp dir) or a postgres:// URL (a fresh schema in it).
    #[arg(long, default_value = "sqlite")]
    store: String,
    /// Messages seeded into the store.
    #[arg(long, default_value_t = 1_000_000)]
    messages: u64,
    /// Conversations they are spread over (each read picks one).
    #[arg(long, default_value_t = 1_000)]
    conversations: u64,
    /// The message flow's rate, msg/s.
    #[arg(long, default_value_t = 1_000)]
    rate: u64,
    /// Length of each phase.
    #[arg(long, default_value_t = 15)]
    seconds: u64,
    /// Concurrent readers in the read phase.
    #[arg(long, default_value_t = 4)]
    readers: usize,
    /// Page size of each read.
    #[arg(long, default_value_t = 50)]
    limit: u64,
    /// Pages each reader walks back (following `next`) per conversation.
    #[arg(long, default_value_t = 5)]
    pages: u64,
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

const FLOW_SENDERS: u64 = 10;
const FLOW_RECIPIENTS: u64 = 10;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let bin = std::env::current_exe()?.parent().unwrap().join("chat21-engine");
    if !bin.exists() {
        return Err(format!("{} not found: build with `cargo build --release --bins`", bin.display()).into());
    }
    let node = PrivateNode::start()?;
    let app = format!("hist{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let (store_url, sqlite_file) = store_url(&args.store).await?;

    let started = Instant::now();
    seed(&store_url, &app, &args).await?;
    eprintln!(
        "bench: seeded {} messages in {:.1} s",
        args.messages,
        started.elapsed().as_secs_f64()
    );

    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let mut engine = spawn_engine(&bin, &node, &app, &store_url, port)?;
    wait_ready(port).await?;
    let conn = Connection::connect(&node.amqp_uri, Default::default()).await?;
    let topics = Topics::chat21(&app);
    let epoch = Instant::now();
    let keys: Vec<String> = (0..FLOW_RECIPIENTS)
        .map(|r| format!("apps.{app}.users.r{r}.messages.*.clientadded"))
        .collect();
    let sink = Sink::start(&conn, &format!("bench.sink.{app}"), &keys, epoch).await?;
    let minter = Minter::new(&node.jwt_secret, "tiledesk-key");
    let app_id = AppId::parse(&app).map_err(|_| "app id")?;
    let tokens: Vec<String> = (0..args.conversations)
        .map(|c| {
            minter.user_token(
                &topics,
                &app_id,
                &UserId::parse(&format!("u{c}")).unwrap(),
                Duration::from_secs(86_400),
            )
        })
        .collect::<Result<_, _>>()?;
    let tokens = Arc::new(tokens);
    let http = reqwest::Client::new();

    let mut without: Vec<Flow> = Vec::new();
    let mut with: Vec<(Flow, Reads)> = Vec::new();
    let cpu0 = cpu_seconds(engine.id());
    for round in 0..args.rounds {
        for reading in if round % 2 == 0 { [false, true] } else { [true, false] } {
            let ch = conn.create_channel().await?;
            ch.confirm_select(Default::default()).await?;
            sink.reset();
            let stop = Arc::new(AtomicBool::new(false));
            let readers: Vec<_> = (0..if reading { args.readers } else { 0 })
                .map(|r| {
                    tokio::spawn(reader(
                        http.clone(),
                        port,
                        app.clone(),
                        tokens.clone(),
                        args.clone(),
                        stop.clone(),
                        r as u64,
                    ))
                })
                .collect();
            let total = args.rate * args.seconds;
            let start = Instant::now();
            for n in 0..total {
                let due = start + Duration::from_nanos(n * 1_000_000_000 / args.rate);
                tokio::time::sleep_until(due.into()).await;
                let (s, r) = (n % FLOW_SENDERS, n % FLOW_RECIPIENTS);
                let body = serde_json::json!({"text": format!("flow {n}"), "type": "text", "sent_ns": Instant::now().duration_since(epoch).as_nanos() as u64});
                ch.basic_publish(
                    "amq.topic".into(),
                    topics.outgoing(&format!("s{s}"), &format!("r{r}")).as_str().into(),
                    BasicPublishOptions::default(),
                    body.to_string().as_bytes(),
                    BasicProperties::default().with_delivery_mode(2),
                )
                .await?;
            }
            ch.wait_for_confirms().await?;
            let (first, last) = sink.wait_for(total, Duration::from_secs(120)).await?;
            stop.store(true, Ordering::Relaxed);
            let mut lat = Vec::new();
            let mut reads = 0u64;
            for r in readers {
                let (l, n) = r.await?;
                lat.extend(l);
                reads += n;
            }
            let elapsed = start.elapsed().as_secs_f64();
            let flow_lat = sink.latencies_ms();
            let flow = Flow {
                msgs_per_sec: (total as f64 - 1.0) / (last - first).as_secs_f64().max(1e-9),
                p50_ms: percentile(&flow_lat, 0.50),
                p99_ms: percentile(&flow_lat, 0.99),
            };
            let _ = ch.close(200, "done".into()).await;
            if reading {
                let r = Reads {
                    per_sec: reads as f64 / elapsed,
                    p50_ms: percentile(&lat, 0.50),
                    p99_ms: percentile(&lat, 0.99),
                };
                eprintln!(
                    "round {round} flow+reads: {:.0} msg/s, p50 {:.1} ms, p99 {:.1} ms; reads {:.0}/s, p50 {:.2} ms, p99 {:.2} ms",
                    flow.msgs_per_sec, flow.p50_ms, flow.p99_ms, r.per_sec, r.p50_ms, r.p99_ms
                );
                with.push((flow, r));
            } else {
                eprintln!(
                    "round {round} flow only:  {:.0} msg/s, p50 {:.1} ms, p99 {:.1} ms",
                    flow.msgs_per_sec, flow.p50_ms, flow.p99_ms
                );
                without.push(flow);
            }
        }
    }
    let cpu = cpu_seconds(engine.id()) - cpu0;
    let rss = peak_rss_mb(engine.id());
    let _ = engine.kill();
    let _ = engine.wait();
    if let Some(f) = sqlite_file {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{f}{suffix}"));
        }
    }

    let m = |v: Vec<f64>| median(v);
    println!(
        "history bench: store {}, {} messages in {} conversations, pages of {}, {} readers, flow {} msg/s, {} rounds of {} s",
        if args.store == "sqlite" { "sqlite" } else { "postgres" },
        args.messages,
        args.conversations,
        args.limit,
        args.readers,
        args.rate,
        args.rounds,
        args.seconds
    );
    println!(
        "reads: p50 {:.2} ms, p99 {:.2} ms, {:.0} reads/s",
        m(with.iter().map(|(_, r)| r.p50_ms).collect()),
        m(with.iter().map(|(_, r)| r.p99_ms).collect()),
        m(with.iter().map(|(_, r)| r.per_sec).collect())
    );
    let (f0, f1) = (
        m(without.iter().map(|f| f.msgs_per_sec).collect()),
        m(with.iter().map(|(f, _)| f.msgs_per_sec).collect()),
    );
    println!(
        "flow without reads: {f0:.0} msg/s, p50 {:.1} ms, p99 {:.1} ms",
        m(without.iter().map(|f| f.p50_ms).collect()),
        m(without.iter().map(|f| f.p99_ms).collect())
    );
    println!(
        "flow with reads:    {f1:.0} msg/s, p50 {:.1} ms, p99 {:.1} ms (delivered rate ratio {:.3})",
        m(with.iter().map(|(f, _)| f.p50_ms).collect()),
        m(with.iter().map(|(f, _)| f.p99_ms).collect()),
        f1 / f0.max(1e-9)
    );
    println!("engine: {cpu:.1} CPU s over the run, peak RSS {rss:.1} MB");
    Ok(())
}

struct Flow {
    msgs_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
}

struct Reads {
    per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// One reader: until told to stop, a random conversation's newest page, then older pages by
/// `next`. Returns each request's latency (ms) and the number of reads.
async fn reader(
    http: reqwest::Client,
    port: u16,
    app: String,
    tokens: Arc<Vec<String>>,
    args: Args,
    stop: Arc<AtomicBool>,
    seed: u64,
) -> (Vec<f64>, u64) {
    let mut lat = Vec::new();
    let mut rng = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    while !stop.load(Ordering::Relaxed) {
        rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let c = (rng >> 33) % args.conversations;
        let mut before: Option<String> = None;
        for _ in 0..args.pages {
            let mut url = format!(
                "http://127.0.0.1:{port}/api/{app}/u{c}/conversations/v{c}/messages?limit={}",
                args.limit
            );
            if let Some(b) = &before {
                url.push_str(&format!("&before={b}"));
            }
            let t = Instant::now();
            let res = http.get(&url).header("Authorization", &tokens[c as usize]).send().await;
            let body: serde_json::Value = match res {
                Ok(r) if r.status().is_success() => r.json().await.unwrap_or_default(),
                Ok(r) => panic!("read answered {}", r.status()),
                Err(e) => panic!("read failed: {e}"),
            };
            lat.push(t.elapsed().as_secs_f64() * 1e3);
            match body["next"].as_str() {
                Some(n) => before = Some(n.replace(':', "%3A")),
                None => break,
            }
            if stop.load(Ordering::Relaxed) {
                break;
            }
        }
    }
    let n = lat.len() as u64;
    (lat, n)
}

/// The store's URL (and the SQLite file to remove afterwards).
async fn store_url(store: &str) -> Result<(String, Option<String>), Box<dyn std::error::Error>> {
    if store == "sqlite" {
        let f = std::env::temp_dir().join(format!("chat21-hist-{}.db", uuid::Uuid::new_v4().simple()));
        let f = f.display().to_string();
        return Ok((format!("sqlite://{f}"), Some(f)));
    }
    sqlx::any::install_default_drivers();
    let schema = format!("hist{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let pool = sqlx::AnyPool::connect(store).await?;
    sqlx::query(&format!("CREATE SCHEMA {schema}")).execute(&pool).await?;
    pool.close().await;
    let sep = if store.contains('?') { '&' } else { '?' };
    Ok((format!("{store}{sep}options[search_path]={schema}"), None))
}

/// Migrate (by opening the store as the engine does), then insert the messages in one
/// statement: conversation `i % C` of user `u{c}` with `v{c}`, three messages a millisecond
/// (so pages have ties to break), bodies as the engine stores them.
async fn seed(url: &str, app: &str, args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let db = chat21_engine::config::Database::parse(url)?.ok_or("a store")?;
    chat21_engine::store::Store::open(&db).await?.close().await;
    let pool = sqlx::AnyPool::connect(&match &db {
        chat21_engine::config::Database::Sqlite { path } => format!("sqlite://{path}"),
        chat21_engine::config::Database::Postgres { url } => url.expose().to_owned(),
    })
    .await?;
    // One body per message, one timeline row per message (the recipient's: the timeline the
    // readers read).
    let body = |i: &str| {
        format!(
            "'{{\"message_id\":\"m' || {i} || '\",\"text\":\"seeded message ' || {i} || '\",\"sender\":\"v' || ({i} % $2) || \
             '\",\"recipient\":\"u' || ({i} % $2) || '\",\"timestamp\":' || (1700000000000 + {i} / 3) || \
             ',\"status\":150,\"type\":\"text\",\"channel_type\":\"direct\",\"app_id\":\"' || CAST($3 AS TEXT) || '\"}}'"
        )
    };
    let bodies = |i: &str| {
        format!(
            "CAST($3 AS TEXT), 'u' || ({i} % $2), 'm' || {i}, 'v' || ({i} % $2), 1700000000000 + {i} / 3, {}",
            body(i)
        )
    };
    let timeline = |i: &str| {
        format!(
            "CAST($3 AS TEXT), 'u' || ({i} % $2), 'v' || ({i} % $2), 'm' || {i}, 'v' || ({i} % $2), 'u' || ({i} % $2), 150, \
             1700000000000 + {i} / 3"
        )
    };
    let tables = [
        (
            "messages (app_id, recipient, message_id, sender, timestamp, body)",
            &bodies as &dyn Fn(&str) -> String,
        ),
        (
            "timeline (app_id, timeline_of, convers_with, message_id, sender, recipient, status, timestamp)",
            &timeline,
        ),
    ];
    for (table, values) in tables {
        let sql = match db {
            chat21_engine::config::Database::Sqlite { .. } => format!(
                "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < $1 - 1) \
                 INSERT INTO {table} SELECT {} FROM n",
                values("i")
            ),
            chat21_engine::config::Database::Postgres { .. } => format!(
                "INSERT INTO {table} SELECT {} FROM generate_series(0, CAST($1 AS BIGINT) - 1) AS g(i)",
                values("g.i")
            ),
        };
        sqlx::query(&sql)
            .bind(args.messages as i64)
            .bind(args.conversations as i64)
            .bind(app)
            .execute(&pool)
            .await?;
    }
    pool.close().await;
    Ok(())
}

fn spawn_engine(
    bin: &std::path::Path,
    node: &PrivateNode,
    app: &str,
    store: &str,
    port: u16,
) -> std::io::Result<Child> {
    Command::new(bin)
        .env_clear()
        .env("RABBITMQ_URI", &node.amqp_uri)
        .env("JWT_SECRET", &node.jwt_secret)
        .env("APP_ID", app)
        .env("QUEUE_NAME", format!("chat21.bench.{app}"))
        .env("HTTP_PORT", port.to_string())
        .env("HTTP_HOST", "127.0.0.1")
        .env("DATABASE_URL", store)
        .env("RATE_LIMIT_PER_MIN", "0")
        .env("RATE_LIMIT_COMMANDS_PER_MIN", "0")
        .env("LOG_LEVEL", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
}

async fn wait_ready(port: u16) -> Result<(), Box<dyn std::error::Error>> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let url = format!("http://127.0.0.1:{port}/readyz");
    while Instant::now() < deadline {
        if let Ok(r) = reqwest::get(&url).await {
            if r.status().is_success() {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err("engine not ready in 60 s".into())
}
