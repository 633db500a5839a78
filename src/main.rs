//! `chat21-engine`: serve (default), mint a user token, check the configuration.

use clap::{Parser, Subcommand};
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

use chat21_engine::config::Config;
use chat21_engine::domain::{AppId, UserId};
use chat21_engine::topic::Topics;
use chat21_engine::{jwt, telemetry, Engine};

#[derive(Parser)]
#[command(name = "chat21-engine", version, about = "Chat21 real-time messaging engine (RabbitMQ observer)", after_help = Config::help_text())]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the engine (the default).
    Serve,
    /// Print a user JWT for MQTT/HTTP login, signed with JWT_SECRET.
    Token {
        user_id: String,
        /// App id (default: APP_ID).
        #[arg(long)]
        app: Option<String>,
        /// Allow a TRUSTED_SENDERS id (e.g. `system`): its token may post into any group.
        #[arg(long)]
        trusted: bool,
        /// An admin token (`tiledesk_api_roles: admin`): the HTTP API lets it act for any user
        /// of the app, manage any group and mint user tokens.
        #[arg(long)]
        admin: bool,
    },
    /// Validate the configuration and exit (0 = valid, 2 = invalid).
    CheckConfig,
    /// Apply the store's schema migrations (also done at every start) and exit.
    Migrate,
    /// Check the broker, the tokens, the store and the policy file with the configured
    /// settings, one line each (exit 0 only when every check passes).
    Doctor {
        /// The MQTT listener (default: the broker's host, port 1883).
        #[arg(long, value_name = "HOST:PORT")]
        mqtt: Option<String>,
        /// The Web-MQTT listener (default: ws://the broker's host:15675/ws).
        #[arg(long, value_name = "URL")]
        web_mqtt: Option<String>,
    },
    /// Webhook events that were not delivered within WEBHOOK_RETRY_FOR.
    Webhooks {
        #[command(subcommand)]
        action: WebhookAction,
    },
}

