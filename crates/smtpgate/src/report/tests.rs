use super::*;

use crate::deliver::bounce::{self, Failure};
use crate::envelope::{Envelope, QueueId, Recipient, Ret};
use crate::reply::{Command, EnhancedStatus, Upstream};

/// The example of RFC 5965, Appendix B.
const RFC5965_EXAMPLE: &str = r#"From: <abusedesk@example.com>
Date: Thu, 8 Mar 2005 17:40:36 EDT
Subject: FW: Earn money
To: <abuse@example.net>
MIME-Version: 1.0
Content-Type: multipart/report; report-type=feedback-report;
     boundary="part1_13d.2e68ed54_boundary"

--part1_13d.2e68ed54_boundary
Content-Type: text/plain; charset="US-ASCII"
Content-Transfer-Encoding: 7bit

This is an email abuse report for an email message received from IP
192.0.2.1 on Thu, 8 Mar 2005 14:00:00 EDT.  For more information
about this format please see http://www.mipassoc.org/arf/.

--part1_13d.2e68ed54_boundary
Content-Type: message/feedback-report

Feedback-Type: abuse
User-Agent: SomeGenerator/1.0
Version: 1
Original-Mail-From: <somespammer@example.net>
Original-Rcpt-To: <user@example.com>
Arrival-Date: Thu, 8 Mar 2005 14:00:00 EDT
Reporting-MTA: dns; mail.example.com
Source-IP: 192.0.2.1
Authentication-Results: mail.example.com;
               spf=fail smtp.mail=somespammer@example.com
Reported-Domain: example.net
Reported-Uri: http://example.net/earn_money.html
Reported-Uri: mailto:user@example.com
Removal-Recipient: user@example.com

--part1_13d.2e68ed54_boundary
Content-Type: message/rfc822
Content-Disposition: inline

From: <somespammer@example.net>
Received: from mailserver.example.net
               (mailserver.example.net [192.0.2.1])
               by example.com with ESMTP id M63d4137594e46;
               Thu, 08 Mar 2005 14:00:00 -0400
To: <Undisclosed Recipients>
Subject: Earn money
MIME-Version: 1.0
Content-type: text/plain
Message-ID: 8787KJKJ3K4J3K4J3K4J3.mail@example.net
Date: Thu, 02 Sep 2004 12:31:03 -0500

Spam Spam Spam
Spam Spam Spam
Spam Spam Spam
Spam Spam Spam
--part1_13d.2e68ed54_boundary--
"#;

/// A feedback loop in the style of Yahoo and AOL: the recipient is not in the report, only in the
/// `To:` of the returned message; field names in odd case; the report part folded.
const YAHOO_STYLE_ARF: &str = r#"Return-Path: <>
From: Mail Feedback Loop <feedbackloop@fbl.mail.example-yahoo.test>
To: fbl@example.org
Subject: Email Feedback Report for IP 198.51.100.25
Date: Tue, 10 Feb 2026 08:12:44 +0000
Message-ID: <fbl.1770711164.55@fbl.mail.example-yahoo.test>
MIME-Version: 1.0
Content-Type: multipart/report; report-type="feedback-report"; boundary="----=_Part_4471_1770711164"

------=_Part_4471_1770711164
Content-Type: text/plain; charset=UTF-8

This is an email abuse report for an email message from example.org on Tue, 10 Feb 2026 08:02:11 +0000

------=_Part_4471_1770711164
Content-Type: message/feedback-report

FEEDBACK-TYPE: Abuse
user-agent: Example-Mail-Feedback/2.0
Version: 0.1
Original-Mail-From: <Bounces+4417@News.Example.org>
Arrival-Date: Tue, 10 Feb 2026 08:02:11 +0000
Source-Ip: [198.51.100.25]
Reported-Domain: example.org
Authentication-Results: mta1042.mail.example-yahoo.test
  header.from=example.org;
  domainkeys=neutral (no sig);
  dkim=pass (ok)

------=_Part_4471_1770711164
Content-Type: message/rfc822

Received: from 198.51.100.25 (EHLO out.example.org)
  by mta1042.mail.example-yahoo.test with SMTP; Tue, 10 Feb 2026 08:02:11 +0000
