//! Benchmark: the engine against a minimal relay (src/bin/relay.rs), in the same run, on a
//! private RabbitMQ node. Rounds alternate the two subjects; medians are reported because
//! single runs on a small machine swing by ±25 %.
//!
//! Per round and subject:
//! - burst/throughput: N messages from S senders to R recipients are queued first, then the
//!   subject starts and drains them; the rate is measured from the first to the last recipient
//!   copy arriving. CPU seconds per message come from /proc (utime+stime), peak RSS from
//!   VmHWM after the burst (memory must be bounded by the prefetch, not by the burst).
//! - latency: messages at a fixed rate; send-to-recipient-copy percentiles.
//!
//! `--policies` and `--webhooks healthy|dead` compare the engine with that feature on against
//! the same engine without it, instead of against the relay; with a healthy endpoint the
//! events' delivery latency (made → received) is reported too.
//!
//! Build everything, then run:  cargo build --release --bins && target/release/bench

use clap::Parser;
use lapin::options::{BasicPublishOptions, QueueDeleteOptions};
use lapin::{BasicProperties, Channel, Connection};
use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chat21_engine::broker::topology::{self, Layout};
use chat21_engine::clock::now_ms;
use chat21_engine::topic::Topics;

/// The engine's default: queue arguments must match between the bench and its subject.
const DELIVERY_LIMIT: u32 = 20;

#[path = "bench/commits.rs"]
mod commits;
#[path = "bench/common.rs"]
mod common;
#[path = "bench/hooks.rs"]
mod hooks;
use common::{cpu_seconds, median, peak_rss_mb, percentile, PrivateNode, Sink};
use hooks::HookSink;

