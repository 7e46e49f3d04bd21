use mail_parser::{MessageParser, MimeHeaders};

use super::mime::{self, MAX_LINE};
use super::*;

const OURS: &str = "Received: from client.test ([10.0.0.5])\r\n\tby gate.test (smtpgate) with ESMTP id 1;\r\n\tThu, 1 Jan 2026 00:00:00 +0000\r\n";
const FOOTER_TEXT: &str = "footer_text = \"Confidential: Example Ltd.\"\n";
const FOOTER_HTML: &str = "footer_html = \"<p>Confidential: Example Ltd.</p>\"\n";

fn filter(options: &str) -> Sanitize {
    let table: toml::Table = toml::from_str(options).expect("toml");
    Sanitize::from_options(options_of(table)).expect("valid options")
}

fn options_of(table: toml::Table) -> Options {
    super::options(table).expect("known keys")
}

fn build_errors(options: &str) -> BuildErrors {
    let table: toml::Table = toml::from_str(options).expect("toml");
    match super::options::<Options>(table) {
        Ok(o) => Sanitize::from_options(o).expect_err("should be refused"),
        Err(e) => e,
    }
}

/// The message after the verdict's modifications, applied as the pipeline does.
fn run(f: &Sanitize, message: &str, recipients: &[&str]) -> (Verdict, Vec<u8>) {
    let rcpts: Vec<Address> = recipients.iter().map(|r| Address::parse(r).unwrap()).collect();
    let v = f.verdict(message.as_bytes(), &rcpts);
    let mut out = message.as_bytes().to_vec();
    for m in &v.modifications {
        out = match m {
            Modification::ReplaceMessage(new) => new.clone(),
            Modification::AddHeader(n, val) => {
                crate::message::apply_header_changes(&out, &[(n.clone(), val.clone())], &[])
            }
            Modification::RemoveHeader(n) => crate::message::apply_header_changes(&out, &[], std::slice::from_ref(n)),
            other => panic!("unexpected {other:?}"),
        };
    }
    assert_well_formed(&out);
    (v, out)
}

fn assert_well_formed(out: &[u8]) {
    for (i, line) in out.split(|&b| b == b'\n').enumerate() {
        let is_last = i == out.split(|&b| b == b'\n').count() - 1;
        if !is_last {
            assert!(
                line.ends_with(b"\r"),
                "line {i} without CRLF: {:?}",
                String::from_utf8_lossy(line)
            );
        }
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        assert!(line.len() <= MAX_LINE, "line {i} is {} octets", line.len());
        assert_ne!(line, b".", "line {i} is a lone dot");
    }
}

fn replaced(v: &Verdict) -> bool {
    v.modifications
        .iter()
        .any(|m| matches!(m, Modification::ReplaceMessage(_)))
}

fn text(out: &[u8]) -> String {
    let m = MessageParser::default().parse(out).expect("parsable");
    m.body_text(0).expect("a text body").into_owned()
}

fn html(out: &[u8]) -> String {
    let m = MessageParser::default().parse(out).expect("parsable");
    m.body_html(0).expect("an html body").into_owned()
}

fn single(headers: &str, body: &str) -> String {
    format!("{OURS}From: a@example.test\r\nTo: b@example.org\r\nSubject: s\r\nMIME-Version: 1.0\r\n{headers}\r\n{body}")
}

// ---------------------------------------------------------------------------------------------
// Footer

#[test]
fn footer_is_appended_to_a_plain_7bit_message() {
    let msg = single("Content-Type: text/plain; charset=us-ascii\r\n", "Hello Bob.\r\n");
    let (v, out) = run(&filter(FOOTER_TEXT), &msg, &["b@example.org"]);
    assert!(replaced(&v));
    let body = text(&out);
    assert!(
        body.starts_with("Hello Bob.\r\n\r\nConfidential: Example Ltd."),
        "{body:?}"
    );
    assert!(
        String::from_utf8_lossy(&out).starts_with(OURS),
        "our Received stays first"
    );
}

#[test]
fn footer_is_appended_to_a_message_without_mime_headers() {
    let msg = format!("{OURS}Subject: s\r\n\r\nHello.\r\n");
    let (_, out) = run(&filter(FOOTER_TEXT), &msg, &[]);
    assert!(text(&out).contains("Hello.\r\n\r\nConfidential: Example Ltd."));
}

