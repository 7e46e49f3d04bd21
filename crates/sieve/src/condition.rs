//! Evaluating tests against a message (RFC 5228 section 5).

use crate::address::{addresses, select};
use crate::ast::{AddressPart, Compare, EnvelopePart, SizeLimit, Test};
use crate::matching::any_key;
use crate::message::Message;

/// Whether `test` holds for `msg`. `allof` and `anyof` stop at the first test that decides.
pub(crate) fn holds(test: &Test, msg: &dyn Message) -> bool {
    match test {
        Test::True => true,
        Test::False => false,
        Test::Not(inner) => !holds(inner, msg),
        Test::AllOf(tests) => tests.iter().all(|t| holds(t, msg)),
        Test::AnyOf(tests) => tests.iter().any(|t| holds(t, msg)),
        Test::Exists(names) => names.iter().all(|n| !msg.header(n).is_empty()),
        Test::Size(SizeLimit::Over(n)) => msg.size() > *n,
        Test::Size(SizeLimit::Under(n)) => msg.size() < *n,
        Test::Header { cmp, headers, keys } => headers
            .iter()
            .flat_map(|h| msg.header(h))
            .any(|value| any_key(*cmp, &value, keys)),
        Test::Address {
            part,
            cmp,
            headers,
            keys,
        } => address(msg, headers, *part, *cmp, keys),
        Test::Envelope { part, cmp, which, keys } => which.iter().any(|w| envelope(msg, *w, *part, *cmp, keys)),
    }
}

fn address(msg: &dyn Message, headers: &[String], part: AddressPart, cmp: Compare, keys: &[String]) -> bool {
    headers
        .iter()
        .flat_map(|h| msg.header(h))
        .flat_map(|value| addresses(&value))
        .filter_map(|addr| select(&addr, part))
        .any(|value| any_key(cmp, &value, keys))
}

/// RFC 5228 section 5.4: the null reverse-path is compared as the empty string, whatever the
/// address part.
fn envelope(msg: &dyn Message, which: EnvelopePart, part: AddressPart, cmp: Compare, keys: &[String]) -> bool {
    let raw = match which {
        EnvelopePart::From => msg.envelope_from().unwrap_or_default(),
        EnvelopePart::To => msg.envelope_to(),
    };
    let addr = raw.trim().trim_start_matches('<').trim_end_matches('>');
    if addr.is_empty() {
        return any_key(cmp, "", keys);
    }
    select(addr, part).is_some_and(|value| any_key(cmp, &value, keys))
}