#[derive(Parser, Debug, Clone)]
#[command(about = "chat21-engine vs minimal relay: throughput, latency, CPU, memory")]
struct Args {
    /// Rounds (each runs both subjects, order alternating).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Messages in the burst.
    #[arg(long, default_value_t = 20_000)]
    messages: usize,
    #[arg(long, default_value_t = 10)]
    senders: usize,
    #[arg(long, default_value_t = 10)]
    recipients: usize,
    /// Fixed rate of the latency phase, messages per second.
    #[arg(long, default_value_t = 2000)]
    rate: u64,
    /// Duration of the latency phase.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// PREFETCH_MESSAGES for both subjects (default: the engine's default).
    #[arg(long, default_value_t = 1024)]
    prefetch: u16,
    /// PARTITIONS for both subjects: the input layout both consume (`broker::topology`).
    #[arg(long, default_value_t = 1)]
    partitions: u16,
    /// Engine persistence: `off`, `sqlite` (a fresh file per round in the temp dir), or a
    /// postgres:// URL.
    #[arg(long, default_value = "off")]
    store: String,
    /// Group fan-out instead of direct messages: every message goes to one stored group of
    /// this many members (plus the group timeline); senders are its first members. The relay
    /// does the same fan-out with the member list given up front.
    #[arg(long, default_value_t = 0)]
    group_size: usize,
    /// Compare the engine with the full policy chain (a rate limit that never triggers, this
    /// many block-list entries, a policy file of 50 deny patterns) against the same engine
    /// without policies, instead of engine vs relay.
    #[arg(long)]
    policies: Option<usize>,
    /// Compare the engine with webhooks on against the same engine with them off, instead of
    /// engine vs relay: `healthy` (one local endpoint that answers 200 to every event; event
    /// latency reported) or `dead` (one endpoint where nothing listens, for the whole run).
    #[arg(long)]
    webhooks: Option<Webhooks>,
    /// Use an already running broker (AMQP URI with admin rights) instead of a private node.
    #[arg(long)]
    amqp_uri: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
enum Webhooks {
    Healthy,
    Dead,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Subject {
    Engine,
    Relay,
    /// The engine with every policy stage busy (`--policies`).
    Policies,
    /// The engine with webhooks on (`--webhooks`).
    Webhooks,
}

impl Subject {
    fn name(self) -> &'static str {
        match self {
            Subject::Engine => "engine",
            Subject::Relay => "relay",
            Subject::Policies => "engine+policies",
            Subject::Webhooks => "engine+webhooks",
        }
    }
}

#[derive(Default, Clone, Debug)]
struct RoundResult {
    msgs_per_sec: f64,
    cpu_us_per_msg: f64,
    peak_rss_mb: f64,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    /// Webhook events: delivery latency (made → received) at the fixed rate, and events per
    /// second during the burst (webhooks on, healthy endpoint).
    event_p50_ms: f64,
    event_p99_ms: f64,
    /// The engine's store commits at the fixed rate (its own histogram): count, p50, p99 ms.
    commits: u64,
    commit_p50_ms: f64,
    commit_p99_ms: f64,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let bin_dir = std::env::current_exe()?.parent().unwrap().to_path_buf();
    for b in ["chat21-engine", "relay"] {
        if !bin_dir.join(b).exists() {
            return Err(format!(
                "{} not found: build with `cargo build --release --bins`",
                bin_dir.join(b).display()
            )
            .into());
        }
    }
    let (uri, _node) = match &args.amqp_uri {
        Some(u) => (u.clone(), None),
        None => {
            let node = PrivateNode::start()?;
            (node.amqp_uri.clone(), Some(node))
        }
    };
    let shape = match args.group_size {
        0 => format!("{} senders to {} recipients", args.senders, args.recipients),
        n => format!(
            "{} senders to a group of {n} (fan-out {} copies)",
            args.senders.min(n),
            n + 1
        ),
    };
    eprintln!(
        "bench: {} rounds; burst {} msgs from {shape}; latency {} msg/s for {} s; prefetch {}; engine store {}",
        args.rounds, args.messages, args.rate, args.seconds, args.prefetch, args.store
    );
    let conn = Connection::connect(&uri, Default::default()).await?;
    let mut results: HashMap<Subject, Vec<RoundResult>> = HashMap::new();
    // The subject measured, and its baseline.
    let (subject, baseline) = match (args.policies, args.webhooks) {
        (Some(_), _) => (Subject::Policies, Subject::Engine),
        (None, Some(_)) => (Subject::Webhooks, Subject::Engine),
        (None, None) => (Subject::Engine, Subject::Relay),
    };
    let hooks = match args.webhooks {
        Some(Webhooks::Healthy) => Some(HookSink::start().await?),
        _ => None,
    };
    let endpoint = match (&hooks, args.webhooks) {
        (Some(h), _) => Some(h.url.clone()),
        (None, Some(Webhooks::Dead)) => Some(hooks::dead_url()?),
        _ => None,
    };
    let policy_file = std::env::temp_dir().join(format!("chat21-bench-policy-{}.toml", std::process::id()));
    std::fs::write(&policy_file, bench_policy())?;
    for round in 0..args.rounds {
        let order = if round % 2 == 0 {
            [subject, baseline]
        } else {
            [baseline, subject]
        };
        for subject in order {
            let hook = Hook {
                url: endpoint.as_deref(),
                sink: hooks.as_ref(),
            };
            let r = run_round(&conn, &uri, &bin_dir, subject, &args, &policy_file, hook).await?;
            let commits = match r.commits {
                0 => String::new(),
                n => format!(
                    "  commits {n}: p50 ≤{:.1} ms p99 ≤{:.1} ms",
                    r.commit_p50_ms, r.commit_p99_ms
                ),
            };
            eprintln!(
                "round {} {:>6}: {:>8.0} msg/s  cpu {:>6.1} µs/msg  rss {:>5.1} MB  p50 {:>6.2} ms  p99 {:>6.2} ms{commits}",
                round + 1,
                subject.name(),
                r.msgs_per_sec,
                r.cpu_us_per_msg,
                r.peak_rss_mb,
                r.p50_ms,
                r.p99_ms
            );
            results.entry(subject).or_default().push(r);
        }
    }
    let _ = std::fs::remove_file(&policy_file);
    report(&results, &args, subject, baseline);
    Ok(())
}

/// 50 deny patterns, as a content policy of a real deployment might have: words to refuse,
/// and numbers, addresses and links to mask. None matches the benchmark's text, so every
/// message is scanned against all of them and delivered.
fn bench_policy() -> String {
    let mut p = String::from("max_text_bytes = 8192\n");
    for i in 0..40 {
        p.push_str(&format!(
            "[[deny]]\npattern = \"(?i)\\\\bforbiddenword{i}\\\\b\"\naction = \"reject\"\n"
        ));
    }
    for (i, pat) in [
        "\\\\b(?:\\\\d[ -]?){13,16}\\\\b",
        "[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\\\\.[a-z]{2,}",
        "https?://\\\\S+",
        "\\\\+?\\\\d{2,3}[ -]\\\\d{3}[ -]\\\\d{4}",
        "(?i)iban[: ]*[a-z]{2}\\\\d{2}",
        "(?i)password[: ]+\\\\S+",
        "(?i)\\\\bssn\\\\b",
        "(?i)\\\\bcvv\\\\b",
        "(?i)\\\\bpin code\\\\b",
        "(?i)\\\\bbitcoin\\\\b",
    ]
    .iter()
    .enumerate()
    {
        p.push_str(&format!(
            "[[deny]]\n# mask {i}\npattern = \"{pat}\"\naction = \"mask\"\n"
        ));
    }
    p
}

fn report(results: &HashMap<Subject, Vec<RoundResult>>, args: &Args, subject: Subject, baseline: Subject) {
    let med = |s: Subject, f: fn(&RoundResult) -> f64| median(results[&s].iter().map(f).collect());
    let fanout = match args.group_size {
        0 => String::new(),
        n => format!(", group of {n}: each message is {} copies", n + 1),
    };
    println!(
        "\nmedians of {} rounds (burst {} msgs, latency at {} msg/s{fanout}):",
        args.rounds, args.messages, args.rate
    );
    println!("| subject | throughput msg/s | CPU µs/msg | peak RSS MB | p50 ms | p99 ms | p99.9 ms |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for s in [subject, baseline] {
        println!(
            "| {} | {:.0} | {:.1} | {:.1} | {:.2} | {:.2} | {:.2} |",
            s.name(),
            med(s, |r| r.msgs_per_sec),
            med(s, |r| r.cpu_us_per_msg),
            med(s, |r| r.peak_rss_mb),
            med(s, |r| r.p50_ms),
            med(s, |r| r.p99_ms),
            med(s, |r| r.p999_ms)
        );
    }
    let tp = med(subject, |r| r.msgs_per_sec) / med(baseline, |r| r.msgs_per_sec);
    let p99 = med(subject, |r| r.p99_ms) / med(baseline, |r| r.p99_ms);
    let rss = med(subject, |r| r.peak_rss_mb);
    let (a, b) = (subject.name(), baseline.name());
    println!("\n{a}/{b} throughput ratio: {tp:.2}");
    println!("{a}/{b} p99 latency ratio: {p99:.2}");
    println!("{a} peak RSS: {rss:.1} MB");
    for s in [subject, baseline] {
        if results[&s].iter().any(|r| r.commits > 0) {
            println!(
                "{} store commits at {} msg/s: {:.0} per round, p50 ≤{:.1} ms, p99 ≤{:.1} ms (bucket bounds)",
                s.name(),
                args.rate,
                med(s, |r| r.commits as f64),
                med(s, |r| r.commit_p50_ms),
                med(s, |r| r.commit_p99_ms)
            );
        }
    }
    if args.webhooks == Some(Webhooks::Healthy) {
        println!(
            "webhook event latency (made → received) at {} msg/s: p50 {:.1} ms, p99 {:.1} ms",
            args.rate,
            med(subject, |r| r.event_p50_ms),
            med(subject, |r| r.event_p99_ms)
        );
    }
}

/// Where the webhooks subject sends its events, and the receiver when it is ours.
#[derive(Clone, Copy)]
struct Hook<'a> {
    url: Option<&'a str>,
    sink: Option<&'a HookSink>,
}