#[test]
fn footer_in_a_quoted_printable_part_keeps_it_quoted_printable() {
    let body = "Gr=C3=BC=C3=9Fe, a long line that is soft-broken here =\r\nand continues.\r\n";
    let msg = single(
        "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n",
        body,
    );
    let (_, out) = run(&filter("footer_text = \"Vertraulich – Grüße\"\n"), &msg, &[]);
    let decoded = text(&out);
    assert!(
        decoded.starts_with("Grüße, a long line that is soft-broken here and continues.\r\n"),
        "{decoded:?}"
    );
    assert!(decoded.contains("Vertraulich – Grüße"), "{decoded:?}");
    let m = MessageParser::default().parse(&out[..]).unwrap();
    assert_eq!(m.root_part().content_transfer_encoding(), Some("quoted-printable"));
}

#[test]
fn footer_in_a_base64_part_keeps_it_base64() {
    let msg = single(
        "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n",
        "SGVsbG8gd29ybGQsIGNhZsOpLgo=\r\n",
    );
    let (_, out) = run(&filter(FOOTER_TEXT), &msg, &[]);
    let decoded = text(&out);
    assert!(decoded.starts_with("Hello world, café.\n"), "{decoded:?}");
    assert!(decoded.contains("Confidential: Example Ltd."));
    let m = MessageParser::default().parse(&out[..]).unwrap();
    assert_eq!(m.root_part().content_transfer_encoding(), Some("base64"));
}

const ALTERNATIVE: &str = "Content-Type: multipart/alternative; boundary=\"alt\"\r\n\r\n\
--alt\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nPlain body.\r\n\
--alt\r\nContent-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n\
<html><body><p>HTML body.</p></body></html>\r\n\
--alt--\r\n";

#[test]
fn footers_go_into_both_alternatives() {
    let msg = format!("{OURS}Subject: s\r\nMIME-Version: 1.0\r\n{ALTERNATIVE}");
    let (_, out) = run(&filter(&format!("{FOOTER_TEXT}{FOOTER_HTML}")), &msg, &[]);
    assert!(
        text(&out).starts_with("Plain body.\r\n\r\nConfidential: Example Ltd."),
        "{}",
        text(&out)
    );
    let h = html(&out);
    assert!(
        h.contains("<p>HTML body.</p><p>Confidential: Example Ltd.</p>\r\n</body></html>"),
        "{h:?}"
    );
    let m = MessageParser::default().parse(&out[..]).unwrap();
    assert_eq!(m.parts.len(), 3, "structure unchanged");
    assert!(String::from_utf8_lossy(&out).contains("\r\n--alt--\r\n"));
}

#[test]
fn attachment_in_multipart_mixed_is_untouched() {
    let attachment = "--mix\r\nContent-Type: text/plain; name=\"notes.txt\"\r\nContent-Disposition: attachment; filename=\"notes.txt\"\r\n\r\nattached notes\r\n\
--mix\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename=\"a.pdf\"\r\n\r\nJVBERi0xLjQK\r\n";
    let msg = format!(
        "{OURS}Subject: s\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"mix\"\r\n\r\n\
--mix\r\nContent-Type: multipart/alternative; boundary=\"alt\"\r\n\r\n\
--alt\r\nContent-Type: text/plain\r\n\r\nThe body.\r\n\
--alt\r\nContent-Type: text/html\r\n\r\n<p>The body.</p>\r\n--alt--\r\n\r\n\
{attachment}--mix--\r\n"
    );
    let (_, out) = run(&filter(&format!("{FOOTER_TEXT}{FOOTER_HTML}")), &msg, &[]);
    let out_text = String::from_utf8_lossy(&out);
    assert!(out_text.contains(attachment), "attachments changed:\n{out_text}");
    assert_eq!(out_text.matches("Confidential").count(), 2, "{out_text}");
    assert!(text(&out).contains("The body.\r\n\r\nConfidential: Example Ltd."));
    assert!(
        html(&out).contains("<p>The body.</p>\r\n<p>Confidential: Example Ltd.</p>"),
        "{}",
        html(&out)
    );
}

#[test]
fn multipart_signed_message_is_left_alone() {
    let msg = format!(
        "{OURS}Subject: s\r\nMIME-Version: 1.0\r\nContent-Type: multipart/signed; protocol=\"application/pkcs7-signature\"; micalg=sha-256; boundary=\"sig\"\r\n\r\n\
--sig\r\nContent-Type: text/plain\r\n\r\nSigned text.\r\n\
--sig\r\nContent-Type: application/pkcs7-signature; name=smime.p7s\r\nContent-Transfer-Encoding: base64\r\n\r\nMIIB\r\n--sig--\r\n"
    );
    let (v, out) = run(&filter(&format!("{FOOTER_TEXT}normalize = true\n")), &msg, &[]);
    assert!(!replaced(&v));
    assert_eq!(out, msg.as_bytes());
}