From: Example News <news@example.org>
To: Jane Doe <Jane.Doe@example-yahoo.test>, jane.doe@example-yahoo.test
Subject: This week's offers
Message-ID: <20260210080211.4417@out.example.org>
Date: Tue, 10 Feb 2026 08:02:09 +0000
MIME-Version: 1.0
Content-Type: text/plain

Offers, offers, offers.

------=_Part_4471_1770711164--
"#;

/// A Microsoft JMRP-style report: ARF, no `Original-Rcpt-To`, the original returned with its
/// headers only.
const JMRP_STYLE_ARF: &str = r#"From: staff@hotmail.example
To: jmrp@example.org
Subject: complaint about message from 203.0.113.77
Date: Wed, 11 Feb 2026 19:44:03 -0800
MIME-Version: 1.0
Content-Type: multipart/report; report-type=feedback-report; boundary="A1B2C3D4_JMRP"
X-HmXmrOriginalRecipient: <user@outlook.example>

--A1B2C3D4_JMRP
Content-Type: text/plain; charset="us-ascii"
Content-Transfer-Encoding: 7bit

This is an email abuse report for an email message received from IP 203.0.113.77 on Wed, 11 Feb 2026 19:40:12 -0800.

--A1B2C3D4_JMRP
Content-Type: message/feedback-report

Feedback-Type: abuse
User-Agent: Microsoft Junk Mail Reporting Program
Version: 1
Original-Mail-From: <>
Arrival-Date: Wed, 11 Feb 2026 19:40:12 -0800
Source-IP: 203.0.113.77
Reported-Domain: example.org

--A1B2C3D4_JMRP
Content-Type: text/rfc822-headers

x-store-info: 4r51+eLowCe79NzwdU2kR3P+ctWZsO+J
Received: from out.example.org (203.0.113.77) by mx.outlook.example
 with Microsoft SMTP Server; Wed, 11 Feb 2026 19:40:12 -0800
From: Example Shop <shop@example.org>
To: <User@Outlook.example>
Subject: Your basket misses you
Message-ID:
 <basket.99812@example.org>
Date: Wed, 11 Feb 2026 19:40:10 -0800

--A1B2C3D4_JMRP--
"#;

/// A DSN in the shape of RFC 3464's examples: one recipient failed, one delayed.
const RFC3464_STYLE_DSN: &str = r#"From: Mail Delivery Subsystem <MAILER-DAEMON@relay.example.net>
To: <sender@example.org>
Subject: Delivery Status Notification (Failure)
Date: Mon, 9 Feb 2026 10:00:00 +0100
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status;
    boundary="RAA14128.773615765/relay.example.net"

--RAA14128.773615765/relay.example.net
Content-Type: text/plain

The following addresses had delivery problems:

<Alice@Mail.Example.com>
    (unrecoverable error)

<bob@slow.example.com>
    (transient failure, still trying)

--RAA14128.773615765/relay.example.net
content-type: message/delivery-status

Reporting-MTA: dns; relay.example.net
Original-Envelope-Id: QQ314159
Arrival-Date: Mon, 9 Feb 2026 09:40:00 +0100

Original-Recipient: rfc822;Alice@Mail.Example.com
Final-Recipient: RFC822; <Alice@Mail.Example.com>
Action: Failed
Status: 5.1.1 (unknown user)
Remote-MTA: dns; mx1.mail.example.com (mx1.mail.example.com [192.0.2.44])
Diagnostic-Code: smtp; 550 5.1.1 <alice@mail.example.com>...
    User unknown
Last-Attempt-Date: Mon, 9 Feb 2026 09:40:03 +0100

Final-Recipient: rfc822;bob@slow.example.com
Action: delayed
Status: 4.4.7
Will-Retry-Until: Fri, 13 Feb 2026 09:40:00 +0100

--RAA14128.773615765/relay.example.net
Content-Type: text/rfc822-headers

From: Sender <sender@example.org>
To: Alice@Mail.Example.com, bob@slow.example.com
Subject: Meeting
Message-ID: <meeting.7@example.org>
Date: Mon, 9 Feb 2026 09:39:58 +0100

--RAA14128.773615765/relay.example.net--
"#;

