//! A message's header section, as every part of the gate edits it: plain functions on bytes, with
//! nothing of SMTP, routing or filters in them (they sit below all of those).

/// A copy of `message` without the header fields named in `remove` and with `add` inserted after
/// the first field (the session's own `Received:`).
pub fn apply_header_changes(message: &[u8], add: &[(String, String)], remove: &[String]) -> Vec<u8> {
    if add.is_empty() && remove.is_empty() {
        return message.to_vec();
    }
    let added: Vec<u8> = add
        .iter()
        .flat_map(|(n, v)| format!("{n}: {v}\r\n").into_bytes())
        .collect();
    let mut out = Vec::with_capacity(message.len() + added.len());
    let mut fields = 0;
    let mut inserted = false;
    let mut dropping = false;
    let mut pos = 0;
    while pos < message.len() {
        let end = message[pos..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(message.len(), |i| pos + i + 1);
        let line = &message[pos..end];
        pos = end;
        let blank = line == b"\r\n" || line == b"\n";
        let continuation = line.starts_with(b" ") || line.starts_with(b"\t");
        // After the first field (the trace header), or before the blank line if it is the only one.
        if !inserted && (blank || (!continuation && fields == 1)) {
            out.extend_from_slice(&added);
            inserted = true;
        }
        if blank {
            out.extend_from_slice(line);
            break;
        }
        if !continuation {
            fields += 1;
            dropping = remove.iter().any(|r| starts_with_ci(line, format!("{r}:").as_bytes()));
        }
        if !dropping {
            out.extend_from_slice(line);
        }
    }
    out.extend_from_slice(&message[pos..]);
    out
}

pub(crate) fn starts_with_ci(line: &[u8], prefix: &[u8]) -> bool {
    line.len() >= prefix.len() && line[..prefix.len()].eq_ignore_ascii_case(prefix)
}

/// Header fields (unfolded) and where the body starts.
pub fn parse_headers(message: &[u8]) -> (Vec<(String, String)>, usize) {
    let mut headers: Vec<(String, String)> = Vec::new();
    let mut pos = 0;
    while pos < message.len() {
        let end = message[pos..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(message.len(), |i| pos + i + 1);
        let line = String::from_utf8_lossy(&message[pos..end]);
        let line = line.trim_end_matches(['\r', '\n']);
        pos = end;
        if line.is_empty() {
            break;
        }
        if line.starts_with([' ', '\t']) {
            if let Some(last) = headers.last_mut() {
                last.1.push(' ');
                last.1.push_str(line.trim());
            }
            continue;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_owned(), value.trim().to_owned()));
        }
    }
    (headers, pos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_changes_keep_the_trace_header_first() {
        let msg = b"Received: from x\r\n\tby y\r\nX-Internal: a\r\n b\r\nSubject: s\r\n\r\nX-Internal: body\r\n";
        let out = apply_header_changes(msg, &[("X-Routed".into(), "yes".into())], &["x-internal".into()]);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "Received: from x\r\n\tby y\r\nX-Routed: yes\r\nSubject: s\r\n\r\nX-Internal: body\r\n"
        );
    }

    #[test]
    fn header_added_when_the_trace_header_is_the_only_field() {
        let out = apply_header_changes(b"Received: from x\r\n\r\nbody\r\n", &[("A".into(), "1".into())], &[]);
        assert_eq!(out, b"Received: from x\r\nA: 1\r\n\r\nbody\r\n");
    }
}
