use super::*;

fn log_path(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join(LOG_FILE)
}

fn addresses(list: &SuppressionList) -> Vec<String> {
    list.list().into_iter().map(|e| e.address).collect()
}

fn append_raw(dir: &tempfile::TempDir, bytes: &[u8]) {
    let mut f = OpenOptions::new().append(true).open(log_path(dir)).expect("open log");
    f.write_all(bytes).expect("append");
}

#[test]
fn is_send_and_sync() {
    fn shared<T: Send + Sync>() {}
    shared::<SuppressionList>();
}

#[test]
fn add_contains_remove_list_round_trip() {
    let dir = tempfile::tempdir().expect("tempdir");
    let list = SuppressionList::open(dir.path()).expect("open");
    assert!(list.is_empty());

    assert!(
        list.add(
            "b@example.com",
            Reason::HardBounce,
            "bounce from mx.example.com: 550 5.1.1"
        )
        .unwrap()
    );
    assert!(
        list.add(
            "a@example.com",
            Reason::Complaint,
            "complaint (ARF) from feedback@yahoo"
        )
        .unwrap()
    );
    assert!(
        !list.add("a@example.com", Reason::Manual, "cli").unwrap(),
        "a refresh, not a new entry"
    );
    assert_eq!(list.len(), 2);
    assert_eq!(addresses(&list), ["a@example.com", "b@example.com"]);

    let a = list.contains("a@example.com").expect("a is suppressed");
    assert_eq!(
        (a.reason, a.source.as_str()),
        (Reason::Manual, "cli"),
        "the refresh replaced the entry"
    );
    assert!(a.added_at > 0);
    assert!(list.contains("c@example.com").is_none());

    assert!(list.remove("a@example.com").unwrap());
    assert!(!list.remove("a@example.com").unwrap(), "already gone");
    assert!(list.contains("a@example.com").is_none());
    assert_eq!(addresses(&list), ["b@example.com"]);
}

#[test]
fn lookups_ignore_case_and_angle_brackets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let list = SuppressionList::open(dir.path()).expect("open");
    list.add("  <User.Name@Example.COM> ", Reason::Manual, "cli").unwrap();

    assert_eq!(addresses(&list), ["user.name@example.com"]);
    for probe in [
        "user.name@example.com",
        "USER.NAME@EXAMPLE.COM",
        "<User.Name@example.com>",
    ] {
        assert!(list.contains(probe).is_some(), "{probe}");
    }
    assert!(!list.add("USER.name@example.com", Reason::Manual, "cli").unwrap());
    assert!(list.remove("<user.NAME@example.com>").unwrap());
    assert!(list.is_empty());
}

#[test]
fn state_survives_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let before = {
        let list = SuppressionList::open(dir.path()).expect("open");
        list.add("a@example.com", Reason::HardBounce, "bounce").unwrap();
        list.add("b@example.com", Reason::Complaint, "complaint").unwrap();
        list.add("c@example.com", Reason::Manual, "cli").unwrap();
        list.remove("b@example.com").unwrap();
        list.add("b@example.com", Reason::Manual, "cli again").unwrap();
        list.remove("c@example.com").unwrap();
        list.list()
    };
    let list = SuppressionList::open(dir.path()).expect("reopen");
    assert_eq!(list.list(), before);
    assert_eq!(addresses(&list), ["a@example.com", "b@example.com"]);
    assert_eq!(list.contains("b@example.com").unwrap().source, "cli again");
}

#[test]
fn opening_creates_the_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nested = dir.path().join("spool").join("suppress");
    let list = SuppressionList::open(&nested).expect("open");
    list.add("a@example.com", Reason::Manual, "cli").unwrap();
    assert!(nested.join(LOG_FILE).is_file());
}

#[test]
fn torn_tail_is_truncated_and_the_log_stays_usable() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let list = SuppressionList::open(dir.path()).expect("open");
        list.add("a@example.com", Reason::HardBounce, "bounce").unwrap();
        list.add("b@example.com", Reason::Complaint, "complaint").unwrap();
    }
    let intact = fs::metadata(log_path(&dir)).unwrap().len();
    append_raw(&dir, br#"{"op":"add","address":"c@exam"#);

    {
        let list = SuppressionList::open(dir.path()).expect("reopen after a torn write");
        assert_eq!(addresses(&list), ["a@example.com", "b@example.com"]);
        assert_eq!(
            fs::metadata(log_path(&dir)).unwrap().len(),
            intact,
            "the torn line is gone"
        );
        assert!(list.add("d@example.com", Reason::Manual, "cli").unwrap());
    }
    let list = SuppressionList::open(dir.path()).expect("reopen again");
    assert_eq!(addresses(&list), ["a@example.com", "b@example.com", "d@example.com"]);
}