/// A Postfix bounce.
const POSTFIX_BOUNCE: &str = r#"Return-Path: <>
Received: by mail.example.org (Postfix) id 3F1C3A0B2E; Sat, 14 Feb 2026 12:00:05 +0000 (UTC)
Date: Sat, 14 Feb 2026 12:00:05 +0000 (UTC)
From: MAILER-DAEMON@mail.example.org (Mail Delivery System)
Subject: Undelivered Mail Returned to Sender
To: sender@example.org
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status;
	boundary="3F1C3A0B2E.1771070405/mail.example.org"
Message-Id: <20260214120005.3F1C3A0B2E@mail.example.org>

This is a MIME-encapsulated message.

--3F1C3A0B2E.1771070405/mail.example.org
Content-Description: Notification
Content-Type: text/plain; charset=us-ascii

This is the mail system at host mail.example.org.

I'm sorry to have to inform you that your message could not
be delivered to one or more recipients. It's attached below.

<user@example.com>: host mx.example.com[192.0.2.10] said: 550 5.1.1
    <user@example.com>: Recipient address rejected: User unknown (in reply to
    RCPT TO command)

--3F1C3A0B2E.1771070405/mail.example.org
Content-Description: Delivery report
Content-Type: message/delivery-status

Reporting-MTA: dns; mail.example.org
X-Postfix-Queue-ID: 3F1C3A0B2E
X-Postfix-Sender: rfc822; sender@example.org
Arrival-Date: Sat, 14 Feb 2026 12:00:01 +0000 (UTC)

Final-Recipient: rfc822; user@example.com
Original-Recipient: rfc822;user@example.com
Action: failed
Status: 5.1.1
Remote-MTA: dns; mx.example.com
Diagnostic-Code: smtp; 550 5.1.1 <user@example.com>: Recipient address rejected: User unknown

--3F1C3A0B2E.1771070405/mail.example.org
Content-Description: Undelivered Message
Content-Type: message/rfc822

Received: by mail.example.org (Postfix, from userid 1000) id 1A2B3C4D5E; Sat, 14 Feb 2026 12:00:01 +0000 (UTC)
From: sender@example.org
To: user@example.com
Subject: hello
Message-Id: <20260214120001.1A2B3C4D5E@mail.example.org>
Date: Sat, 14 Feb 2026 12:00:01 +0000 (UTC)

hello

--3F1C3A0B2E.1771070405/mail.example.org--
"#;

/// A read receipt (RFC 8098): a `multipart/report` of another type.
const MDN: &str = r#"From: <bob@example.com>
To: <alice@example.org>
Subject: Read: Meeting
MIME-Version: 1.0
Content-Type: multipart/report; report-type=disposition-notification; boundary="mdn"

--mdn
Content-Type: text/plain

Your message was read.

--mdn
Content-Type: message/disposition-notification

Reporting-UA: mua.example.com; Example Mail
Final-Recipient: rfc822; bob@example.com
Original-Message-ID: <meeting.7@example.org>
Disposition: manual-action/MDN-sent-manually; displayed

--mdn--
"#;

const PLAIN: &str = "From: a@example.org\nTo: b@example.com\nSubject: Action: failed\n\nFinal-Recipient: rfc822; b@example.com\nAction: failed\nStatus: 5.1.1\n";

/// `text` with LF line endings turned into CRLF.
fn crlf(text: &str) -> Vec<u8> {
    text.replace('\n', "\r\n").into_bytes()
}

/// `text` with LF line endings.
fn lf(text: &str) -> Vec<u8> {
    text.as_bytes().to_vec()
}

/// A message smtpgate sent, and the DSN it builds when both recipients fail.
fn smtpgate_bounce(ret: Option<Ret>) -> Vec<u8> {
    let mut orcpt = Recipient::parse("carol@example.com").unwrap();
    orcpt.orcpt = Some("rfc822;Carol@Example.com".into());
    let env = Envelope {
        id: QueueId(42),
        sender: crate::envelope::Sender::parse("sender@example.org").unwrap(),
        recipients: vec![orcpt.clone(), Recipient::parse("dave@example.net").unwrap()],
        received_at: 1_770_000_000,
        eight_bit: false,
        smtputf8: false,
        ret,
        envid: Some("QQ+2B42".into()),
        pool: None,
        scan: Vec::new(),
        stream: None,
        route: None,
    };
    let failed = [
        Failure {
            recipient: orcpt,
            reply: Upstream::remote(
                550,
                Some(EnhancedStatus::new("5.1.1")),
                "<carol@example.com>: no such user",
                Command::Rcpt,
                "mx.example.com:25",
            ),
            remote: Some("mx.example.com".into()),
        },
        Failure {
            recipient: Recipient::parse("dave@example.net").unwrap(),
            reply: Upstream::local("5.4.4", "no mail exchanger for example.net", Command::Outside),
            remote: None,
        },
    ];
    let body = b"From: sender@example.org\r\nTo: carol@example.com\r\nMessage-ID: <orig.1@example.org>\r\nSubject: hi\r\n\r\nbody\r\n";
    bounce::build("gate.example.org", &env, body, &failed, 0xfeed)
}

