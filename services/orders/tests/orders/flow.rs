//! The saga's state machine, exhaustively: every state reachable from a new order by any
//! sequence of events, with what it has sent, keeps the invariants of ARCHITECTURE.md §4.

use std::collections::{BTreeSet, HashSet, VecDeque};

use shop_orders::flow::{Answer, Event, Next, Reason, Saga, Status, Step};

const CAPTURED: i64 = 1_000;

fn answers() -> Vec<Answer> {
    vec![
        Answer::Reserved,
        Answer::OutOfStock,
        Answer::ReservationRefused,
        Answer::Authorized,
        Answer::Declined("DECLINED".into()),
        Answer::Booked,
        Answer::Undeliverable,
        Answer::Captured(CAPTURED),
        Answer::CaptureFailed("EXPIRED".into()),
        Answer::Committed,
        Answer::Released,
        Answer::Voided,
        Answer::ShipmentCancelled(true),
        Answer::ShipmentCancelled(false),
        Answer::Refunded(CAPTURED),
        Answer::Returned,
    ]
}

fn events() -> Vec<Event> {
    let mut events = vec![
        Event::DeadlinePassed,
        Event::CancelAsked,
        Event::Shipped,
        Event::Delivered,
    ];
    for step in Step::ALL {
        for answer in answers() {
            events.push(Event::Answered(step, answer));
        }
    }
    events
}

/// The answer a healthy participant gives to `step`.
fn healthy(step: Step) -> Answer {
    match step {
        Step::Reserve => Answer::Reserved,
        Step::Authorize => Answer::Authorized,
        Step::Ship => Answer::Booked,
        Step::Capture => Answer::Captured(CAPTURED),
        Step::Commit => Answer::Committed,
        Step::CancelShipment => Answer::ShipmentCancelled(true),
        Step::Void => Answer::Voided,
        Step::Release => Answer::Released,
        Step::Refund => Answer::Refunded(CAPTURED),
        Step::Restock => Answer::Returned,
    }
}

/// A saga's state and the steps it has sent, as the model explores them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Node {
    status: Status,
    step: Option<Step>,
    plan: Vec<Step>,
    reason: Option<Reason>,
    captured: i64,
    refunded: i64,
    sent: BTreeSet<&'static str>,
    /// Steps answered with a refusal (nothing of them to undo).
    refused: BTreeSet<&'static str>,
}

fn node(saga: &Saga, sent: BTreeSet<&'static str>, refused: BTreeSet<&'static str>) -> Node {
    Node {
        status: saga.status,
        step: saga.step,
        plan: saga.plan.clone(),
        reason: saga.reason,
        captured: saga.captured_minor,
        refunded: saga.refunded_minor,
        sent,
        refused,
    }
}

fn saga_of(node: &Node) -> Saga {
    Saga {
        status: node.status,
        step: node.step,
        plan: node.plan.clone(),
        reason: node.reason,
        captured_minor: node.captured,
        refunded_minor: node.refunded,
    }
}

fn check(node: &Node) {
    let sent = |step: Step| node.sent.contains(step.name());
    // A settled saga awaits nothing; an unsettled one awaits a step.
    assert_eq!(node.status.settled(), node.step.is_none(), "{node:?}");
    if node.status.settled() {
        assert!(node.plan.is_empty(), "{node:?}");
    }
    // Money taken is never followed by undoing what came before the pivot.
    if node.captured > 0 {
        assert!(!sent(Step::Void) && !sent(Step::Release), "{node:?}");
        assert!(
            !matches!(
                node.status,
                Status::Rejecting | Status::Rejected | Status::Cancelling | Status::NeedsAttention
            ),
            "{node:?}"
        );
    }
    match node.status {
        Status::Rejected | Status::NeedsAttention | Status::Cancelled => {
            // Everything done (or perhaps done) before the pivot was undone.
            for (done, undo) in [
                (Step::Reserve, Step::Release),
                (Step::Authorize, Step::Void),
                (Step::Ship, Step::CancelShipment),
            ] {
                if sent(done) && !node.refused.contains(done.name()) && node.captured == 0 {
                    assert!(sent(undo), "{done} not undone: {node:?}");
                }
            }
            // What was taken was given back.
            assert_eq!(node.refunded, node.captured, "{node:?}");
            assert!(
                !sent(Step::Commit) || node.status == Status::Cancelled,
                "{node:?}"
            );
            // What was taken out of stock went back on hand.
            assert!(!sent(Step::Commit) || sent(Step::Restock), "{node:?}");
        }
        Status::Confirmed => {
            for step in [
                Step::Reserve,
                Step::Authorize,
                Step::Ship,
                Step::Capture,
                Step::Commit,
            ] {
                assert!(sent(step), "{node:?}");
            }
            assert_eq!(node.captured, CAPTURED, "{node:?}");
        }
        _ => {}
    }
    // Stock goes back on hand only once it was taken, and the money given back.
    if sent(Step::Restock) {
        assert!(sent(Step::Commit) && sent(Step::Refund), "{node:?}");
    }
    if node.status == Status::Rejected {
        assert!(
            !sent(Step::Capture),
            "rejected after the capture was asked: {node:?}"
        );
        assert!(node.reason.is_some(), "{node:?}");
    }
}