#[derive(Subcommand)]
enum WebhookAction {
    /// List them, one a line: endpoint, event id, type, made at (epoch ms), tries, last error.
    Failed,
    /// Put them back into their endpoint's queue, each with a new WEBHOOK_RETRY_FOR.
    Redeliver {
        /// Only the event with this id.
        #[arg(long)]
        id: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("chat21-engine: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command.unwrap_or(Command::Serve) {
        Command::CheckConfig => {
            // Assembling the engine checks what depends on other parts (ids, the seed
            // prefix, the policy file); it does no I/O.
            if let Err(e) = Engine::new(config.clone()) {
                eprintln!("chat21-engine: {e}");
                return ExitCode::from(2);
            }
            print!("{}", config.describe());
            eprintln!("configuration ok");
            ExitCode::SUCCESS
        }
        Command::Token {
            user_id,
            app,
            trusted,
            admin,
        } => match mint(&config, &user_id, app, trusted, admin) {
            Ok(token) => {
                println!("{token}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("chat21-engine: {e}");
                ExitCode::from(2)
            }
        },
        Command::Serve => serve(config),
        Command::Migrate => migrate(config),
        Command::Webhooks { action } => webhooks(config, action),
        Command::Doctor { mqtt, web_mqtt } => doctor(config, mqtt, web_mqtt),
    }
}

/// A user token for the configured layout: its scopes are that layout's topics of the user.
/// A trusted sender's token is a service credential (it may post into groups it is not a
/// member of, as `system` does), so it is minted only when asked for by name.
fn mint(config: &Config, user: &str, app: Option<String>, trusted: bool, admin: bool) -> Result<String, String> {
    if !trusted && config.policy.trusted_senders.iter().any(|t| t == user) {
        return Err(format!(
            "{user:?} is a trusted sender (TRUSTED_SENDERS): its token may post into any group; pass --trusted to mint it"
        ));
    }
    let app = app.unwrap_or_else(|| config.topics.app_id.clone());
    let app = AppId::parse(&app).map_err(|_| format!("app id {app:?} is not a valid id"))?;
    let user = UserId::parse(user).map_err(|_| format!("user id {user:?} is not a valid id"))?;
    let topics = Topics::from_config(&config.topics).map_err(|e| format!("PATH_PREFIX: {e}"))?;
    let minter = jwt::Minter::from_config(config).map_err(|e| e.to_string())?;
    let token = if admin {
        minter.admin_token(&topics, &app, &user, config.jwt.ttl)
    } else {
        minter.user_token(&topics, &app, &user, config.jwt.ttl)
    };
    token.map_err(|e| e.to_string())
}

fn serve(config: Config) -> ExitCode {
    telemetry::init(&config);
    let engine = match Engine::new(config) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("chat21-engine: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("chat21-engine: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        tokio::spawn(wait_for_signal(shutdown.clone()));
        tokio::spawn(reload_on_hangup(engine.clone()));
        match chat21_engine::run(engine, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = %e, "engine failed");
                eprintln!("chat21-engine: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

fn migrate(config: Config) -> ExitCode {
    let Some(backend) = config.store.clone() else {
        eprintln!("chat21-engine: DATABASE_URL=off: nothing to migrate");
        return ExitCode::from(2);
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
    let result = runtime.map_err(|e| e.to_string()).and_then(|rt| {
        rt.block_on(async {
            chat21_engine::store::Store::open(&backend)
                .await
                .map_err(|e| e.to_string())
        })
    });
    match result {
        Ok(store) => {
            println!("migrations applied ({})", store.backend().label());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("chat21-engine: {e}");
            ExitCode::FAILURE
        }
    }
}

fn doctor(config: Config, mqtt: Option<String>, web_mqtt: Option<String>) -> ExitCode {
    use chat21_engine::doctor;
    let mut targets = doctor::Targets::defaults(&config);
    if let Some(m) = mqtt {
        targets.mqtt = m;
    }
    if let Some(w) = web_mqtt {
        targets.web_mqtt = w;
    }
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("chat21-engine: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let checks = runtime.block_on(doctor::run(&config, &targets, |c| println!("{}", c.line())));
    let failed = checks.iter().filter(|c| !c.passed()).count();
    if failed == 0 {
        eprintln!("all {} checks passed", checks.len());
        ExitCode::SUCCESS
    } else {
        eprintln!("{failed} of {} checks did not pass", checks.len());
        ExitCode::FAILURE
    }
}

fn webhooks(config: Config, action: WebhookAction) -> ExitCode {
    use chat21_engine::webhooks::{endpoints, failed};
    let Some(cfg) = &config.webhooks else {
        eprintln!("chat21-engine: webhooks are off (WEBHOOK_ENABLED, WEBHOOK_ENDPOINTS): no failed events to look at");
        return ExitCode::from(2);
    };
    let endpoints = endpoints(&cfg.endpoints);
    let base = config.broker.queue_name.clone();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("chat21-engine: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result: Result<(), String> = runtime.block_on(async {
        let conn = chat21_engine::broker::connect(&config, "chat21-engine webhooks")
            .await
            .map_err(|e| e.to_string())?;
        let channel = conn.create_channel().await.map_err(|e| e.to_string())?;
        // The queues exist once an engine with these endpoints ran; declaring them here makes
        // a first look work too (and an empty list is the answer).
        chat21_engine::webhooks::declare(&channel, &base, &endpoints)
            .await
            .map_err(|e| e.to_string())?;
        match action {
            WebhookAction::Failed => {
                let all = failed::list(&channel, &base, &endpoints)
                    .await
                    .map_err(|e| e.to_string())?;
                for f in &all {
                    println!("{}", f.line());
                }
                eprintln!("{} failed event(s)", all.len());
            }
            WebhookAction::Redeliver { id } => {
                let n = failed::redeliver(&channel, &base, &endpoints, id.as_deref())
                    .await
                    .map_err(|e| e.to_string())?;
                eprintln!("{n} event(s) redelivered");
            }
        }
        let _ = channel.close(200, "done".into()).await;
        let _ = conn.close(200, "done".into()).await;
        Ok(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chat21-engine: {e}");
            ExitCode::FAILURE
        }
    }
}

/// SIGHUP reloads the policy file (`systemctl reload`), traffic keeps flowing meanwhile.
async fn reload_on_hangup(engine: std::sync::Arc<Engine>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::error!("cannot install the SIGHUP handler");
        return;
    };
    while hup.recv().await.is_some() {
        engine.reload_policy();
    }
}

async fn wait_for_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
    shutdown.cancel();
}
