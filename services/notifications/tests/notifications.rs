//! The notifications service, the same suites on SQLite and on PostgreSQL, with in-process
//! queues and with RabbitMQ: a message per wanted channel, once per event; a failing channel
//! retried, dead-lettered, replayed and then sent once; what an in-process queue held, sent
//! after a restart; the HTTP API; and e-mail over SMTP to a server speaking the protocol.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode};
use mainstay_auth::AccessClaims;
use serde_json::json;
use shop_common::store::Database;
use shop_common::tasks::Supervisor;
use shop_common::testing::call;
use shop_messaging::contracts::{
    OrderConfirmed, OrderLine, OrderRejected, OrderShipped, UserRegistered,
};
use shop_messaging::{HandleError, Handler, Inbound, Message};
use shop_notifications::queue::{ChannelQueue, Local, Rabbit};
use shop_notifications::send::{Outgoing, Sender, Sink, Smtp};
use shop_notifications::store::{Notification, Preferences};
use shop_notifications::{Channel, Notifications, Retries, router};

shop_common::on_both_stores!(
    each_event_makes_a_message_per_wanted_channel_once,
    a_failing_channel_is_dead_lettered_then_replayed_and_sent_once_in_process,
    a_failing_channel_is_dead_lettered_then_replayed_and_sent_once_on_rabbitmq,
    what_an_in_process_queue_held_is_sent_after_a_restart,
    claims_name_their_worker_and_run_out,
    the_api_shows_mine_and_lets_admins_replay,
);

const RETRIES: Retries = Retries {
    max_attempts: 3,
    retry: Duration::from_millis(10),
    retry_max: Duration::from_millis(40),
    send_timeout: Duration::from_secs(5),
};

async fn start(
    database: &Database,
    queue: Arc<dyn ChannelQueue>,
    sink: &Path,
) -> (Notifications, mainstay_auth::TokenIssuer) {
    let (issuer, validator) = shop_common::testing::users_tokens();
    let sink: Arc<dyn Sender> = Arc::new(Sink::new(Some(sink.to_owned())));
    let senders = [sink.clone(), sink.clone(), sink];
    let notifications = Notifications::start(database, queue, senders, RETRIES, validator)
        .await
        .unwrap();
    (notifications, issuer)
}

async fn handle<M: Message>(notifications: &Notifications, message: &M) -> Result<(), HandleError> {
    handle_inbound(notifications, &Inbound::of(message, None).unwrap()).await
}

async fn handle_inbound(
    notifications: &Notifications,
    inbound: &Inbound,
) -> Result<(), HandleError> {
    let mut tx = notifications.store().database().begin().await.unwrap();
    let handled = notifications.events().handle(inbound, &mut tx).await;
    if handled.is_ok() {
        tx.commit().await.unwrap();
    }
    handled.map(drop)
}

fn registered(user: &str) -> UserRegistered {
    UserRegistered {
        user_id: user.to_owned(),
        email: format!("{user}@example.com"),
        name: "Alice".to_owned(),
    }
}

fn confirmed(order: &str, user: &str) -> OrderConfirmed {
    OrderConfirmed {
        order_id: order.to_owned(),
        user_id: user.to_owned(),
        lines: vec![OrderLine {
            product_id: "tea".into(),
            quantity: 2,
            unit_price_minor: 450,
        }],
        total_minor: 900,
        currency: "EUR".into(),
        placed_at_ms: 0,
    }
}

fn of_channel<'a>(all: &'a [Notification], channel: &str) -> Vec<&'a Notification> {
    all.iter().filter(|n| n.channel == channel).collect()
}

