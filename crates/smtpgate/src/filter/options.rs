//! Reading a filter kind's options: the rest of its `[[filter]]` keys, into the kind's own
//! `Options` type. Every kind and the registry use this; it uses none of them.

/// A kind's problems with its options: (key inside the `[[filter]]` block, message).
pub type BuildErrors = Vec<(String, String)>;

/// Deserializes a kind's options, reporting unknown keys and type errors with their key.
pub fn options<T: serde::de::DeserializeOwned>(options: toml::Table) -> Result<T, BuildErrors> {
    let mut unknown = Vec::new();
    let value = toml::Value::Table(options);
    let parsed: Result<T, _> = serde_ignored::deserialize(value, |path| unknown.push(path.to_string()));
    let mut errors: BuildErrors = unknown.into_iter().map(|k| (k, "unknown key".to_string())).collect();
    match parsed {
        Ok(v) if errors.is_empty() => Ok(v),
        Ok(_) => Err(errors),
        Err(e) => {
            errors.push((String::new(), e.to_string()));
            Err(errors)
        }
    }
}