#[test]
fn bad_json_on_the_last_complete_line_is_torn_too() {
    let dir = tempfile::tempdir().expect("tempdir");
    SuppressionList::open(dir.path())
        .unwrap()
        .add("a@example.com", Reason::Manual, "cli")
        .unwrap();
    let intact = fs::metadata(log_path(&dir)).unwrap().len();
    append_raw(&dir, b"{\"op\":\"add\",\0\0\0\0\n");

    let list = SuppressionList::open(dir.path()).expect("reopen");
    assert_eq!(addresses(&list), ["a@example.com"]);
    assert_eq!(fs::metadata(log_path(&dir)).unwrap().len(), intact);
}

#[test]
fn corrupted_middle_line_is_skipped() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let list = SuppressionList::open(dir.path()).expect("open");
        for address in ["a@example.com", "b@example.com", "c@example.com"] {
            list.add(address, Reason::HardBounce, "bounce").unwrap();
        }
    }
    let content = fs::read_to_string(log_path(&dir)).unwrap();
    let corrupted = content.replacen(r#""address":"b@example.com""#, r#""addr#ss":"b@example.com""#, 1);
    assert_ne!(content, corrupted);
    fs::write(log_path(&dir), corrupted.as_bytes()).unwrap();

    {
        let list = SuppressionList::open(dir.path()).expect("reopen");
        assert_eq!(addresses(&list), ["a@example.com", "c@example.com"]);
        assert_eq!(
            fs::read_to_string(log_path(&dir)).unwrap(),
            corrupted,
            "only a torn tail is cut"
        );
        list.add("d@example.com", Reason::Manual, "cli").unwrap();
    }
    let list = SuppressionList::open(dir.path()).expect("reopen again");
    assert_eq!(addresses(&list), ["a@example.com", "c@example.com", "d@example.com"]);
}

#[test]
fn mostly_dead_log_is_compacted_at_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let before = {
        let list = SuppressionList::open(dir.path()).expect("open");
        list.add("keep@example.com", Reason::Complaint, "complaint").unwrap();
        for i in 0..COMPACT_MIN_LINES / 2 + 1 {
            let address = format!("churn{}@example.com", i % 7);
            list.add(&address, Reason::HardBounce, "bounce").unwrap();
            list.remove(&address).unwrap();
        }
        list.add("also@example.com", Reason::Manual, "cli").unwrap();
        list.list()
    };
    let grown = fs::metadata(log_path(&dir)).unwrap().len();

    let list = SuppressionList::open(dir.path()).expect("reopen");
    assert_eq!(list.list(), before);
    let compacted = fs::read_to_string(log_path(&dir)).unwrap();
    assert_eq!(compacted.lines().count(), 2, "one line per live entry: {compacted}");
    assert!(
        (compacted.len() as u64) < grown / 100,
        "{} bytes, was {grown}",
        compacted.len()
    );
    assert!(!dir.path().join(TMP_FILE).exists());

    list.add("after@example.com", Reason::Manual, "cli").unwrap();
    drop(list);
    let list = SuppressionList::open(dir.path()).expect("reopen after compaction");
    assert_eq!(
        addresses(&list),
        ["after@example.com", "also@example.com", "keep@example.com"]
    );
}

#[test]
fn small_log_is_left_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let list = SuppressionList::open(dir.path()).expect("open");
        for _ in 0..10 {
            list.add("a@example.com", Reason::Manual, "cli").unwrap();
            list.remove("a@example.com").unwrap();
        }
    }
    let size = fs::metadata(log_path(&dir)).unwrap().len();
    SuppressionList::open(dir.path()).expect("reopen");
    assert_eq!(fs::metadata(log_path(&dir)).unwrap().len(), size);
}

#[test]
fn invalid_addresses_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let list = SuppressionList::open(dir.path()).expect("open");
    for bad in [
        "",
        "<>",
        "nobody",
        "nobody@",
        "@example.com",
        "a b@example.com",
        "a@exa\tmple.com",
        "a@example.com\u{7}",
        "a@\u{85}x",
    ] {
        let added = list.add(bad, Reason::Manual, "cli").expect_err(bad);
        assert_eq!(added.kind(), io::ErrorKind::InvalidInput, "{bad:?}");
        assert_eq!(
            list.remove(bad).expect_err(bad).kind(),
            io::ErrorKind::InvalidInput,
            "{bad:?}"
        );
        assert!(list.contains(bad).is_none());
    }
    assert!(list.is_empty());
    assert_eq!(fs::metadata(log_path(&dir)).unwrap().len(), 0, "nothing was written");
}
