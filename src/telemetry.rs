//! Logging: `LOG_LEVEL` (a level or a tracing filter), `LOG_FORMAT` pretty or json.

use tracing_subscriber::EnvFilter;

use crate::config::{Config, LogFormat};

pub fn init(cfg: &Config) {
    // lapin logs every connection error at error level; the supervisor reports those once.
    let filter = EnvFilter::try_new(format!("{},lapin=off", cfg.log.level)).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match cfg.log.format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
}
