//! The checkout saga as a pure state machine: where an order is, and where an event moves it.
//! No I/O: the orchestrator loads a [`Saga`], asks [`Saga::on`], and writes the move (and the
//! command of its step) in one transaction.
//!
//! ```text
//! PENDING   reserve → authorize → ship ─┐
//! PAYING    capture (the pivot) ────────┤ a failure or the deadline before the pivot:
//! PAID      commit ─────────────────────┤   REJECTING: undo what was done, in reverse
//! CONFIRMED → SHIPPED → DELIVERED       │   (cancel-shipment, void, release) → REJECTED
//!   └─ cancel: REFUNDING cancel-shipment → refund → restock → CANCELLED
//!              (or SHIPPED: the parcel left first, and nothing is refunded)
//! a cancel before the pivot: CANCELLING, the same undoing → CANCELLED
//! a capture that can never succeed: REJECTING the same way → NEEDS_ATTENTION
//! ```
//!
//! After the pivot nothing is undone: a step that is not answered in time is sent again (the
//! participant answers a step once, however often it is sent).

use std::fmt;

/// A step of the saga: one command to one participant, named in its saga reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Step {
    /// Hold the order's stock (inventory).
    Reserve,
    /// Authorise the total on the card (payments).
    Authorize,
    /// Book the shipment (shipping).
    Ship,
    /// Capture the authorised total (payments): the pivot.
    Capture,
    /// Take the held stock for good (inventory).
    Commit,
    /// Cancel the booked shipment (shipping).
    CancelShipment,
    /// Give the authorisation up (payments).
    Void,
    /// Give the held stock back (inventory).
    Release,
    /// Give the captured total back (payments).
    Refund,
    /// Put the committed stock back on hand (inventory), after a refund.
    Restock,
}

impl Step {
    /// Every step.
    pub const ALL: [Self; 10] = [
        Self::Reserve,
        Self::Authorize,
        Self::Ship,
        Self::Capture,
        Self::Commit,
        Self::CancelShipment,
        Self::Void,
        Self::Release,
        Self::Refund,
        Self::Restock,
    ];

    /// Its name, in saga references and the order's history.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Reserve => "reserve",
            Self::Authorize => "authorize",
            Self::Ship => "ship",
            Self::Capture => "capture",
            Self::Commit => "commit",
            Self::CancelShipment => "cancel-shipment",
            Self::Void => "void",
            Self::Release => "release",
            Self::Refund => "refund",
            Self::Restock => "restock",
        }
    }

    /// The step of `name`.
    #[must_use]
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|step| step.name() == name)
    }

    /// Whether the step comes before the pivot (and is undone when the saga fails).
    #[must_use]
    pub const fn before_pivot(self) -> bool {
        matches!(self, Self::Reserve | Self::Authorize | Self::Ship)
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where an order is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// Before the pivot: stock, payment and shipment being arranged.
    Pending,
    /// The payment being captured (the pivot).
    Paying,
    /// Paid; the stock being committed.
    Paid,
    /// Paid, stock taken, shipment booked.
    Confirmed,
    /// The parcel left.
    Shipped,
    /// The parcel arrived.
    Delivered,
    /// A step failed before the pivot: what was done is being undone.
    Rejecting,
    /// The checkout failed; nothing is held and nothing was taken.
    Rejected,
    /// Cancelled by its owner before the pivot: what was done is being undone.
    Cancelling,
    /// Cancelled by its owner after it was confirmed: the shipment cancelled, the money given
    /// back.
    Refunding,
    /// Cancelled; nothing is held, and what was paid was given back.
    Cancelled,
    /// The capture can never succeed (the authorisation expired or was voided): nothing is
    /// held or taken, and an operator decides (the customer is told, or asked to pay again).
    NeedsAttention,
}

impl Status {
    /// Every status.
    pub const ALL: [Self; 12] = [
        Self::Pending,
        Self::Paying,
        Self::Paid,
        Self::Confirmed,
        Self::Shipped,
        Self::Delivered,
        Self::Rejecting,
        Self::Rejected,
        Self::Cancelling,
        Self::Refunding,
        Self::Cancelled,
        Self::NeedsAttention,
    ];