/// Every event on every reachable state; each state's invariants, and that a healthy world
/// settles it.
#[test]
fn every_reachable_state_keeps_the_invariants_and_settles() {
    let start = Saga::start();
    let first = node(
        &start,
        BTreeSet::from([Step::Reserve.name()]),
        BTreeSet::new(),
    );
    let mut seen = HashSet::from([first.clone()]);
    let mut queue = VecDeque::from([first]);
    let events = events();
    let mut moves = 0_usize;
    while let Some(current) = queue.pop_front() {
        check(&current);
        let saga = saga_of(&current);
        for event in &events {
            let Next::Move {
                saga: next, send, ..
            } = saga.on(event)
            else {
                continue;
            };
            moves += 1;
            if send {
                assert!(
                    next.step.is_some(),
                    "sends nothing: {current:?} on {event:?}"
                );
            }
            // Past the pivot, no deadline undoes anything: the step is sent again.
            if *event == Event::DeadlinePassed
                && matches!(saga.status, Status::Paying | Status::Paid)
            {
                assert_eq!((next.status, next.step), (saga.status, saga.step));
                assert!(send);
            }
            let mut sent = current.sent.clone();
            if let (true, Some(step)) = (send, next.step) {
                sent.insert(step.name());
            }
            let mut refused = current.refused.clone();
            if let Event::Answered(
                step,
                Answer::OutOfStock
                | Answer::ReservationRefused
                | Answer::Declined(_)
                | Answer::Undeliverable,
            ) = event
            {
                refused.insert(step.name());
            }
            let next = node(&next, sent, refused);
            if seen.insert(next.clone()) {
                queue.push_back(next);
            }
        }
        // Liveness: healthy participants settle it within a few answers.
        let mut saga = saga_of(&current);
        for _ in 0..8 {
            let Some(step) = saga.step else { break };
            match saga.on(&Event::Answered(step, healthy(step))) {
                Next::Move { saga: next, .. } => saga = next,
                other => panic!("a healthy answer to {step} did not move {saga:?}: {other:?}"),
            }
        }
        assert!(saga.status.settled(), "never settles: {current:?}");
    }
    // The model explored the whole machine, not a corner of it.
    let statuses: HashSet<Status> = seen.iter().map(|node| node.status).collect();
    assert_eq!(statuses.len(), Status::ALL.len(), "unreached: {statuses:?}");
    assert!(
        seen.len() >= 40 && moves > seen.len(),
        "{} states, {moves} moves",
        seen.len()
    );
}

#[test]
fn names_round_trip() {
    for step in Step::ALL {
        assert_eq!(Step::parse(step.name()), Some(step));
    }
    for status in Status::ALL {
        assert_eq!(Status::parse(status.name()), Some(status));
    }
    for reason in Reason::ALL {
        assert_eq!(Reason::parse(reason.name()), Some(reason));
    }
    assert_eq!(Step::parse("Reserve"), None);
}