async fn run_round(
    conn: &Connection,
    uri: &str,
    bin_dir: &Path,
    subject: Subject,
    args: &Args,
    policy_file: &Path,
    hook: Hook<'_>,
) -> Result<RoundResult, Box<dyn std::error::Error>> {
    let app = format!("bench{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let queue = format!("chat21.bench.{app}");
    let layout = Layout::new(&queue, args.partitions, DELIVERY_LIMIT);
    let topics = Topics::chat21(&app);
    let ch = conn.create_channel().await?;
    // The subject's queues and bindings exist before it starts, so the burst waits in them.
    topology::declare(&ch, &layout, &topics.bindings(), &[]).await?;
    let epoch = Instant::now();
    let keys: Vec<String> = match args.group_size {
        0 => (0..args.recipients)
            .map(|r| format!("apps.{app}.users.r{r}.messages.*.clientadded"))
            .collect(),
        _ => vec![format!("apps.{app}.users.*.messages.{GROUP}.clientadded")],
    };
    let sink = Sink::start(conn, &format!("bench.sink.{app}"), &keys, epoch).await?;
    // Copies per message the sink counts: the recipient's, or every member's + the timeline.
    let fanout = if args.group_size > 0 {
        args.group_size as u64 + 1
    } else {
        1
    };

    // The group is created the way a service does it, as the first input in the queue.
    ch.confirm_select(Default::default()).await?;
    if args.group_size > 0 {
        let members: serde_json::Map<_, _> = (0..args.group_size).map(|i| (member(i), 1.into())).collect();
        let update = serde_json::json!({"group": {"uid": GROUP, "name": "bench", "members": members}, "notify_to": {}});
        ch.basic_publish(
            "amq.topic".into(),
            topics.group_update(&app).as_str().into(),
            BasicPublishOptions::default(),
            update.to_string().as_bytes(),
            BasicProperties::default().with_delivery_mode(2),
        )
        .await?
        .await?;
    }
    // The block list, the same way: commands queued ahead of the burst. Each recipient has
    // blocked a few users who are not senders, so every delivery is checked against a real
    // list; the rest are blocks among other users.
    if let (Subject::Policies, Some(blocks)) = (subject, args.policies) {
        for i in 0..blocks {
            let user = if i % 100 == 0 {
                format!("r{}", (i / 100) % args.recipients.max(1))
            } else {
                format!("u{i}")
            };
            let key = topics.block(&app, &user, &format!("x{i}"), true);
            ch.basic_publish(
                "amq.topic".into(),
                key.as_str().into(),
                BasicPublishOptions::default(),
                b"{}",
                BasicProperties::default().with_delivery_mode(2),
            )
            .await?;
        }
        ch.wait_for_confirms().await?;
    }
    // Burst: queue N messages, then start the subject and time the drain.
    publish_burst(&ch, &topics, args, epoch).await?;
    // The relay has no store; the engine gets the configured one (a fresh database per round).
    let store = match args.store.as_str() {
        "sqlite" => format!("sqlite://{}/bench-{app}.db", std::env::temp_dir().display()),
        other => other.to_string(),
    };
    let hook_url = hook.url.filter(|_| subject == Subject::Webhooks);
    if let Some(sink) = hook.sink {
        sink.reset();
    }
    // The engine's ops endpoints (not the HTTP API) on a port of their own, for its histograms.
    let ops_port = (subject != Subject::Relay)
        .then(|| std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()))
        .transpose()?
        .map(|a| a.port());
    let mut child = spawn_subject(
        bin_dir,
        subject,
        uri,
        &app,
        &queue,
        args,
        &store,
        policy_file,
        hook_url,
        ops_port,
    )?;
    let pid = child.id();
    let cpu0 = cpu_seconds(pid);
    let copies = args.messages as u64 * fanout;
    let (first, last) = sink.wait_for(copies, Duration::from_secs(300)).await?;
    let cpu1 = cpu_seconds(pid);
    let rss = peak_rss_mb(pid);
    // Messages (not copies) per second, so direct and group runs read the same way.
    let msgs_per_sec = (copies as f64 - 1.0) / fanout as f64 / (last - first).as_secs_f64().max(1e-9);

    // Events per message: direct, the sender's copy (sent) and the recipient's (delivered);
    // group, each member's copy (delivered) and the group timeline's (sent).
    let events_per_msg = if args.group_size > 0 { fanout } else { 2 };
    let hook_sink = hook.sink.filter(|_| subject == Subject::Webhooks);
    if let Some(h) = hook_sink {
        // The burst's events first, so the latency phase measures events, not a backlog.
        if !h
            .wait_for(args.messages as u64 * events_per_msg, Duration::from_secs(300))
            .await
        {
            eprintln!("bench: not every webhook event of the burst arrived within 300 s");
        }
        h.reset();
    }

    // Latency at a fixed rate.
    sink.reset();
    let total = args.rate * args.seconds;
    let paced_from_ms = now_ms();
    let commits_before = match ops_port {
        Some(port) => commits::Commits::scrape(port).await,
        None => Default::default(),
    };
    publish_paced(&ch, &topics, args, epoch, total).await?;
    sink.wait_for(total * fanout, Duration::from_secs(120)).await?;
    let (commit_count, commit_p50_ms, commit_p99_ms) = match ops_port {
        Some(port) => commits::Commits::scrape(port).await.since(&commits_before),
        None => (0, 0.0, 0.0),
    };
    let lat = sink.latencies_ms();
    let event_lat = match hook_sink {
        Some(h) => {
            if !h.wait_for(total * events_per_msg, Duration::from_secs(120)).await {
                eprintln!("bench: not every webhook event of the latency phase arrived within 120 s");
            }
            h.latencies_ms(paced_from_ms)
        }
        None => Vec::new(),
    };

    let _ = child.kill();
    let _ = child.wait();
    if let Some(path) = store.strip_prefix("sqlite://") {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{path}{suffix}"));
        }
    }
    let endpoint_queues = hook_url
        .map(|u| {
            let e = chat21_engine::webhooks::Endpoint::new(u);
            vec![e.queue(&queue), e.failed(&queue)]
        })
        .unwrap_or_default();
    for q in layout
        .queues()
        .into_iter()
        .chain([layout.dead_letter()])
        .chain(endpoint_queues)
    {
        let _ = ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default()).await;
    }
    let _ = ch
        .exchange_delete(layout.exchange().as_str().into(), Default::default())
        .await;
    let _ = ch.close(200, "done".into()).await;
    Ok(RoundResult {
        msgs_per_sec,
        cpu_us_per_msg: (cpu1 - cpu0) * 1e6 / args.messages as f64,
        peak_rss_mb: rss,
        p50_ms: percentile(&lat, 0.50),
        p99_ms: percentile(&lat, 0.99),
        p999_ms: percentile(&lat, 0.999),
        event_p50_ms: percentile(&event_lat, 0.50),
        event_p99_ms: percentile(&event_lat, 0.99),
        commits: commit_count,
        commit_p50_ms,
        commit_p99_ms,
    })
}

