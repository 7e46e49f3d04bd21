//! The config file as written: serde structs that mirror the TOML layout one to one.
//!
//! Every field is optional (defaults are applied in [`super::Config::from_raw`]) and every
//! human value (sizes, durations, addresses, networks) is kept as text, so that one bad value
//! is reported by `from_raw` together with all the others instead of stopping the parse.
//! Unknown keys are collected while parsing (`serde_ignored`) and reported with the other
//! mistakes, so a misspelt key is never silently ignored.

use serde::Deserialize;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
pub struct RawConfig {
    pub hostname: Option<String>,
    pub shutdown_timeout: Option<Text>,
    pub spool: Option<RawSpool>,
    pub admin: Option<RawAdmin>,
    #[serde(default, rename = "listener")]
    pub listeners: Vec<RawListener>,
    #[serde(default, rename = "pool")]
    pub pools: Vec<super::pool::RawPool>,
    #[serde(default, rename = "route")]
    pub routes: Vec<super::route::RawRoute>,
    pub queue: Option<RawQueue>,
    pub dns: Option<RawDns>,
    pub routing: Option<super::route::RawRouting>,
    pub quarantine: Option<RawQuarantine>,
    pub shaping: Option<RawShaping>,
    #[serde(default, rename = "stream")]
    pub streams: Vec<super::stream::RawStream>,
    pub suppression: Option<RawSuppression>,
    pub redis: Option<RawRedis>,
    pub mta_sts: Option<RawMtaSts>,
    pub dane: Option<RawDane>,
    pub bounces: Option<RawBounces>,
    pub events: Option<RawEvents>,
    #[serde(default, rename = "filter")]
    pub filters: Vec<super::filter::RawFilter>,
    #[serde(default, rename = "webhook")]
    pub webhooks: Vec<super::webhook::RawWebhook>,
}

/// `[spool]`
#[derive(Debug, Default, Deserialize)]
pub struct RawSpool {
    pub dir: Option<String>,
    pub min_free_space: Option<Text>,
    pub segment_size: Option<Text>,
    pub memory_budget: Option<Text>,
    pub spill_size: Option<Text>,
}

/// `[admin]`
#[derive(Debug, Default, Deserialize)]
pub struct RawAdmin {
    pub enabled: Option<bool>,
    pub address: Option<Text>,
    pub token_file: Option<String>,
    pub hosts: Option<Vec<String>>,
}

/// One `[[listener]]`.
#[derive(Debug, Default, Deserialize)]
pub struct RawListener {
    pub name: Option<String>,
    pub address: Option<Text>,
    pub relay_networks: Option<Vec<Text>>,
    pub local_domains: Option<Vec<String>>,
    pub tls: Option<RawTlsFiles>,
    pub implicit_tls: Option<bool>,
    pub max_message_size: Option<Text>,
    pub max_recipients: Option<i64>,
    pub max_connections: Option<i64>,
    pub max_connections_per_ip: Option<i64>,
    pub max_errors: Option<i64>,
    pub command_timeout: Option<Text>,
    pub data_timeout: Option<Text>,
    pub greeting_delay: Option<Text>,
    pub bare_line_endings: Option<String>,
    pub nul_bytes: Option<String>,
    pub max_hops: Option<i64>,
    pub write_timeout: Option<Text>,
    pub min_data_rate: Option<i64>,
    pub ipv6_prefix: Option<i64>,
    pub auth: Option<RawAuth>,
    pub submission: Option<bool>,
    pub require_tls: Option<bool>,
    pub filters: Option<Vec<String>>,
    pub mode: Option<String>,
}

/// `tls = { cert = "...", key = "..." }` in a listener.
#[derive(Debug, Deserialize)]
pub struct RawTlsFiles {
    pub cert: String,
    pub key: String,
}

/// `auth = { users_file = "...", allow_plaintext = false }` in a listener.
#[derive(Debug, Deserialize)]
pub struct RawAuth {
    pub users_file: String,
    pub allow_plaintext: Option<bool>,
    pub max_failures: Option<i64>,
    pub lockout: Option<Text>,
}

/// `[queue]`
#[derive(Debug, Default, Deserialize)]
pub struct RawQueue {
    pub retry: Option<Vec<Text>>,
    pub max_age: Option<Text>,
    pub connections_per_destination: Option<i64>,
    pub messages_per_connection: Option<i64>,
    pub max_connections: Option<i64>,
    pub connect_timeout: Option<Text>,
    pub smtp_port: Option<i64>,
    pub command_timeout: Option<Text>,
    pub data_timeout: Option<Text>,
}

/// `[dns]`
#[derive(Debug, Default, Deserialize)]
pub struct RawQuarantine {
    pub max_age: Option<Text>,
}

/// `[suppression]`
#[derive(Debug, Default, Deserialize)]
pub struct RawSuppression {
    pub action: Option<String>,
    pub complaints_address: Option<String>,
    pub reports_remember: Option<String>,
    pub reports_per_minute: Option<i64>,
    pub report_max_recipients: Option<i64>,
}

/// `[mta_sts]`
#[derive(Debug, Default, Deserialize)]
pub struct RawMtaSts {
    pub enabled: Option<bool>,
    pub https_port: Option<i64>,
    pub ca_file: Option<String>,
}

/// `[events]`
#[derive(Debug, Default, Deserialize)]
pub struct RawEvents {
    pub enabled: Option<bool>,
    pub dir: Option<String>,
    pub node: Option<String>,
    pub retention: Option<Text>,
    pub max_size: Option<Text>,
    pub log_file: Option<String>,
    pub log_max_size: Option<Text>,
    pub log_keep: Option<i64>,
}

/// `[dane]`
#[derive(Debug, Default, Deserialize)]
pub struct RawDane {
    pub enabled: Option<bool>,
}

/// `[redis]`
#[derive(Debug, Default, Deserialize)]
pub struct RawRedis {
    pub url: Option<String>,
    pub prefix: Option<String>,
}

/// `[bounces]`
#[derive(Debug, Default, Deserialize)]
pub struct RawBounces {
    pub rules: Option<String>,
}

/// `[shaping]`
#[derive(Debug, Default, Deserialize)]
pub struct RawShaping {
    pub file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawDns {
    pub nameservers: Option<Vec<Text>>,
}

pub use super::text::Text;
