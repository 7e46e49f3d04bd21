//! What every part of a running server shares: configuration, spool, metrics, resolver.

use std::sync::Arc;

use hickory_resolver::TokioResolver;

use crate::config::Config;
use crate::envelope::IdGen;
use crate::metrics::Metrics;
use crate::spool::Spool;

pub struct Context {
    pub config: Arc<Config>,
    pub spool: Arc<Spool>,
    pub metrics: Arc<Metrics>,
    pub resolver: TokioResolver,
    pub client_tls: Arc<rustls::ClientConfig>,
    pub ids: IdGen,
}
