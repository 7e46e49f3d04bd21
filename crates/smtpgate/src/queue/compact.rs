//! Spool compaction: messages that stay queued for long (deferred for hours) would keep their old
//! spool segment, and every newer one, on disk. Now and then the oldest segment's live messages are
//! rewritten into the current segment, so the old ones can be deleted.

use std::time::Duration;

use super::Queue;

pub(super) async fn run(queue: Queue, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Some(segment) = queue.ctx().spool.compaction_candidate() {
            compact(&queue, segment).await;
        }
    }
}

/// Moves every live message of `segment` to the current segment.
async fn compact(queue: &Queue, segment: u64) {
    let ctx = &queue.ctx();
    let mut moved = 0;
    for msg in queue.in_segment(segment) {
        let finished = msg.spool_lock.lock().await;
        let from = msg.body_ref();
        if *finished || from.segment != segment {
            continue;
        }
        let body = match msg.inline(&ctx.spool).await {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(queue_id = %msg.env.id, error = %e, "compaction: cannot read message");
                continue;
            }
        };
        match ctx
            .spool
            .relocate(&msg.env, &msg.states(), &body, &from, msg.is_held())
            .await
        {
            Ok(to) => {
                msg.set_body_ref(to);
                moved += 1;
            }
            Err(e) => tracing::error!(queue_id = %msg.env.id, error = %e, "compaction: cannot rewrite message"),
        }
        drop(finished);
    }
    if moved > 0 {
        tracing::info!(
            segment,
            moved,
            "spool compaction moved long-queued messages to the current segment"
        );
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::compact;
    use crate::config::Config;
    use crate::envelope::{Envelope, QueueId, Recipient};
    use crate::queue::Queue;

    fn envelope(id: u64) -> Envelope {
        Envelope {
            id: QueueId(id),
            sender: crate::envelope::Sender::parse("s@example.test").unwrap(),
            recipients: vec![Recipient::parse("r@example.test").unwrap()],
            received_at: crate::datetime::now_unix(),
            eight_bit: false,
            smtputf8: false,
            ret: None,
            envid: None,
            pool: Some("closed".into()),
            scan: Vec::new(),
            stream: None,
            route: None,
        }
    }

    fn segments(dir: &std::path::Path) -> usize {
        std::fs::read_dir(dir)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with("seg-"))
            .count()
    }

    #[tokio::test]
    async fn deferred_message_no_longer_pins_old_segments() {
        let dir = tempfile::tempdir().unwrap();
        let toml = r#"
            [spool]
            dir = "spool"
            segment_size = "4KB"
            min_free_space = "1KB"
            [admin]
            enabled = false
            [[pool]]
            name = "closed"
            servers = ["127.0.0.1:9"]
            [[route]]
            pool = "closed"
            [queue]
            retry = ["1h"]
        "#;
        let config = Config::from_toml_str(toml, dir.path()).unwrap();
        let (ctx, _) = crate::context::Context::start(Arc::new(config), None).unwrap();
        let queue = Queue::new(ctx.clone());
        queue
            .accept(envelope(1), b"Subject: stuck\r\n\r\nwaiting\r\n".to_vec())
            .await
            .unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while ctx.metrics.deferred.get() == 0 {
            assert!(tokio::time::Instant::now() < deadline, "message was never deferred");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Traffic that comes and goes fills newer segments.
        for id in 2..40 {
            let r = ctx.spool.store(&envelope(id), &[b'x'; 1500]).await.unwrap();
            ctx.spool.done(QueueId(id), &r).await.unwrap();
        }
        let spool_dir = ctx.spool.dir().to_path_buf();
        assert!(segments(&spool_dir) > 5, "the deferred message pins every segment");
        let candidate = ctx.spool.compaction_candidate().expect("old segment to compact");
        compact(&queue, candidate).await;
        // Segments are deleted by the committer right after the relocation is acknowledged; it
        // updates the oldest-segment figure the candidate is read from after its deletions.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while segments(&spool_dir) > 2 || ctx.spool.compaction_candidate().is_some() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "old segments remain: {} (candidate {:?})",
                segments(&spool_dir),
                ctx.spool.compaction_candidate()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(ctx.spool.compaction_candidate(), None);
        let left = crate::spool::inspect(&spool_dir).unwrap();
        assert_eq!(left.len(), 1, "the deferred message is still there, once");
        assert_eq!(left[0].0.id, QueueId(1));
        assert_eq!(left[0].1, b"Subject: stuck\r\n\r\nwaiting\r\n");
    }
}
