//! End-to-end tests sharing one private RabbitMQ node (each test has its own app id, queue
//! and users, so they run in parallel without seeing each other's traffic).

#[path = "../common/mod.rs"]
mod common;

mod cli;
mod direct;
mod doctor;
mod engine_kill;
mod groups;
mod hostile;
mod http_api;
mod http_groups;
mod partitions;
mod persistence;
mod policies;
mod real_client;
mod security;
mod seed;
mod webhooks;