#[test]
fn rfc5965_example_is_a_complaint() {
    let complaint = parse_complaint(&crlf(RFC5965_EXAMPLE)).expect("a complaint");
    assert_eq!(
        complaint,
        Complaint {
            feedback_type: "abuse".into(),
            recipients: vec!["user@example.com".into()],
            original_sender: Some("somespammer@example.net".into()),
            source_ip: Some("192.0.2.1".into()),
            original_message_id: Some("8787KJKJ3K4J3K4J3K4J3.mail@example.net".into()),
        }
    );
}

#[test]
fn yahoo_style_complaint_takes_recipients_from_the_returned_message() {
    let complaint = parse_complaint(&lf(YAHOO_STYLE_ARF)).expect("a complaint");
    assert_eq!(
        complaint,
        Complaint {
            feedback_type: "abuse".into(),
            recipients: vec!["jane.doe@example-yahoo.test".into()],
            original_sender: Some("Bounces+4417@News.Example.org".into()),
            source_ip: Some("198.51.100.25".into()),
            original_message_id: Some("20260210080211.4417@out.example.org".into()),
        }
    );
}

#[test]
fn jmrp_style_complaint_reads_the_returned_headers() {
    let complaint = parse_complaint(&crlf(JMRP_STYLE_ARF)).expect("a complaint");
    assert_eq!(
        complaint,
        Complaint {
            feedback_type: "abuse".into(),
            recipients: vec!["user@outlook.example".into()],
            original_sender: None,
            source_ip: Some("203.0.113.77".into()),
            original_message_id: Some("basket.99812@example.org".into()),
        }
    );
}

#[test]
fn rfc3464_style_dsn_with_a_failed_and_a_delayed_recipient() {
    let dsn = parse_dsn(&crlf(RFC3464_STYLE_DSN)).expect("a DSN");
    assert_eq!(
        dsn,
        Dsn {
            envelope_id: Some("QQ314159".into()),
            reporting_mta: Some("relay.example.net".into()),
            recipients: vec![
                DsnRecipient {
                    recipient: "alice@mail.example.com".into(),
                    action: "failed".into(),
                    status: "5.1.1".into(),
                    diagnostic: Some("550 5.1.1 <alice@mail.example.com>... User unknown".into()),
                    remote_mta: Some("mx1.mail.example.com".into()),
                },
                DsnRecipient {
                    recipient: "bob@slow.example.com".into(),
                    action: "delayed".into(),
                    status: "4.4.7".into(),
                    diagnostic: None,
                    remote_mta: None,
                },
            ],
            original_message_id: Some("meeting.7@example.org".into()),
        }
    );
}

#[test]
fn postfix_bounce() {
    let dsn = parse_dsn(&lf(POSTFIX_BOUNCE)).expect("a DSN");
    assert_eq!(
        dsn,
        Dsn {
            envelope_id: None,
            reporting_mta: Some("mail.example.org".into()),
            recipients: vec![DsnRecipient {
                recipient: "user@example.com".into(),
                action: "failed".into(),
                status: "5.1.1".into(),
                diagnostic: Some("550 5.1.1 <user@example.com>: Recipient address rejected: User unknown".into()),
                remote_mta: Some("mx.example.com".into()),
            }],
            original_message_id: Some("20260214120001.1A2B3C4D5E@mail.example.org".into()),
        }
    );
}

