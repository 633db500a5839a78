//! The engine's clock: wall time in epoch milliseconds, the unit of every timestamp it writes
//! (message `timestamp`, `createdAt` of webhook events, last-seen, dead-letter headers).

/// Now, in epoch milliseconds (0 if the system clock is before 1970).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}