async fn each_event_makes_a_message_per_wanted_channel_once(database: &Database, _: &str) {
    let dir = tempdir();
    let (notifications, _) = start(database, Arc::new(Local::new()), dir.path()).await;
    let store = notifications.store();
    handle(&notifications, &registered("u1")).await.unwrap();
    // Redelivered (the same message id): one message per channel still.
    let inbound = Inbound::of(&confirmed("o1", "u1"), None).unwrap();
    handle_inbound(&notifications, &inbound).await.unwrap();
    handle_inbound(&notifications, &inbound).await.unwrap();
    let mine = store.of_user("u1", 100).await.unwrap();
    assert_eq!(mine.len(), 2, "e-mail and push by default: {mine:?}");
    let email = of_channel(&mine, "email")[0];
    assert_eq!(email.subject, "Order o1 is confirmed");
    assert!(email.body.starts_with("Hello Alice,"), "{email:?}");
    assert!(email.body.contains("2 x tea at 4.50 EUR") && email.body.contains("9.00 EUR"));
    assert_eq!(
        of_channel(&mine, "push")[0].body,
        "Your order o1 (9.00 EUR) is confirmed."
    );
    assert!(mine.iter().all(|n| n.status == "QUEUED"));

    // Preferences: SMS only. A rejection tells the reason in words.
    store
        .set_preferences(
            "u2",
            Preferences {
                email: false,
                sms: true,
                push: false,
            },
        )
        .await
        .unwrap();
    let rejected = OrderRejected {
        order_id: "o2".into(),
        user_id: "u2".into(),
        reason: "PAYMENT_DECLINED".into(),
        placed_at_ms: 0,
    };
    handle(&notifications, &rejected).await.unwrap();
    let theirs = store.of_user("u2", 100).await.unwrap();
    assert_eq!(theirs.len(), 1);
    assert_eq!(theirs[0].channel, "sms");
    assert_eq!(
        theirs[0].body,
        "Your order o2 could not be completed: the payment was declined."
    );

    // Shipping's events name only the order: its owner is known from the order's events, and
    // an order not heard of yet is tried again later.
    let shipped = |order: &str| OrderShipped {
        order_id: order.to_owned(),
        tracking_id: "TRK9".into(),
    };
    handle(&notifications, &shipped("o1")).await.unwrap();
    let mine = store.of_user("u1", 100).await.unwrap();
    assert_eq!(mine.len(), 4);
    assert_eq!(mine[0].kind, "order_shipped", "the newest first");
    assert!(mine[0].body.contains("TRK9"));
    assert!(matches!(
        handle(&notifications, &shipped("unknown")).await,
        Err(HandleError::Transient(_))
    ));
    // Malformed: poison.
    let mut bad = confirmed("o3", "u1");
    bad.user_id = String::new();
    assert!(matches!(
        handle(&notifications, &bad).await,
        Err(HandleError::Poison(_))
    ));
}

