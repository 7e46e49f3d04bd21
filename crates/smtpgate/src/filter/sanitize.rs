//! `kind = "sanitize"`: removes headers that should not leave (X-Originating-IP, User-Agent,
//! internal Received lines).

use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;

use super::registry::{BuildErrors, options};
use super::{BoxFuture, Filter, FilterError, MessageInfo, Modification, Verdict};

#[derive(Debug, Deserialize)]
struct Options {
    #[serde(default)]
    remove_headers: Vec<String>,
}

#[derive(Debug)]
pub struct Sanitize {
    remove: Vec<String>,
}

pub fn build(raw: toml::Table, _base_dir: &Path) -> Result<Arc<dyn Filter>, BuildErrors> {
    let o: Options = options(raw)?;
    Ok(Arc::new(Sanitize {
        remove: o.remove_headers,
    }))
}

impl Filter for Sanitize {
    fn data<'a>(&'a self, _m: &'a MessageInfo<'a>) -> BoxFuture<'a, Result<Verdict, FilterError>> {
        Box::pin(async move {
            let mut v = Verdict::accept();
            for name in &self.remove {
                v = v.with(Modification::RemoveHeader(name.clone()));
            }
            Ok(v)
        })
    }
}