#[test]
fn pkcs7_mime_message_is_left_alone() {
    let msg = single(
        "Content-Type: application/pkcs7-mime; smime-type=enveloped-data\r\nContent-Transfer-Encoding: base64\r\n",
        "MIIB\r\n",
    );
    let (v, _) = run(&filter(FOOTER_TEXT), &msg, &[]);
    assert!(!replaced(&v));
}

#[test]
fn dkim_signed_message_gets_no_footer_but_its_headers() {
    let msg = format!(
        "{OURS}DKIM-Signature: v=1; a=rsa-sha256; d=example.test; s=s; bh=x; b=y\r\nSubject: s\r\n\r\nHello.\r\n"
    );
    let f = filter(&format!(
        "{FOOTER_TEXT}list_unsubscribe = {{ mailto = \"unsub@example.test\" }}\n"
    ));
    let (v, out) = run(&f, &msg, &["b@example.org"]);
    assert!(!replaced(&v));
    assert!(!String::from_utf8_lossy(&out).contains("Confidential"));
    assert!(String::from_utf8_lossy(&out).contains("List-Unsubscribe: <mailto:unsub@example.test>\r\n"));
}

#[test]
fn footer_is_converted_to_a_latin1_part() {
    let msg = single(
        "Content-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: 8bit\r\n",
        "Caf\u{e9}\r\n",
    );
    // Built from bytes: the body is ISO-8859-1, not UTF-8.
    let raw: Vec<u8> = msg
        .replace('\u{e9}', "\u{1}")
        .bytes()
        .map(|b| if b == 1 { 0xE9 } else { b })
        .collect();
    // The en dash is not in ISO-8859-1: the text footer cannot be written, the part stays.
    let f = filter("footer_text = \"Vertraulich – nur für Sie\"\n");
    assert_eq!(f.verdict(&raw, &[]), Verdict::accept());
    let f = filter("footer_text = \"Nur für Sie\"\n");
    let Some(Modification::ReplaceMessage(out)) = f.verdict(&raw, &[]).modifications.first().cloned() else {
        panic!("no footer");
    };
    assert!(out.windows(7).any(|w| w == b"Nur f\xFCr"), "footer not in latin-1");
    assert_eq!(text(&out), "Café\r\n\r\nNur für Sie\r\n");
}