#[test]
fn each_failure_before_the_pivot_undoes_in_reverse_with_its_reason() {
    let at = |step: Step| {
        let mut saga = Saga::start();
        while saga.step != Some(step) {
            let current = saga.step.unwrap();
            let Next::Move { saga: next, .. } =
                saga.on(&Event::Answered(current, healthy(current)))
            else {
                panic!()
            };
            saga = next;
        }
        saga
    };
    let cases = [
        (
            Step::Reserve,
            Answer::OutOfStock,
            Reason::OutOfStock,
            vec![],
        ),
        (
            Step::Authorize,
            Answer::Declined("DECLINED".into()),
            Reason::PaymentDeclined,
            vec![Step::Release],
        ),
        (
            Step::Ship,
            Answer::Undeliverable,
            Reason::Undeliverable,
            vec![Step::Void, Step::Release],
        ),
        (
            Step::Capture,
            Answer::CaptureFailed("EXPIRED".into()),
            Reason::CaptureFailed,
            vec![Step::CancelShipment, Step::Void, Step::Release],
        ),
    ];
    for (step, answer, reason, undo) in cases {
        let Next::Move { saga, .. } = at(step).on(&Event::Answered(step, answer)) else {
            panic!("{step}")
        };
        assert_eq!(saga.reason, Some(reason));
        let mut undone: Vec<Step> = saga.step.into_iter().chain(saga.plan.clone()).collect();
        assert_eq!(undone, undo, "{step}");
        undone.clear();
    }
    // The deadline undoes the step in flight too.
    let timeouts = [
        (Step::Reserve, Reason::InventoryTimeout, vec![Step::Release]),
        (
            Step::Authorize,
            Reason::PaymentTimeout,
            vec![Step::Void, Step::Release],
        ),
        (
            Step::Ship,
            Reason::ShippingTimeout,
            vec![Step::CancelShipment, Step::Void, Step::Release],
        ),
    ];
    for (step, reason, undo) in timeouts {
        let Next::Move { saga, send, .. } = at(step).on(&Event::DeadlinePassed) else {
            panic!("{step}")
        };
        assert!(send);
        assert_eq!(
            (saga.status, saga.reason),
            (Status::Rejecting, Some(reason))
        );
        let undone: Vec<Step> = saga.step.into_iter().chain(saga.plan).collect();
        assert_eq!(undone, undo, "{step}");
    }
}

#[test]
fn a_refund_stops_when_the_parcel_left_first() {
    let mut saga = Saga::start();
    while let Some(step) = saga.step {
        let Next::Move { saga: next, .. } = saga.on(&Event::Answered(step, healthy(step))) else {
            panic!("{step}")
        };
        saga = next;
    }
    assert_eq!(saga.status, Status::Confirmed);
    let Next::Move {
        saga: refunding, ..
    } = saga.on(&Event::CancelAsked)
    else {
        panic!()
    };
    assert_eq!(
        (refunding.status, refunding.step),
        (Status::Refunding, Some(Step::CancelShipment))
    );
    let left = Event::Answered(Step::CancelShipment, Answer::ShipmentCancelled(false));
    let Next::Move {
        saga: shipped,
        send,
        ..
    } = refunding.on(&left)
    else {
        panic!()
    };
    assert!(!send, "nothing is refunded");
    assert_eq!((shipped.status, shipped.reason), (Status::Shipped, None));
    assert_eq!(shipped.refunded_minor, 0);
    // Cancelled in time, the refund follows.
    let cancelled = Event::Answered(Step::CancelShipment, Answer::ShipmentCancelled(true));
    let Next::Move {
        saga: next, send, ..
    } = refunding.on(&cancelled)
    else {
        panic!()
    };
    assert!(send);
    assert_eq!(next.step, Some(Step::Refund));
    // Then the stock goes back on hand, and the order ends cancelled.
    let Next::Move {
        saga: next, send, ..
    } = next.on(&Event::Answered(Step::Refund, Answer::Refunded(CAPTURED)))
    else {
        panic!()
    };
    assert!(send);
    assert_eq!(next.step, Some(Step::Restock));
    let Next::Move { saga: next, .. } = next.on(&Event::Answered(Step::Restock, Answer::Returned))
    else {
        panic!()
    };
    assert_eq!(
        (next.status, next.reason, next.refunded_minor),
        (Status::Cancelled, Some(Reason::CancelledByUser), CAPTURED)
    );
}