#[test]
fn smtpgate_reads_back_its_own_dsns() {
    for ret in [None, Some(Ret::Full), Some(Ret::Hdrs)] {
        let dsn = parse_dsn(&smtpgate_bounce(ret)).unwrap_or_else(|| panic!("a DSN with RET {ret:?}"));
        assert_eq!(
            dsn,
            Dsn {
                envelope_id: Some("QQ+2B42".into()),
                reporting_mta: Some("gate.example.org".into()),
                recipients: vec![
                    DsnRecipient {
                        recipient: "carol@example.com".into(),
                        action: "failed".into(),
                        status: "5.1.1".into(),
                        diagnostic: Some("550 5.1.1 <carol@example.com>: no such user".into()),
                        remote_mta: Some("mx.example.com".into()),
                    },
                    DsnRecipient {
                        recipient: "dave@example.net".into(),
                        action: "failed".into(),
                        status: "5.4.4".into(),
                        diagnostic: Some("no mail exchanger for example.net".into()),
                        remote_mta: None,
                    },
                ],
                original_message_id: Some("orig.1@example.org".into()),
            },
            "RET {ret:?}"
        );
    }
}

#[test]
fn original_recipient_stands_in_for_a_missing_final_recipient() {
    let text = RFC3464_STYLE_DSN.replace("Final-Recipient: RFC822; <Alice@Mail.Example.com>\n", "");
    let dsn = parse_dsn(&crlf(&text)).expect("a DSN");
    assert_eq!(dsn.recipients[0].recipient, "alice@mail.example.com");
    assert_eq!(dsn.recipients.len(), 2);
}

#[test]
fn untyped_fields_are_taken_whole() {
    let text = POSTFIX_BOUNCE
        .replace(
            "Final-Recipient: rfc822; user@example.com",
            "Final-Recipient: <User@Example.com>",
        )
        .replace(
            "Diagnostic-Code: smtp; 550 5.1.1",
            "Diagnostic-Code: 550 5.1.1 gone; for good,",
        );
    let dsn = parse_dsn(&crlf(&text)).expect("a DSN");
    assert_eq!(dsn.recipients[0].recipient, "user@example.com");
    assert_eq!(
        dsn.recipients[0].diagnostic.as_deref(),
        Some("550 5.1.1 gone; for good, <user@example.com>: Recipient address rejected: User unknown")
    );
}

#[test]
fn line_endings_do_not_matter() {
    for sample in [RFC5965_EXAMPLE, YAHOO_STYLE_ARF, JMRP_STYLE_ARF] {
        let with_lf = parse_complaint(&lf(sample));
        assert!(with_lf.is_some());
        assert_eq!(with_lf, parse_complaint(&crlf(sample)));
    }
    for sample in [RFC3464_STYLE_DSN, POSTFIX_BOUNCE] {
        let with_lf = parse_dsn(&lf(sample));
        assert!(with_lf.is_some());
        assert_eq!(with_lf, parse_dsn(&crlf(sample)));
    }
}

#[test]
fn other_messages_are_neither() {
    let complaints = [RFC5965_EXAMPLE, YAHOO_STYLE_ARF, JMRP_STYLE_ARF];
    let dsns = [RFC3464_STYLE_DSN, POSTFIX_BOUNCE];
    for sample in complaints {
        assert_eq!(parse_dsn(&crlf(sample)), None, "a complaint is not a DSN");
    }
    for sample in dsns {
        assert_eq!(parse_complaint(&crlf(sample)), None, "a DSN is not a complaint");
    }
    for other in [MDN, PLAIN, "", "\n", "Subject: x\n\n", "no header at all"] {
        assert_eq!(parse_complaint(&crlf(other)), None, "{other}");
        assert_eq!(parse_dsn(&crlf(other)), None, "{other}");
    }
}

#[test]
fn a_report_without_its_machine_readable_part_is_none() {
    let no_status = RFC3464_STYLE_DSN.replace("message/delivery-status", "text/plain");
    assert_eq!(parse_dsn(&crlf(&no_status)), None);
    let no_feedback = RFC5965_EXAMPLE.replace("message/feedback-report", "text/plain");
    assert_eq!(parse_complaint(&crlf(&no_feedback)), None);
    let no_type = RFC5965_EXAMPLE.replace("Feedback-Type: abuse\n", "");
    assert_eq!(parse_complaint(&crlf(&no_type)), None);
    let no_recipient_block = POSTFIX_BOUNCE.replace("Final-Recipient: rfc822; user@example.com\n", "");
    let no_recipient_block = no_recipient_block.replace("Original-Recipient: rfc822;user@example.com\n", "");
    assert_eq!(parse_dsn(&crlf(&no_recipient_block)), None);
}