    /// Its name, as the API shows it.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Paying => "PAYING",
            Self::Paid => "PAID",
            Self::Confirmed => "CONFIRMED",
            Self::Shipped => "SHIPPED",
            Self::Delivered => "DELIVERED",
            Self::Rejecting => "REJECTING",
            Self::Rejected => "REJECTED",
            Self::Cancelling => "CANCELLING",
            Self::Refunding => "REFUNDING",
            Self::Cancelled => "CANCELLED",
            Self::NeedsAttention => "NEEDS_ATTENTION",
        }
    }

    /// The status of `name`.
    #[must_use]
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|status| status.name() == name)
    }

    /// Whether the saga is over: no step is awaited (an order may still ship, or be cancelled
    /// from [`Confirmed`](Self::Confirmed)).
    #[must_use]
    pub const fn settled(self) -> bool {
        matches!(
            self,
            Self::Confirmed
                | Self::Shipped
                | Self::Delivered
                | Self::Rejected
                | Self::Cancelled
                | Self::NeedsAttention
        )
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why an order was rejected or cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// A line asks for more than is in stock.
    OutOfStock,
    /// The card was declined (or is not a card number).
    PaymentDeclined,
    /// The payment was not authorised before the saga's deadline.
    PaymentTimeout,
    /// The carrier does not deliver to the address.
    Undeliverable,
    /// The stock was not held before the saga's deadline.
    InventoryTimeout,
    /// The shipment was not booked before the saga's deadline.
    ShippingTimeout,
    /// The capture can never succeed.
    CaptureFailed,
    /// Its owner cancelled it.
    CancelledByUser,
}

impl Reason {
    /// Every reason.
    pub const ALL: [Self; 8] = [
        Self::OutOfStock,
        Self::PaymentDeclined,
        Self::PaymentTimeout,
        Self::Undeliverable,
        Self::InventoryTimeout,
        Self::ShippingTimeout,
        Self::CaptureFailed,
        Self::CancelledByUser,
    ];

    /// Its name, as the API shows it.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::OutOfStock => "OUT_OF_STOCK",
            Self::PaymentDeclined => "PAYMENT_DECLINED",
            Self::PaymentTimeout => "PAYMENT_TIMEOUT",
            Self::Undeliverable => "UNDELIVERABLE",
            Self::InventoryTimeout => "INVENTORY_TIMEOUT",
            Self::ShippingTimeout => "SHIPPING_TIMEOUT",
            Self::CaptureFailed => "CAPTURE_FAILED",
            Self::CancelledByUser => "CANCELLED_BY_USER",
        }
    }

    /// The reason of `name`.
    #[must_use]
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|reason| reason.name() == name)
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a participant answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Every line is held.
    Reserved,
    /// A line is short.
    OutOfStock,
    /// The hold was released before the reservation came.
    ReservationRefused,
    /// The total is authorised.
    Authorized,
    /// The total is not authorised; why, as the payments service said it.
    Declined(String),
    /// The shipment is booked.
    Booked,
    /// The carrier does not deliver there (or the shipment was cancelled before it came).
    Undeliverable,
    /// The money is taken: how much, in minor units.
    Captured(i64),
    /// The capture can never succeed; why.
    CaptureFailed(String),
    /// The stock is taken for good.
    Committed,
    /// No stock is held any more.
    Released,
    /// No authorisation is left.
    Voided,
    /// No shipment is booked any more; `false`: none was cancelled now (there was none, or it
    /// left).
    ShipmentCancelled(bool),
    /// The money is given back: how much, in minor units.
    Refunded(i64),
    /// The committed stock is back on hand (or never was taken).
    Returned,
}

/// What happened to an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A participant answered a step.
    Answered(Step, Answer),
    /// The step awaited was not answered in time.
    DeadlinePassed,
    /// Its owner asked to cancel it.
    CancelAsked,
    /// The parcel left.
    Shipped,
    /// The parcel arrived.
    Delivered,
}

