//! Presence: one process's sets, and sets shared by nodes.

use super::*;

const ALICE: Joiner<'static> = Joiner::Client {
    owner: r#"{"user":"alice"}"#,
};
const BOB: Joiner<'static> = Joiner::Client {
    owner: r#"{"user":"bob"}"#,
};

/// Issue #24 (6, 7): bob joined as "alice" and replaced her info; "alice" stayed
/// listed after her socket closed; 60 KB infos made every reply too big to send.
#[test]
fn a_clients_id_is_its_owners_and_sizes_are_bounded() {
    let p = Presence::new(Duration::from_secs(15));
    assert_eq!(
        p.join("s", 1, "alice", Some("1".into()), ALICE),
        Ok(join_info("alice", "1"))
    );
    assert_eq!(
        p.join("s", 2, "alice", Some("2".into()), BOB),
        Err(PresenceError::IdTaken)
    );
    assert_eq!(
        p.leave("s", 1),
        Some(PresenceEvent::Leave { id: "alice".into() })
    );
    // The app's own joins are trusted, and no client joins an id the app made.
    assert_eq!(p.join("s", 3, "team", None, Joiner::App), Ok(join("team")));
    assert_eq!(p.join("s", 4, "team", None, Joiner::App), Ok(None));
    assert_eq!(
        p.join("s", 5, "team", None, ALICE),
        Err(PresenceError::IdTaken)
    );
    let big = format!(r#""{}""#, "x".repeat(MAX_INFO_BYTES));
    assert_eq!(
        p.join("s", 6, "bob", Some(big), BOB),
        Err(PresenceError::InfoTooLarge)
    );
    let info = format!(r#""{}""#, "y".repeat(MAX_INFO_BYTES - 2));
    for n in 0..100 {
        let owner = format!("owner{n}");
        let joiner = Joiner::Client { owner: &owner };
        p.join("big", 100 + n, &format!("u{n}"), Some(info.clone()), joiner)
            .unwrap();
    }
    let reply = p.info_json("big", true);
    assert!(reply.len() <= MAX_REPLY_BYTES + 1, "{}", reply.len());
    assert!(reply.starts_with(r#"{"type":"info","total":100,"records":[{"id":"u0""#));
    assert!(serde_json::from_str::<serde_json::Value>(&reply).is_ok());
}

#[test]
fn a_full_set_takes_no_new_id() {
    let p = Presence::new(Duration::from_secs(15));
    for n in 0..MAX_RECORDS as u64 {
        p.join("s", n, &n.to_string(), None, Joiner::App).unwrap();
    }
    assert_eq!(
        p.join("s", u64::MAX, "new", None, Joiner::App),
        Err(PresenceError::Full)
    );
    // An id already there is still joined (another tab).
    assert_eq!(p.join("s", u64::MAX, "7", None, Joiner::App), Ok(None));
}

/// Two nodes sharing presence (the NATS broker), their announcements handed over
/// by hand: one set across both, owners checked across, a lost node's records
/// gone a ttl after it was last heard.
#[test]
fn nodes_share_one_set() {
    type Outbox = Arc<Mutex<Vec<String>>>;
    let node = |name: &str| {
        let p = Presence::new(Duration::from_secs(15));
        let out: Outbox = Arc::default();
        let sink = out.clone();
        p.share(name.into(), Arc::new(move |text| sink.lock().push(text)));
        (p, out)
    };
    let hand_over = |from: &Outbox, to: &Presence, now: Instant| {
        let texts: Vec<String> = from.lock().drain(..).collect();
        texts
            .iter()
            .flat_map(|t| to.apply_announcement_at(t, now).unwrap())
            .collect::<Vec<_>>()
    };
    let t0 = Instant::now();
    let (a, out_a) = node("a");
    let (b, out_b) = node("b");
    // The hellos: each announces what it has (nothing yet).
    assert!(hand_over(&out_a, &b, t0).is_empty());
    assert!(hand_over(&out_b, &a, t0).is_empty());

    assert_eq!(
        a.join("s", 1, "alice", Some(r#"{"n":1}"#.into()), ALICE),
        Ok(join_info("alice", r#"{"n":1}"#))
    );
    assert_eq!(
        hand_over(&out_a, &b, t0),
        vec![("s".to_string(), join_info("alice", r#"{"n":1}"#).unwrap())]
    );
    // Bob cannot join as alice on the other node either; alice's other tab there
    // is no news.
    assert_eq!(
        b.join("s", 2, "alice", None, BOB),
        Err(PresenceError::IdTaken)
    );
    assert_eq!(
        b.join("s", 3, "alice", Some(r#"{"n":3}"#.into()), ALICE),
        Ok(None)
    );
    assert!(hand_over(&out_b, &a, t0).is_empty());
    assert_eq!(b.join("s", 4, "team", None, Joiner::App), Ok(join("team")));
    assert_eq!(
        hand_over(&out_b, &a, t0),
        vec![("s".to_string(), join("team").unwrap())]
    );
    for p in [&a, &b] {
        assert!(p
            .info_json("s", true)
            .starts_with(r#"{"type":"info","total":2,"records":[{"id":"alice","#));
    }
    // Alice's tab on a closes: b still holds her. Her tab on b closes: she left.
    assert_eq!(a.leave("s", 1), None);
    assert!(hand_over(&out_a, &b, t0).is_empty());
    assert_eq!(
        b.leave("s", 3),
        Some(PresenceEvent::Leave { id: "alice".into() })
    );
    assert_eq!(
        hand_over(&out_b, &a, t0),
        vec![("s".to_string(), PresenceEvent::Leave { id: "alice".into() })]
    );
    // b goes silent: a keeps its records a ttl (here three rounds of 5 s and a
    // second) after it last heard them.
    b.announce_all();
    assert!(hand_over(&out_b, &a, t0 + Duration::from_secs(10)).is_empty());
    assert!(a.sweep_at(t0 + Duration::from_secs(25)).is_empty());
    assert_eq!(
        a.sweep_at(t0 + Duration::from_secs(27)),
        vec![("s".to_string(), PresenceEvent::Leave { id: "team".into() })]
    );
    assert_eq!(a.info_json("s", false), r#"{"type":"info","total":0}"#);
    // Nonsense from the wire is an error, not a panic; a's own echo is ignored.
    assert!(a.apply_announcement("{").is_err());
    a.join("s", 5, "carol", None, Joiner::App).unwrap();
    let echo: Vec<String> = out_a.lock().drain(..).collect();
    assert!(a.apply_announcement(&echo[0]).unwrap().is_empty());
}

fn join_info(id: &str, info: &str) -> Option<PresenceEvent> {
    Some(PresenceEvent::Join {
        id: id.into(),
        info: Some(info.into()),
    })
}

fn join(id: &str) -> Option<PresenceEvent> {
    Some(PresenceEvent::Join {
        id: id.into(),
        info: None,
    })
}

#[test]
fn joins_once_per_id_and_leaves_with_the_last_session() {
    let p = Presence::new(Duration::from_secs(15));
    assert_eq!(p.join("s", 1, "42", None, ALICE), Ok(join("42")));
    // Another tab of the same user: no new event; its info replaces the old.
    assert_eq!(
        p.join("s", 2, "42", Some(r#"{"n":2}"#.into()), ALICE),
        Ok(None)
    );
    assert_eq!(
        p.join("s", 1, "43", None, ALICE),
        Err(PresenceError::IdMismatch)
    );
    assert_eq!(
        p.info_json("s", true),
        r#"{"type":"info","total":1,"records":[{"id":"42","info":{"n":2}}]}"#
    );
    assert_eq!(p.leave("s", 1), None);
    assert_eq!(
        p.leave("s", 2),
        Some(PresenceEvent::Leave { id: "42".into() })
    );
    assert_eq!(p.leave("s", 2), None);
    assert_eq!(p.info_json("s", false), r#"{"type":"info","total":0}"#);
    assert_eq!(p.stream_count(), 0);
}

#[test]
fn a_closed_session_keeps_its_place_for_the_ttl() {
    let p = Presence::new(Duration::from_secs(15));
    let t0 = Instant::now();
    p.join("s", 1, "42", None, ALICE).unwrap();
    p.join("s", 2, "7", None, Joiner::App).unwrap();
    p.disconnected_at(1, t0);
    assert!(p.sweep_at(t0 + Duration::from_secs(14)).is_empty());
    // Back within the ttl (a restored session joins again): no leave, no join.
    p.join("s", 3, "42", None, ALICE).unwrap();
    assert!(p.sweep_at(t0 + Duration::from_secs(16)).is_empty());
    p.disconnected_at(3, t0 + Duration::from_secs(20));
    assert_eq!(
        p.sweep_at(t0 + Duration::from_secs(35)),
        vec![("s".to_string(), PresenceEvent::Leave { id: "42".into() })]
    );
    assert_eq!(
        p.info_json("s", true),
        r#"{"type":"info","total":1,"records":[{"id":"7"}]}"#
    );
}

#[test]
fn events_are_anycable_json() {
    assert_eq!(
        PresenceEvent::Join {
            id: "42".into(),
            info: Some(r#"{"name":"Bart"}"#.into())
        }
        .to_json(),
        r#"{"type":"join","id":"42","info":{"name":"Bart"}}"#
    );
    assert_eq!(
        PresenceEvent::Leave { id: "42".into() }.to_json(),
        r#"{"type":"leave","id":"42"}"#
    );
}