/// Waits (at most ten seconds) until `done` holds of the notification `id`.
async fn until(
    notifications: &Notifications,
    id: &str,
    done: impl Fn(&Notification) -> bool,
) -> Notification {
    for _ in 0..1_000 {
        if let Some(found) = notifications.store().get(id).await.unwrap()
            && done(&found)
        {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{id}: {:?}", notifications.store().get(id).await.unwrap());
}

/// Waits (at most ten seconds) until `channel`'s dead letters hold `depth` ids: the broker
/// moves a rejected message to them on its own time.
async fn depth_becomes(queue: &dyn ChannelQueue, channel: Channel, depth: u64) {
    for _ in 0..1_000 {
        if queue.dead_depth(channel).await.unwrap() == depth {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "{channel}'s dead letters: {}",
        queue.dead_depth(channel).await.unwrap()
    );
}

fn sink_lines(dir: &Path, channel: &str) -> Vec<Outgoing> {
    let Ok(text) = std::fs::read_to_string(dir.join(format!("{channel}.jsonl"))) else {
        return Vec::new();
    };
    text.lines()
        .map(|line| {
            let value: serde_json::Value = serde_json::from_str(line).unwrap();
            Outgoing {
                id: value["id"].as_str().unwrap().to_owned(),
                channel: Channel::parse(value["channel"].as_str().unwrap()).unwrap(),
                to: value["to"].as_str().unwrap().to_owned(),
                subject: value["subject"].as_str().unwrap().to_owned(),
                body: value["body"].as_str().unwrap().to_owned(),
            }
        })
        .collect()
}

async fn dead_letter_and_replay(database: &Database, queue: Arc<dyn ChannelQueue>) {
    let dir = tempdir();
    let (notifications, _) = start(database, queue.clone(), dir.path()).await;
    let tasks = Supervisor::new();
    notifications.run(&tasks);
    notifications.knobs().set_failing(Channel::Sms, true);
    notifications
        .store()
        .set_preferences(
            "u1",
            Preferences {
                email: true,
                sms: true,
                push: false,
            },
        )
        .await
        .unwrap();
    handle(&notifications, &registered("u1")).await.unwrap();
    let inbound = Inbound::of(&confirmed("o1", "u1"), None).unwrap();
    handle_inbound(&notifications, &inbound).await.unwrap();
    let sms_id = format!("{}.sms", inbound.envelope.id);
    let email_id = format!("{}.email", inbound.envelope.id);

    let sent = until(&notifications, &email_id, |n| n.status == "SENT").await;
    assert_eq!(sent.attempts, 0);
    let dead = until(&notifications, &sms_id, |n| n.status == "DEAD").await;
    assert_eq!(dead.attempts, 3, "each attempt counted, then dead");
    assert!(dead.last_error.unwrap().contains("failure knob"));
    depth_becomes(&*queue, Channel::Sms, 1).await;
    assert_eq!(notifications.store().dead(None, 10).await.unwrap().len(), 1);
    assert!(sink_lines(dir.path(), "sms").is_empty());

    // Fixed, then replayed: sent, once.
    notifications.knobs().set_failing(Channel::Sms, false);
    assert_eq!(notifications.replay(Some(Channel::Email)).await.unwrap(), 0);
    assert_eq!(notifications.replay(Some(Channel::Sms)).await.unwrap(), 1);
    until(&notifications, &sms_id, |n| n.status == "SENT").await;
    depth_becomes(&*queue, Channel::Sms, 0).await;
    assert_eq!(notifications.replay(None).await.unwrap(), 0, "nothing dead");
    // The ids delivered again (duplicates in the queues) are not sent again: once a later
    // notification of each channel is sent, the workers have taken the duplicates before it.
    queue.publish(Channel::Sms, &sms_id).await.unwrap();
    queue.publish(Channel::Email, &email_id).await.unwrap();
    let later = Inbound::of(&confirmed("o2", "u1"), None).unwrap();
    handle_inbound(&notifications, &later).await.unwrap();
    for channel in ["sms", "email"] {
        let id = format!("{}.{channel}", later.envelope.id);
        until(&notifications, &id, |n| n.status == "SENT").await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Each sent once: the first order's, then the later one's.
    let sms = sink_lines(dir.path(), "sms");
    assert_eq!(sms.len(), 2, "{sms:?}");
    assert_eq!(
        (sms[0].id.as_str(), sms[0].to.as_str()),
        (sms_id.as_str(), "u1")
    );
    let email = sink_lines(dir.path(), "email");
    assert_eq!(email.len(), 2, "{email:?}");
    assert_eq!(email[0].id, email_id);
    assert_eq!(email[0].to, "u1@example.com");
    assert_eq!(email[0].subject, "Order o1 is confirmed");
    tasks.shutdown(Duration::from_secs(5)).await;

    // Each move announced on notifications.events, in the transaction of the move: four sent,
    // one dead, one replayed.
    let mut announced: Vec<String> = shop_messaging::Outbox::pending(database, 100)
        .await
        .unwrap()
        .into_iter()
        .filter(|pending| pending.subject == shop_messaging::contracts::NOTIFICATIONS_EVENTS)
        .map(|pending| {
            let envelope: shop_messaging::Envelope =
                serde_json::from_slice(&pending.payload).unwrap();
            let body: serde_json::Value = serde_json::from_str(envelope.body.get()).unwrap();
            format!("{} {}", envelope.kind, body["channel"].as_str().unwrap())
        })
        .collect();
    announced.sort();
    assert_eq!(
        announced,
        [
            "NotificationDead sms",
            "NotificationSent email",
            "NotificationSent email",
            "NotificationSent sms",
            "NotificationSent sms",
            "NotificationsReplayed sms",
        ]
    );
}

async fn a_failing_channel_is_dead_lettered_then_replayed_and_sent_once_in_process(
    database: &Database,
    _: &str,
) {
    dead_letter_and_replay(database, Arc::new(Local::new())).await;
}

async fn a_failing_channel_is_dead_lettered_then_replayed_and_sent_once_on_rabbitmq(
    database: &Database,
    _: &str,
) {
    let url = std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://127.0.0.1:5672/%2f".into());
    let namespace = format!("test-{}.", fastrand::u64(..));
    let rabbit = match Rabbit::connect(&url, &namespace).await {
        Ok(rabbit) => Arc::new(rabbit),
        Err(error) => {
            assert!(
                std::env::var_os("MAINSTAY_REQUIRE_SERVERS").is_none(),
                "RabbitMQ at {url} is required (MAINSTAY_REQUIRE_SERVERS is set): {error}"
            );
            eprintln!("skipped: no RabbitMQ at {url}: {error}");
            return;
        }
    };
    assert!(rabbit.durable() && rabbit.connected());
    dead_letter_and_replay(database, rabbit.clone()).await;
    // The workers stopped: the last reference is ours.
    let rabbit = Arc::into_inner(rabbit).expect("the workers let go of the queues");
    rabbit.delete().await.unwrap();
}

async fn what_an_in_process_queue_held_is_sent_after_a_restart(database: &Database, _: &str) {
    let dir = tempdir();
    let (before, _) = start(database, Arc::new(Local::new()), dir.path()).await;
    handle(&before, &registered("u1")).await.unwrap();
    let inbound = Inbound::of(&confirmed("o1", "u1"), None).unwrap();
    handle_inbound(&before, &inbound).await.unwrap();
    // Handed to the queue, then the process stopped before a worker took it.
    let email_id = format!("{}.email", inbound.envelope.id);
    before
        .store()
        .mark_enqueued(&email_id, i64::MAX)
        .await
        .unwrap();
    drop(before);
    let (after, _) = start(database, Arc::new(Local::new()), dir.path()).await;
    let tasks = Supervisor::new();
    after.run(&tasks);
    until(&after, &email_id, |n| n.status == "SENT").await;
    until(&after, &format!("{}.push", inbound.envelope.id), |n| {
        n.status == "SENT"
    })
    .await;
    tasks.shutdown(Duration::from_secs(5)).await;
    assert_eq!(sink_lines(dir.path(), "email").len(), 1);
}

/// The claim's edges: one worker at a time, under its token; a claim that ran out taken over
/// (the old holder can then change nothing) or taken back; a failed attempt not due again
/// before its back-off; a permanent failure dead at once.
async fn claims_name_their_worker_and_run_out(database: &Database, _: &str) {
    let dir = tempdir();
    let (notifications, _) = start(database, Arc::new(Local::new()), dir.path()).await;
    let store = notifications.store();
    handle(&notifications, &registered("u1")).await.unwrap();
    let everything = Preferences {
        email: true,
        sms: true,
        push: true,
    };
    store.set_preferences("u1", everything).await.unwrap();
    let inbound = Inbound::of(&confirmed("o1", "u1"), None).unwrap();
    handle_inbound(&notifications, &inbound).await.unwrap();
    let id = format!("{}.email", inbound.envelope.id);
    let now = shop_common::unix_millis();
    let later = now + 60_000;

    assert!(store.claim(&id, "a", later).await.unwrap().is_some());
    assert!(
        store.claim(&id, "b", later).await.unwrap().is_none(),
        "held by a"
    );
    assert!(!store.sent(&id, "b").await.unwrap(), "b holds nothing");
    assert_eq!(
        store.take_back_abandoned(3).await.unwrap(),
        0,
        "a's lease runs"
    );
    assert!(store.sent(&id, "a").await.unwrap());
    assert!(
        store.claim(&id, "b", later).await.unwrap().is_none(),
        "sent"
    );
    // The push: a's lease runs out (a stopped), b takes it over, and a can change nothing.
    let push = format!("{}.push", inbound.envelope.id);
    assert!(store.claim(&push, "a", now - 1).await.unwrap().is_some());
    let taken = store.claim(&push, "b", later).await.unwrap().unwrap();
    assert_eq!(taken.status, "SENDING");
    assert!(!store.sent(&push, "a").await.unwrap());
    assert_eq!(
        store.failed(&push, "a", "late", 0, 3, false).await.unwrap(),
        None
    );
    // b fails: queued again, not due before its back-off; a's abandoned attempt counted.
    let due = shop_common::unix_millis() + 60_000;
    assert_eq!(
        store
            .failed(&push, "b", "busy", due, 3, false)
            .await
            .unwrap(),
        Some((2, false))
    );
    assert!(
        store.claim(&push, "c", later).await.unwrap().is_none(),
        "not due yet"
    );
    let now = shop_common::unix_millis();
    let due_now = store.unqueued(10, now, now, None).await.unwrap();
    assert!(due_now.iter().all(|(due, _)| *due != push), "{due_now:?}");
    // A permanent failure is dead at once.
    let sms = format!("{}.sms", inbound.envelope.id);
    assert!(store.claim(&sms, "p", later).await.unwrap().is_some());
    assert_eq!(
        store
            .failed(&sms, "p", "no such phone", 0, 3, true)
            .await
            .unwrap(),
        Some((1, true))
    );
    assert_eq!(store.get(&sms).await.unwrap().unwrap().status, "DEAD");
    // Replayed, then claimed by a worker that stopped mid-send: taken back when its lease
    // runs out, and handed again.
    assert_eq!(store.replay(Some(Channel::Sms)).await.unwrap(), 1);
    let gone = shop_common::unix_millis() - 1;
    store.claim(&sms, "d", gone).await.unwrap().unwrap();
    assert_eq!(store.take_back_abandoned(3).await.unwrap(), 1);
    let back = store.get(&sms).await.unwrap().unwrap();
    assert_eq!(
        (back.status.as_str(), back.attempts),
        ("QUEUED", 1),
        "the abandoned attempt counts"
    );
    let now = shop_common::unix_millis();
    assert_eq!(
        store.unqueued(10, now, now, None).await.unwrap(),
        vec![(sms.clone(), "sms".to_owned())],
        "the push is not due yet"
    );
    assert!(store.mark_enqueued(&sms, now).await.unwrap().is_some());
    assert!(
        store.mark_enqueued(&sms, now).await.unwrap().is_none(),
        "handed already"
    );
    assert!(
        store
            .unqueued(10, now, now - 1, None)
            .await
            .unwrap()
            .is_empty(),
        "handed"
    );
    assert_eq!(store.forget_handoffs().await.unwrap(), 1);
    assert_eq!(
        store.unqueued(10, now, now - 1, None).await.unwrap().len(),
        1
    );
}

async fn the_api_shows_mine_and_lets_admins_replay(database: &Database, _: &str) {
    let dir = tempdir();
    let (notifications, issuer) = start(database, Arc::new(Local::new()), dir.path()).await;
    let app = router(notifications.clone());
    let token = |user: &str, role: &str| {
        issuer
            .issue(&AccessClaims::new(user.to_owned()).role(role))
            .unwrap()
            .token
    };
    let (alice, bob, admin) = (
        token("u1", "customer"),
        token("u2", "customer"),
        token("a1", "admin"),
    );
    handle(&notifications, &registered("u1")).await.unwrap();
    handle(&notifications, &confirmed("o1", "u1"))
        .await
        .unwrap();
    let send =
        async |method: Method, path: &str, token: Option<&str>, body: Option<serde_json::Value>| {
            call(&app, method, path, token, body, None).await
        };

    assert_eq!(
        send(Method::GET, "/notifications", None, None).await.status,
        StatusCode::UNAUTHORIZED
    );
    let mine = send(Method::GET, "/notifications", Some(&alice), None).await;
    assert_eq!(mine.status, StatusCode::OK);
    assert_eq!(mine.body["items"].as_array().unwrap().len(), 2);
    assert_eq!(mine.body["items"][0]["order_id"], "o1");
    assert!(
        mine.body["items"][0].get("last_error").is_none()
            && mine.body["items"][0].get("attempts").is_none(),
        "what went wrong sending is for operators: {}",
        mine.body
    );
    let one = send(Method::GET, "/notifications?limit=1", Some(&alice), None).await;
    assert_eq!(one.body["items"].as_array().unwrap().len(), 1);
    for bad in [
        "/notifications?limit=0",
        "/notifications?limit=101",
        "/notifications?limit=x",
        "/notifications?other=1",
    ] {
        let reply = send(Method::GET, bad, Some(&alice), None).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(reply.headers["content-type"], "application/problem+json");
    }
    let theirs = send(Method::GET, "/notifications", Some(&bob), None).await;
    assert_eq!(theirs.body["items"], json!([]), "only one's own");

    let defaults = send(Method::GET, "/notifications/preferences", Some(&bob), None).await;
    assert_eq!(
        defaults.body,
        json!({"email": true, "sms": false, "push": true})
    );
    let chosen = json!({"email": false, "sms": true, "push": false});
    let set = send(
        Method::PUT,
        "/notifications/preferences",
        Some(&bob),
        Some(chosen.clone()),
    )
    .await;
    assert_eq!(set.status, StatusCode::OK);
    assert_eq!(
        send(Method::GET, "/notifications/preferences", Some(&bob), None)
            .await
            .body,
        chosen
    );
    for bad in [
        json!({"email": true}),
        json!({"email": 1, "sms": true, "push": true}),
        json!({"email": true, "sms": true, "push": true, "fax": true}),
    ] {
        let reply = send(
            Method::PUT,
            "/notifications/preferences",
            Some(&bob),
            Some(bad.clone()),
        )
        .await;
        assert!(reply.status.is_client_error(), "{bad}: {reply:?}");
        assert_eq!(reply.headers["content-type"], "application/problem+json");
    }

    // Admin only: the dead letters, the replay, the knobs.
    for (method, path) in [
        (Method::GET, "/admin/notifications/dead-letters"),
        (Method::POST, "/admin/notifications/dead-letters/replay"),
    ] {
        let reply = send(method, path, Some(&alice), None).await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{path}");
    }
    let knob = send(
        Method::PUT,
        "/admin/notifications/channels/sms",
        Some(&alice),
        Some(json!({"failing": true})),
    )
    .await;
    assert_eq!(knob.status, StatusCode::FORBIDDEN);
    let off = send(
        Method::PUT,
        "/admin/notifications/channels/sms",
        Some(&admin),
        Some(json!({"failing": true})),
    )
    .await;
    assert_eq!(
        off.status,
        StatusCode::NOT_FOUND,
        "the knobs are off by default"
    );
    assert!(!notifications.knobs().failing(Channel::Sms));
    notifications.knobs().enable();
    let knob = send(
        Method::PUT,
        "/admin/notifications/channels/sms",
        Some(&admin),
        Some(json!({"failing": true})),
    )
    .await;
    assert_eq!(knob.status, StatusCode::OK);
    assert!(notifications.knobs().failing(Channel::Sms));
    let unknown = send(
        Method::PUT,
        "/admin/notifications/channels/fax",
        Some(&admin),
        Some(json!({"failing": true})),
    )
    .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    let none = send(
        Method::GET,
        "/admin/notifications/dead-letters",
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(
        none.body,
        json!({"counts": {"email": 0, "sms": 0, "push": 0}, "items": []})
    );
    let bad = send(
        Method::GET,
        "/admin/notifications/dead-letters?channel=fax",
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);

    // One dead, seen and replayed through the API.
    let tasks = Supervisor::new();
    notifications.run(&tasks);
    handle(
        &notifications,
        &OrderRejected {
            order_id: "o2".into(),
            user_id: "u2".into(),
            reason: "OUT_OF_STOCK".into(),
            placed_at_ms: 0,
        },
    )
    .await
    .unwrap();
    let mut dead = None;
    for _ in 0..1_000 {
        let seen = send(
            Method::GET,
            "/admin/notifications/dead-letters?channel=sms",
            Some(&admin),
            None,
        )
        .await;
        if seen.body["counts"]["sms"] == 1 && seen.body["items"].as_array().unwrap().len() == 1 {
            dead = Some(seen);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let dead = dead.expect("the SMS dead-lettered within ten seconds");
    assert_eq!(dead.body["items"][0]["user_id"], "u2");
    assert_eq!(dead.body["items"][0]["status"], "DEAD");
    send(
        Method::PUT,
        "/admin/notifications/channels/sms",
        Some(&admin),
        Some(json!({"failing": false})),
    )
    .await;
    let replayed = send(
        Method::POST,
        "/admin/notifications/dead-letters/replay?channel=sms",
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(replayed.body, json!({"replayed": 1}));
    let id = dead.body["items"][0]["id"].as_str().unwrap().to_owned();
    until(&notifications, &id, |n| n.status == "SENT").await;
    tasks.shutdown(Duration::from_secs(5)).await;
}

/// E-mail over SMTP, to a server that speaks just enough of the protocol and keeps what it
/// was given.
#[tokio::test]
async fn email_goes_out_over_smtp_with_its_id() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        let (socket, _) = listener.accept().await.unwrap();
        let (read, mut write) = socket.into_split();
        let mut lines = BufReader::new(read).lines();
        let mut transcript = Vec::new();
        write.write_all(b"220 catcher ESMTP\r\n").await.unwrap();
        let mut data = false;
        while let Some(line) = lines.next_line().await.unwrap() {
            transcript.push(line.clone());
            let reply: &[u8] = if data {
                if line == "." {
                    data = false;
                    b"250 queued\r\n"
                } else {
                    continue;
                }
            } else if line.starts_with("EHLO") {
                b"250-catcher\r\n250 8BITMIME\r\n"
            } else if line == "DATA" {
                data = true;
                b"354 go on\r\n"
            } else if line == "QUIT" {
                write.write_all(b"221 bye\r\n").await.unwrap();
                break;
            } else {
                b"250 ok\r\n"
            };
            write.write_all(reply).await.unwrap();
        }
        transcript
    });
    let smtp = Smtp::new(
        "127.0.0.1",
        port,
        "shop@mainstay.localhost",
        Duration::from_secs(5),
    )
    .unwrap();
    let message = Outgoing {
        id: "m-1.email".into(),
        channel: Channel::Email,
        to: "alice@example.com".into(),
        subject: "Order o1 is confirmed".into(),
        body: "Hello Alice,\nthank you.".into(),
    };
    smtp.send(&message).await.unwrap();
    drop(smtp);
    let transcript = tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .unwrap()
        .unwrap();
    let has = |text: &str| transcript.iter().any(|line| line.contains(text));
    assert!(
        has("MAIL FROM:<shop@mainstay.localhost>"),
        "{transcript:#?}"
    );
    assert!(has("RCPT TO:<alice@example.com>"));
    assert!(has("Subject: Order o1 is confirmed"));
    assert!(has("Message-ID: <m-1.email@notifications.mainstay>"));
    assert!(has("Hello Alice,"));
    // A bad address is an error, not a panic.
    let mut bad = message;
    bad.to = "not an address".into();
    assert!(smtp_to_nowhere().send(&bad).await.is_err());
}

fn smtp_to_nowhere() -> Smtp {
    Smtp::new(
        "127.0.0.1",
        9,
        "shop@mainstay.localhost",
        Duration::from_millis(200),
    )
    .unwrap()
}

struct TempDir(std::path::PathBuf);

impl TempDir {
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempdir() -> TempDir {
    let dir = std::env::temp_dir().join(format!("notifications-{}", fastrand::u64(..)));
    std::fs::create_dir_all(&dir).unwrap();
    TempDir(dir)
}