/// A saga's state: its status, the step it awaits and the steps it will take after.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Saga {
    /// Where the order is.
    pub status: Status,
    /// The step whose answer is awaited; `None` once the saga is settled.
    pub step: Option<Step>,
    /// The steps after it, in order.
    pub plan: Vec<Step>,
    /// Why it is being, or was, rejected or cancelled.
    pub reason: Option<Reason>,
    /// What was captured, in minor units.
    pub captured_minor: i64,
    /// What was refunded, in minor units.
    pub refunded_minor: i64,
}

/// Where an event moves a saga.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Nothing changes (an answer to a step the saga has moved past, a repeated event): why.
    Stay(&'static str),
    /// The event is refused (a cancel too late): why, for the caller.
    Refused(&'static str),
    /// The saga moves to this state; `send`: the command of its step is sent (a new step, or
    /// the same one again after its deadline).
    Move {
        /// The state after.
        saga: Saga,
        /// Whether to send the step's command.
        send: bool,
        /// What happened, for the order's history.
        note: String,
    },
}

impl Saga {
    /// A new order's saga: awaiting its reservation.
    #[must_use]
    pub fn start() -> Self {
        Self {
            status: Status::Pending,
            step: Some(Step::Reserve),
            plan: vec![Step::Authorize, Step::Ship, Step::Capture, Step::Commit],
            reason: None,
            captured_minor: 0,
            refunded_minor: 0,
        }
    }

    /// Where `event` moves the saga.
    #[must_use]
    pub fn on(&self, event: &Event) -> Next {
        match event {
            Event::Answered(step, answer) => {
                if self.step != Some(*step) {
                    return Next::Stay("an answer to a step the saga is not awaiting");
                }
                self.answered(*step, answer)
            }
            Event::DeadlinePassed => self.deadline_passed(),
            Event::CancelAsked => self.cancel_asked(),
            Event::Shipped => match self.status {
                Status::Confirmed => self.settle(Status::Shipped, "the parcel left".into()),
                _ => Next::Stay("the parcel left: nothing to move"),
            },
            Event::Delivered => match self.status {
                Status::Confirmed | Status::Shipped => {
                    self.settle(Status::Delivered, "the parcel arrived".into())
                }
                _ => Next::Stay("the parcel arrived: nothing to move"),
            },
        }
    }

    fn answered(&self, step: Step, answer: &Answer) -> Next {
        use Answer as A;
        match (step, answer) {
            (Step::CancelShipment, A::ShipmentCancelled(false))
                if self.status == Status::Refunding =>
            {
                // The parcel left before the cancel: nothing was refunded, and it ships.
                let mut next = self.clone();
                next.reason = None;
                next.settle(
                    Status::Shipped,
                    "cancel refused: the parcel had left".into(),
                )
            }
            (Step::Reserve, A::Reserved)
            | (Step::Authorize, A::Authorized)
            | (Step::Ship, A::Booked)
            | (Step::Commit, A::Committed)
            | (Step::CancelShipment, A::ShipmentCancelled(_))
            | (Step::Void, A::Voided)
            | (Step::Release, A::Released)
            | (Step::Restock, A::Returned) => self.advance(format!("{step}: done")),
            (Step::Capture, A::Captured(amount)) => {
                let mut next = self.clone();
                next.captured_minor = *amount;
                next.advance(format!("capture: {amount} captured"))
            }
            (Step::Reserve, A::OutOfStock) => self.reject(Reason::OutOfStock, &[], "out of stock"),
            (Step::Reserve, A::ReservationRefused) => self.reject(
                Reason::InventoryTimeout,
                &[],
                "the hold was released before it was made",
            ),
            (Step::Authorize, A::Declined(why)) => self.reject(
                Reason::PaymentDeclined,
                &[Step::Release],
                &format!("payment declined ({why})"),
            ),
            (Step::Ship, A::Undeliverable) => self.reject(
                Reason::Undeliverable,
                &[Step::Void, Step::Release],
                "the address is undeliverable",
            ),
            (Step::Capture, A::CaptureFailed(why)) => self.reject(
                Reason::CaptureFailed,
                &[Step::CancelShipment, Step::Void, Step::Release],
                &format!("the capture can never succeed ({why})"),
            ),
            (Step::Refund, A::Refunded(amount)) => {
                let mut next = self.clone();
                next.refunded_minor = *amount;
                next.advance(format!("refund: {amount} refunded"))
            }
            _ => Next::Stay("an answer that does not fit its step"),
        }
    }

    /// The next step of the plan, or the end the status leads to.
    fn advance(&self, note: String) -> Next {
        let mut next = self.clone();
        if let Some((&step, rest)) = next.plan.split_first() {
            next.step = Some(step);
            next.plan = rest.to_vec();
            next.status = match (self.status, step) {
                (Status::Pending, Step::Capture) => Status::Paying,
                (Status::Paying, Step::Commit) => Status::Paid,
                (status, _) => status,
            };
            return Next::Move {
                saga: next,
                send: true,
                note,
            };
        }
        let end = match (self.status, self.reason) {
            (Status::Rejecting, Some(Reason::CaptureFailed)) => Status::NeedsAttention,
            (Status::Rejecting, _) => Status::Rejected,
            (Status::Cancelling | Status::Refunding, _) => Status::Cancelled,
            _ => Status::Confirmed,
        };
        next.settle(end, note)
    }

    fn settle(&self, status: Status, note: String) -> Next {
        let mut next = self.clone();
        next.status = status;
        next.step = None;
        next.plan = Vec::new();
        Next::Move {
            saga: next,
            send: false,
            note,
        }
    }

    /// Undoes `undo` (in that order), then ends for `reason`.
    fn reject(&self, reason: Reason, undo: &[Step], why: &str) -> Next {
        self.undo(Status::Rejecting, reason, undo, why)
    }

    fn undo(&self, status: Status, reason: Reason, undo: &[Step], why: &str) -> Next {
        let mut next = self.clone();
        next.status = status;
        next.reason = Some(reason);
        next.plan = undo.to_vec();
        next.step = None;
        match next.advance(why.to_owned()) {
            // Nothing to undo: settled at once.
            Next::Move { saga, send, .. } => Next::Move {
                saga,
                send,
                note: why.to_owned(),
            },
            other => other,
        }
    }

    /// What undoes the steps up to and including `step`, the one in flight, in reverse.
    fn undoing(step: Step) -> &'static [Step] {
        match step {
            Step::Reserve => &[Step::Release],
            Step::Authorize => &[Step::Void, Step::Release],
            _ => &[Step::CancelShipment, Step::Void, Step::Release],
        }
    }

    fn deadline_passed(&self) -> Next {
        let Some(step) = self.step else {
            return Next::Stay("nothing is awaited");
        };
        if self.status == Status::Pending {
            // The step in flight may have happened: it is undone with the rest.
            let reason = match step {
                Step::Reserve => Reason::InventoryTimeout,
                Step::Authorize => Reason::PaymentTimeout,
                _ => Reason::ShippingTimeout,
            };
            return self.reject(
                reason,
                Self::undoing(step),
                &format!("{step}: no answer before the saga's deadline"),
            );
        }
        // After the pivot, and while undoing: the step is sent again until it is answered.
        Next::Move {
            saga: self.clone(),
            send: true,
            note: format!("{step}: no answer yet, sent again"),
        }
    }

    fn cancel_asked(&self) -> Next {
        match (self.status, self.step) {
            (Status::Pending, Some(step)) => self.undo(
                Status::Cancelling,
                Reason::CancelledByUser,
                Self::undoing(step),
                "cancelled by its owner",
            ),
            (Status::Confirmed, _) => {
                let mut next = self.clone();
                next.status = Status::Refunding;
                next.reason = Some(Reason::CancelledByUser);
                next.step = Some(Step::CancelShipment);
                next.plan = vec![Step::Refund, Step::Restock];
                Next::Move {
                    saga: next,
                    send: true,
                    note: "cancelled by its owner: refunding".into(),
                }
            }
            (Status::Cancelling | Status::Refunding | Status::Cancelled, _) => {
                Next::Stay("already cancelled")
            }
            (Status::Paying | Status::Paid, _) => {
                Next::Refused("the order is being paid: try again in a moment")
            }
            (Status::Shipped | Status::Delivered, _) => {
                Next::Refused("the order has left the warehouse")
            }
            _ => Next::Refused("the order was rejected"),
        }
    }
}
