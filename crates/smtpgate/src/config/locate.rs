//! Finds the key path (`listener[0].max_size`) at a byte offset of a TOML document, so that
//! serde errors (unknown key, wrong type, missing field) name their key like the others.

use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// The path of the innermost key or value at byte offset `at`, if the text parses as TOML.
pub fn key_at(text: &str, at: usize) -> Option<String> {
    let table = DeTable::parse(text).ok()?;
    in_table(table.get_ref(), at, "")
}

fn in_table(table: &DeTable<'_>, at: usize, path: &str) -> Option<String> {
    let join = |key: &str| {
        if path.is_empty() {
            key.to_owned()
        } else {
            format!("{path}.{key}")
        }
    };
    // Keys and their contents first: a table's own span may be wider than its text.
    for (key, value) in table.iter() {
        let key_path = join(key.get_ref());
        if let Some(inner) = in_value(value, at, &key_path) {
            return Some(inner);
        }
        let is_table = matches!(value.get_ref(), DeValue::Table(_));
        if contains(key, at) || (!is_table && contains(value, at)) {
            return Some(key_path);
        }
    }
    // Then a whole table, e.g. for "missing field `name`" reported on `[[pool]]`.
    table
        .iter()
        .find(|(_, value)| contains(value, at))
        .map(|(key, _)| join(key.get_ref()))
}

fn in_value(value: &Spanned<DeValue<'_>>, at: usize, path: &str) -> Option<String> {
    match value.get_ref() {
        DeValue::Table(table) => in_table(table, at, path),
        DeValue::Array(items) => in_array(items.into_iter(), at, path),
        _ => None,
    }
}

fn in_array<'a, 'i: 'a>(
    items: impl Iterator<Item = &'a Spanned<DeValue<'i>>>,
    at: usize,
    path: &str,
) -> Option<String> {
    let items: Vec<_> = items.collect();
    for (index, item) in items.iter().enumerate() {
        let item_path = format!("{path}[{index}]");
        if let Some(inner) = in_value(item, at, &item_path) {
            return Some(inner);
        }
    }
    items
        .iter()
        .position(|item| contains(item, at))
        .map(|index| format!("{path}[{index}]"))
}

fn contains<T>(spanned: &Spanned<T>, at: usize) -> bool {
    let span = spanned.span();
    span.start <= at && at < span.end.max(span.start + 1)
}

/// The byte offset of the key at `path` (segments as serde_ignored gives them: keys, and array
/// indexes as numbers), for pointing at an unknown key.
pub fn offset_of(text: &str, path: &[String]) -> Option<usize> {
    let table = DeTable::parse(text).ok()?;
    let mut current = table.get_ref();
    let (last, parents) = path.split_last()?;
    let mut parents = parents.iter().peekable();
    while let Some(key) = parents.next() {
        let (_, value) = current.iter().find(|(k, _)| k.get_ref() == key)?;
        let mut value = value.get_ref();
        if let (DeValue::Array(items), Some(index)) = (value, parents.peek().and_then(|i| i.parse::<usize>().ok())) {
            parents.next();
            value = items.into_iter().nth(index)?.get_ref();
        }
        let DeValue::Table(inner) = value else { return None };
        current = inner;
    }
    current
        .iter()
        .find(|(k, _)| k.get_ref() == last)
        .map(|(k, _)| k.span().start)
}