/// The benchmark group's id and member ids.
const GROUP: &str = "group-bench";

fn member(i: usize) -> String {
    format!("m{i}")
}

fn body(n: usize, epoch: Instant, args: &Args) -> Vec<u8> {
    serde_json::json!({
        "text": format!("hello, this is benchmark message number {n}"),
        "type": "text",
        "channel_type": if args.group_size > 0 { "group" } else { "direct" },
        "sender_fullname": "Bench Sender",
        "recipient_fullname": "Bench Recipient",
        "attributes": {"client": "bench", "lang": "en"},
        "metadata": null,
        "sent_ns": epoch.elapsed().as_nanos() as u64,
    })
    .to_string()
    .into_bytes()
}

fn route(topics: &Topics, n: usize, args: &Args) -> String {
    if args.group_size > 0 {
        return topics.outgoing(&member(n % args.senders.min(args.group_size)), GROUP);
    }
    let s = n % args.senders;
    let r = (n / args.senders) % args.recipients;
    topics.outgoing(&format!("s{s}"), &format!("r{r}"))
}

async fn publish_burst(
    ch: &Channel,
    topics: &Topics,
    args: &Args,
    epoch: Instant,
) -> Result<(), Box<dyn std::error::Error>> {
    let props = BasicProperties::default().with_delivery_mode(2);
    for n in 0..args.messages {
        ch.basic_publish(
            "amq.topic".into(),
            route(topics, n, args).as_str().into(),
            BasicPublishOptions::default(),
            &body(n, epoch, args),
            props.clone(),
        )
        .await?;
    }
    ch.wait_for_confirms().await?;
    Ok(())
}