#[test]
fn truncated_reports_never_panic() {
    let mut samples: Vec<Vec<u8>> = [
        RFC5965_EXAMPLE,
        YAHOO_STYLE_ARF,
        JMRP_STYLE_ARF,
        RFC3464_STYLE_DSN,
        POSTFIX_BOUNCE,
    ]
    .iter()
    .flat_map(|s| [crlf(s), lf(s)])
    .collect();
    samples.push(smtpgate_bounce(None));
    samples.push(smtpgate_bounce(Some(Ret::Hdrs)));
    for sample in &samples {
        for len in 0..=sample.len() {
            let prefix = &sample[..len];
            let _ = parse_complaint(prefix);
            let _ = parse_dsn(prefix);
        }
    }
}

#[test]
fn damaged_reports_never_panic() {
    let samples: Vec<Vec<u8>> = [RFC5965_EXAMPLE, JMRP_STYLE_ARF, RFC3464_STYLE_DSN, POSTFIX_BOUNCE]
        .iter()
        .map(|s| crlf(s))
        .chain([smtpgate_bounce(None)])
        .collect();
    for sample in &samples {
        for i in 0..sample.len() {
            for byte in [b'\n', b'\r', b' ', b'-', b':', b';', b'<', b'"', b'=', 0, 0xff] {
                let mut damaged = sample.clone();
                damaged[i] = byte;
                let _ = parse_complaint(&damaged);
                let _ = parse_dsn(&damaged);
            }
        }
    }
}

/// Every text a report yields, for the one-line checks below.
fn texts_of_dsn(dsn: &Dsn) -> Vec<String> {
    let mut all: Vec<String> = [&dsn.envelope_id, &dsn.reporting_mta, &dsn.original_message_id]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
    for r in &dsn.recipients {
        all.extend([r.recipient.clone(), r.action.clone(), r.status.clone()]);
        all.extend(r.diagnostic.iter().chain(&r.remote_mta).cloned());
    }
    all
}

fn texts_of_complaint(c: &Complaint) -> Vec<String> {
    let mut all = vec![c.feedback_type.clone()];
    all.extend(c.recipients.iter().cloned());
    all.extend(
        [&c.original_sender, &c.source_ip, &c.original_message_id]
            .into_iter()
            .flatten()
            .cloned(),
    );
    all
}

// Found by the `reports` fuzz target: mail-parser hands back a Message-ID without angle brackets
// as the raw, folded text, line breaks included.
#[test]
fn an_unbracketed_folded_message_id_comes_back_as_one_word() {
    let text = RFC5965_EXAMPLE.replace(
        "Message-ID: 8787KJKJ3K4J3K4J3K4J3.mail@example.net",
        "Message-ID: 8787KJKJ3K4J3K4J3K4J3.mail@example.net\n   (folded comment)\n   more",
    );
    assert!(text.contains("(folded comment)"), "the sample changed");
    let complaint = parse_complaint(&crlf(&text)).expect("a complaint");
    assert_eq!(
        complaint.original_message_id.as_deref(),
        Some("8787KJKJ3K4J3K4J3K4J3.mail@example.net")
    );
}

// A bare CR is no line ending (RFC 5322 2.2); it must not reach a value, where it would split a
// log line or a suppression-list entry.
#[test]
fn a_bare_cr_in_a_report_field_never_reaches_a_value() {
    let text = POSTFIX_BOUNCE
        .replace(
            "Final-Recipient: rfc822; user@example.com",
            "Final-Recipient: rfc822; user@example.com\rX-Injected: yes",
        )
        .replace("Diagnostic-Code: smtp; 550 5.1.1", "Diagnostic-Code: smtp; 550\r5.1.1");
    let dsn = parse_dsn(&crlf(&text)).expect("a DSN");
    for value in texts_of_dsn(&dsn) {
        assert!(!value.contains(['\r', '\n']), "{value:?}");
    }
    let text = RFC5965_EXAMPLE
        .replace("Feedback-Type: abuse", "Feedback-Type: abuse\rx")
        .replace("Source-IP: 192.0.2.1", "Source-IP: 192.0.2.1\r\r");
    let complaint = parse_complaint(&crlf(&text)).expect("a complaint");
    for value in texts_of_complaint(&complaint) {
        assert!(!value.contains(['\r', '\n']), "{value:?}");
    }
}