#[test]
fn unrepresentable_text_footer_is_skipped_and_html_uses_references() {
    let f = filter("footer_text = \"日本\"\nfooter_html = \"<p>日本 €</p>\"\n");
    let plain = single("Content-Type: text/plain; charset=iso-8859-15\r\n", "Hallo\r\n");
    let (v, _) = run(&f, &plain, &[]);
    assert!(!replaced(&v), "{v:?}");
    let page = single(
        "Content-Type: text/html; charset=iso-8859-15\r\n",
        "<html><body>Hallo</body></html>\r\n",
    );
    let (_, out) = run(&f, &page, &[]);
    assert!(
        String::from_utf8_lossy(&out).contains("<p>&#26085;&#26412; =A4</p>"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    assert!(html(&out).contains("<p>&#26085;&#26412; €</p>"), "{}", html(&out));
}

#[test]
fn ascii_part_with_non_ascii_footer_is_relabelled_utf8() {
    let msg = single(
        "Content-Type: text/plain; charset=us-ascii; format=flowed\r\n",
        "Hi.\r\n",
    );
    let (_, out) = run(&filter("footer_text = \"Grüße\"\n"), &msg, &[]);
    let m = MessageParser::default().parse(&out[..]).unwrap();
    let ct = m.root_part().content_type().unwrap();
    assert_eq!(ct.attribute("charset"), Some("utf-8"));
    assert_eq!(ct.attribute("format"), Some("flowed"));
    assert_eq!(text(&out), "Hi.\r\n\r\nGrüße\r\n");
}

#[test]
fn footer_is_not_added_twice() {
    let msg = single("Content-Type: text/plain\r\n", "Hello.\r\n");
    let f = filter(FOOTER_TEXT);
    let (_, once) = run(&f, &msg, &[]);
    let (v, twice) = run(&f, std::str::from_utf8(&once).unwrap(), &[]);
    assert!(!replaced(&v));
    assert_eq!(once, twice);
}

// ---------------------------------------------------------------------------------------------
// normalize

#[test]
fn long_line_in_a_7bit_part_becomes_quoted_printable() {
    let long = "word ".repeat(600);
    let msg = single("Content-Type: text/plain\r\n", &format!("{long}\r\n.\r\nend\r\n"));
    let (v, out) = run(&filter("normalize = true\n"), &msg, &[]);
    assert!(replaced(&v));
    assert_eq!(text(&out), format!("{long}\r\n.\r\nend\r\n"));
    assert!(String::from_utf8_lossy(&out).contains("Content-Transfer-Encoding: quoted-printable\r\n"));
}

#[test]
fn normalize_reencodes_only_the_part_with_a_long_line() {
    let long = "x".repeat(1200);
    let msg = format!(
        "{OURS}Subject: s\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n\
--b\r\nContent-Type: text/plain\r\n\r\nshort\r\n--b\r\nContent-Type: text/csv\r\nContent-Transfer-Encoding: 8bit\r\n\r\n{long}\r\n--b--\r\n"
    );
    let (v, out) = run(&filter("normalize = true\n"), &msg, &[]);
    assert!(replaced(&v));
    let m = MessageParser::default().parse(&out[..]).unwrap();
    assert_eq!(m.parts[1].text_contents(), Some("short"));
    assert_eq!(m.parts[2].text_contents(), Some(long.as_str()));
    assert!(String::from_utf8_lossy(&out).contains("--b\r\nContent-Type: text/plain\r\n\r\nshort\r\n--b\r\n"));
    let short = single("Content-Type: text/plain\r\n", "short\r\n");
    assert!(!replaced(&run(&filter("normalize = true\n"), &short, &[]).0));
}

#[test]
fn quoted_printable_round_trips_awkward_content() {
    let unicode = "ünïcödé ".repeat(50);
    let samples: [&[u8]; 5] = [
        b"trailing space \r\ntab\t\r\n.dot\r\n",
        b"bare\nlf and bare\rcr\r\n",
        &[b'='; 200],
        unicode.as_bytes(),
        b"no final newline ",
    ];
    for s in samples {
        let encoded = mime::qp_encode(s);
        assert!(
            mime::longest_line(&encoded) <= 76,
            "{}",
            String::from_utf8_lossy(&encoded)
        );
        assert_eq!(mime::decode(&encoded, mime::Cte::QuotedPrintable).as_deref(), Some(s));
    }
}

// ---------------------------------------------------------------------------------------------
// remove_received

const TRACE: &str = "Received: from relay.corp (relay.corp [192.168.1.2])\r\n\tby gw.corp with ESMTP id 2;\r\n\tThu, 1 Jan 2026 00:00:00 +0000\r\n\
Received: from mx.partner.example (mx.partner.example [203.0.113.9])\r\n\tby relay.corp with ESMTPS id 3; Thu, 1 Jan 2026 00:00:00 +0000\r\n\
Received: by app1.corp (Postfix, from userid 1000) id 4; Thu, 1 Jan 2026 00:00:00 +0000\r\n\
Received: from [10.9.9.9] (helo.example [198.51.100.7]) by relay.corp; Thu, 1 Jan 2026 00:00:00 +0000\r\n\
Received: from v6.corp ([IPv6:fd00::25]) by relay.corp; Thu, 1 Jan 2026 00:00:00 +0000\r\n";

#[test]
fn internal_received_fields_are_removed_but_ours_and_external_stay() {
    let msg = format!("{OURS}{TRACE}Subject: s\r\n\r\nbody\r\n");
    let (v, out) = run(&filter("remove_received = \"internal\"\n"), &msg, &[]);
    assert!(replaced(&v));
    let out = String::from_utf8(out).unwrap();
    assert!(out.starts_with(OURS));
    assert!(!out.contains("192.168.1.2"), "{out}");
    assert!(!out.contains("userid 1000"), "{out}");
    assert!(!out.contains("fd00::25"), "{out}");
    assert!(out.contains("[203.0.113.9]"), "external hop kept: {out}");
    assert!(
        out.contains("[198.51.100.7]"),
        "public connection with a private HELO kept: {out}"
    );
    assert!(out.ends_with("Subject: s\r\n\r\nbody\r\n"));
}

#[test]
fn all_received_fields_but_ours_are_removed() {
    let msg = format!("{OURS}{TRACE}Subject: s\r\n\r\nReceived: from [10.0.0.1] in the body\r\n");
    let (_, out) = run(&filter("remove_received = \"all\"\n"), &msg, &[]);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        format!("{OURS}Subject: s\r\n\r\nReceived: from [10.0.0.1] in the body\r\n")
    );
}

#[test]
fn our_own_received_from_a_private_client_is_never_removed() {
    let msg = format!("{OURS}Subject: s\r\n\r\nbody\r\n");
    let (v, _) = run(&filter("remove_received = \"internal\"\n"), &msg, &[]);
    assert!(!replaced(&v));
}

// ---------------------------------------------------------------------------------------------
// list_unsubscribe

const UNSUB: &str = "list_unsubscribe = { url = \"https://example.test/unsub?u={recipient}\", mailto = \"unsubscribe@example.test\", one_click = true }\n";

#[test]
fn list_unsubscribe_fields_name_the_first_recipient() {
    let msg = format!("{OURS}Subject: s\r\n\r\nbody\r\n");
    let (v, out) = run(&filter(UNSUB), &msg, &["a+b@example.org", "c@example.org"]);
    assert!(!replaced(&v), "headers only: {v:?}");
    let out = String::from_utf8(out).unwrap();
    assert!(
        out.contains("List-Unsubscribe: <https://example.test/unsub?u=a%2Bb%40example.org>, <mailto:unsubscribe@example.test>\r\n"),
        "{out}"
    );
    assert!(
        out.contains("List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"),
        "{out}"
    );
    assert!(out.starts_with(OURS));
}

#[test]
fn list_unsubscribe_is_not_added_twice() {
    let msg = format!("{OURS}list-unsubscribe: <mailto:x@example.test>\r\nSubject: s\r\n\r\nbody\r\n");
    let (v, _) = run(&filter(UNSUB), &msg, &["b@example.org"]);
    assert!(v.modifications.is_empty(), "{v:?}");
}

#[test]
fn everything_at_once_keeps_the_order_of_the_pipeline() {
    let msg = format!("{OURS}{TRACE}X-Originating-IP: 10.1.1.1\r\nSubject: s\r\nMIME-Version: 1.0\r\n{ALTERNATIVE}");
    let options = format!(
        "{FOOTER_TEXT}{FOOTER_HTML}{UNSUB}remove_received = \"internal\"\nnormalize = true\nremove_headers = [\"X-Originating-IP\"]\n"
    );
    let (_, out) = run(&filter(&options), &msg, &["b@example.org"]);
    let s = String::from_utf8_lossy(&out);
    assert!(s.starts_with(OURS) && s.contains("List-Unsubscribe-Post") && !s.contains("X-Originating-IP"));
    assert!(!s.contains("192.168.1.2"));
    assert!(text(&out).contains("Confidential") && html(&out).contains("Confidential"));
}

// ---------------------------------------------------------------------------------------------
// Options

#[test]
fn bad_options_are_reported_with_their_keys() {
    let keys = |o: &str| build_errors(o).into_iter().map(|(k, _)| k).collect::<Vec<_>>();
    assert_eq!(keys("remove_received = \"some\"\n"), ["remove_received"]);
    assert_eq!(
        keys("list_unsubscribe = { one_click = true }\n"),
        ["list_unsubscribe", "list_unsubscribe.one_click"]
    );
    assert_eq!(
        keys("list_unsubscribe = { url = \"http://x.test/u\", one_click = true }\n"),
        ["list_unsubscribe.url"]
    );
    assert_eq!(
        keys("list_unsubscribe = { url = \"https://x.test/u>\" }\n"),
        ["list_unsubscribe.url"]
    );
    assert_eq!(
        keys("list_unsubscribe = { mailto = \"nobody\" }\n"),
        ["list_unsubscribe.mailto"]
    );
    assert_eq!(keys("footer_text = \" \"\n"), ["footer_text"]);
    assert_eq!(
        keys("list_unsubscribe = { mailto = \"a@b.test\", post = 1 }\n"),
        ["list_unsubscribe.?.post"]
    );
}

#[test]
fn remove_headers_alone_still_works_as_before() {
    let f = filter("remove_headers = [\"User-Agent\"]\n");
    let msg = format!("{OURS}User-Agent: x\r\nSubject: s\r\n\r\nbody\r\n");
    let (v, out) = run(&f, &msg, &[]);
    assert_eq!(v.modifications, [Modification::RemoveHeader("User-Agent".into())]);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        format!("{OURS}Subject: s\r\n\r\nbody\r\n")
    );
}