async fn publish_paced(
    ch: &Channel,
    topics: &Topics,
    args: &Args,
    epoch: Instant,
    total: u64,
) -> Result<(), Box<dyn std::error::Error>> {
    let props = BasicProperties::default().with_delivery_mode(2);
    let start = Instant::now();
    for n in 0..total {
        // Absolute schedule: no drift when a tick is late.
        let due = start + Duration::from_nanos(n * 1_000_000_000 / args.rate);
        tokio::time::sleep_until(due.into()).await;
        ch.basic_publish(
            "amq.topic".into(),
            route(topics, n as usize, args).as_str().into(),
            BasicPublishOptions::default(),
            &body(n as usize, epoch, args),
            props.clone(),
        )
        .await?;
    }
    ch.wait_for_confirms().await?;
    Ok(())
}

#[allow(clippy::too_many_arguments)] // one call site; a struct would only rename them
fn spawn_subject(
    bin_dir: &Path,
    subject: Subject,
    uri: &str,
    app: &str,
    queue: &str,
    args: &Args,
    store: &str,
    policy_file: &Path,
    webhook: Option<&str>,
    ops_port: Option<u16>,
) -> std::io::Result<Child> {
    let members: Vec<String> = (0..args.group_size).map(member).collect();
    let bin = bin_dir.join(match subject {
        Subject::Engine | Subject::Policies | Subject::Webhooks => "chat21-engine",
        Subject::Relay => "relay",
    });
    let mut cmd = Command::new(bin);
    cmd.env_clear();
    if subject == Subject::Policies {
        // A limit no benchmark sender reaches: the stage runs, nobody is refused.
        cmd.env("RATE_LIMIT_PER_MIN", "1000000000")
            .env("POLICY_FILE", policy_file);
    } else {
        // The plain engine: no rate limit (the default would refuse the burst's senders).
        cmd.env("RATE_LIMIT_PER_MIN", "0");
    }
    if let Some(url) = webhook {
        cmd.env("WEBHOOK_ENABLED", "true").env("WEBHOOK_ENDPOINTS", url);
    }
    cmd.env("RABBITMQ_URI", uri)
        .env("APP_ID", app)
        .env("QUEUE_NAME", queue)
        .env("PREFETCH_MESSAGES", args.prefetch.to_string())
        .env("PARTITIONS", args.partitions.to_string())
        .env("DELIVERY_LIMIT", DELIVERY_LIMIT.to_string())
        .env("GROUP_ID", if args.group_size > 0 { GROUP } else { "" })
        .env("GROUP_MEMBERS", members.join(","))
        .env("HTTP_PORT", "0")
        .env("OPS_HTTP_PORT", ops_port.map_or("0".into(), |p| p.to_string()))
        .env("DATABASE_URL", store)
        .env("LOG_LEVEL", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
}
