//! The dispatcher (store → channel queues) and the channels' workers (queue → sender).

use std::sync::Arc;
use std::time::Duration;

use shop_common::tasks::{Stage, Supervisor};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::queue::Delivery;
use crate::send::{Outgoing, SendError};
use crate::{Channel, Notifications};

/// How many notifications of one channel are sent at once.
pub(crate) const WORKERS: usize = 4;
/// How many queued notifications the dispatcher hands over per pass.
const BATCH: u32 = 100;
/// The longest the dispatcher waits between two passes without being woken.
const POLL: Duration = Duration::from_secs(1);
/// A hand-off that long ago whose notification is still queued is made again (an in-process
/// queue dropped it): a duplicate id in a queue is harmless.
const REHAND_AFTER: Duration = Duration::from_secs(60);
/// The same for a durable queue (RabbitMQ), which loses nothing it confirmed: only what waits
/// this long (a very long backlog, an operator's purge) is handed again, so that a backlog
/// does not fill up with copies.
const REHAND_DURABLE_AFTER: Duration = Duration::from_secs(3_600);
/// How long a worker waits before handing back an id it could not claim (the store failed).
const STORE_BACKOFF: Duration = Duration::from_secs(1);

pub(crate) fn start(notifications: &Notifications, tasks: &Supervisor) {
    let dispatcher = notifications.clone();
    tasks.spawn("notifications-dispatcher", Stage::Relay, move |stop| {
        dispatcher.dispatch(stop)
    });
    for channel in Channel::ALL {
        let worker = notifications.clone();
        tasks.spawn(
            format!("notifications-{channel}"),
            Stage::Consumers,
            move |stop| worker.work(channel, stop),
        );
    }
}

/// The wait before attempt `attempts + 1`: the first wait doubled for each attempt so far, at
/// most the longest, the upper half of it at random (so that a burst of failures does not
/// retry in step).
pub(crate) fn backoff(first: Duration, most: Duration, attempts: u32) -> Duration {
    let doubled = first.saturating_mul(1 << attempts.saturating_sub(1).min(20));
    let wait = doubled.min(most);
    let half = wait / 2;
    half + half.mul_f64(fastrand::f64())
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX / 2)
}

impl Notifications {
    /// Hands due notifications to their channels' queues until `stop`, and takes back what
    /// stopped workers left claimed.
    async fn dispatch(self, stop: CancellationToken) {
        let store = &self.0.store;
        if !self.0.queue.durable() {
            // In-process queues lost what they held when the process stopped: all of it again.
            match store.forget_handoffs().await {
                Ok(0) => {}
                Ok(again) => tracing::info!(again, "notifications queued again after a restart"),
                Err(error) => tracing::error!(%error, "queued notifications cannot be read"),
            }
        }
        // Often enough that a retry is not kept much past its back-off.
        let poll = (self.0.retries.retry / 2).clamp(Duration::from_millis(10), POLL);
        loop {
            if let Err(error) = store.take_back_abandoned(self.0.retries.max_attempts).await {
                tracing::warn!(%error, "abandoned notifications cannot be taken back");
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = self.hand_over() => {}
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = self.0.queued.notified() => {}
                () = tokio::time::sleep(poll) => {}
            }
        }
    }

    /// One pass of the dispatcher: every due notification to its queue, a channel at a time,
    /// so that one whose queue is full or failing holds up no other.
    async fn hand_over(&self) {
        let rehand = if self.0.queue.durable() {
            REHAND_DURABLE_AFTER
        } else {
            REHAND_AFTER
        };
        for channel in Channel::ALL {
            if !self.hand_over_channel(channel, rehand).await {
                return;
            }
        }
    }

    /// Hands `channel`'s due notifications to its queue until none is left, or its queue
    /// refuses one; `false` when the store failed (the pass ends).
    async fn hand_over_channel(&self, channel: Channel, rehand: Duration) -> bool {
        let store = &self.0.store;
        loop {
            let now = shop_common::unix_millis();
            let rehand_before = now - millis(rehand);
            let batch = match store
                .unqueued(BATCH, now, rehand_before, Some(channel))
                .await
            {
                Ok(batch) => batch,
                Err(error) => {
                    tracing::warn!(%error, "queued notifications cannot be read");
                    return false;
                }
            };
            let full = batch.len() == BATCH as usize;
            for (id, _) in batch {
                // Marked first, and only if still due and unhanded: a worker may take the id,
                // fail it and put it back before the publish returns, and its putting back
                // must stand; another replica may have handed it meanwhile.
                let stamp = match store.mark_enqueued(&id, rehand_before).await {
                    Ok(Some(stamp)) => stamp,
                    Ok(None) => continue,
                    Err(error) => {
                        tracing::warn!(%error, "a queued notification cannot be marked");
                        return false;
                    }
                };
                if let Err(error) = self.0.queue.publish(channel, &id).await {
                    tracing::warn!(%error, "a notification cannot be queued now; tried again");
                    if let Err(error) = store.unmark_enqueued(&id, stamp).await {
                        // Handed again once the hand-off is old enough.
                        tracing::warn!(%error, "a failed hand-off cannot be unmarked");
                    }
                    return true;
                }
            }
            if !full {
                return true;
            }
        }
    }

    /// Sends `channel`'s notifications until `stop`, [`WORKERS`] at once.
    async fn work(self, channel: Channel, stop: CancellationToken) {
        let permits = Arc::new(Semaphore::new(WORKERS));
        let mut running = JoinSet::new();
        loop {
            let permit = tokio::select! {
                () = stop.cancelled() => break,
                permit = permits.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
            };
            let delivery = tokio::select! {
                () = stop.cancelled() => break,
                delivery = self.0.queue.next(channel) => delivery,
            };
            match delivery {
                Ok(delivery) => {
                    let this = self.clone();
                    running.spawn(async move {
                        this.deliver(channel, delivery).await;
                        drop(permit);
                    });
                }
                Err(error) => {
                    tracing::warn!(%error, "the channel's queue failed; reading it again soon");
                    tokio::select! {
                        () = stop.cancelled() => break,
                        () = tokio::time::sleep(POLL) => {}
                    }
                }
            }
            while let Some(joined) = running.try_join_next() {
                log_panic(joined);
            }
        }
        // What is being sent is finished (each within the send timeout).
        while let Some(joined) = running.join_next().await {
            log_panic(joined);
        }
    }

    /// Claims the notification of `delivery`, makes one attempt, records it, and settles the
    /// delivery: a failed attempt is queued again after its back-off by the dispatcher (the
    /// worker is free meanwhile), or dead-lettered when it was the last.
    async fn deliver(&self, channel: Channel, delivery: Box<dyn Delivery>) {
        let store = &self.0.store;
        let retries = self.0.retries;
        let id = delivery.id().to_owned();
        let token = format!("{:016x}", fastrand::u64(..));
        // One attempt, and room for a slow database around it.
        let lease = retries.send_timeout + Duration::from_secs(30);
        let claimed = store
            .claim(&id, &token, shop_common::unix_millis() + millis(lease))
            .await;
        let notification = match claimed {
            Ok(Some(notification)) => notification,
            // Sent, dead, not due yet, or another worker's: nothing to do.
            Ok(None) => return settle(delivery.ack().await),
            Err(error) => {
                tracing::warn!(%error, %id, "a notification cannot be claimed; handed back");
                tokio::time::sleep(STORE_BACKOFF).await;
                return settle(delivery.requeue().await);
            }
        };
        let error = match self.send_once(channel, &notification).await {
            Ok(()) => {
                self.record_sent(&id, &token).await;
                return settle(delivery.ack().await);
            }
            Err(error) => error,
        };
        let attempts = u32::try_from(notification.attempts).unwrap_or(0) + 1;
        let wait = backoff(retries.retry, retries.retry_max, attempts);
        let next = shop_common::unix_millis() + millis(wait);
        let recorded = store
            .failed(
                &id,
                &token,
                &error.message,
                next,
                retries.max_attempts,
                error.permanent,
            )
            .await;
        match recorded {
            Ok(Some((attempts, true))) => {
                tracing::warn!(%id, channel = channel.as_str(), attempts, %error,
                    "a notification's attempts ran out: dead-lettered");
                settle(delivery.dead_letter().await);
            }
            Ok(Some((attempts, false))) => {
                tracing::info!(%id, channel = channel.as_str(), attempts, %error, ?wait,
                    "a notification could not be sent; tried again after a wait");
                settle(delivery.ack().await);
            }
            Ok(None) => {
                tracing::warn!(%id, "a claim ran out during its attempt; another worker has it");
                settle(delivery.ack().await);
            }
            Err(store_error) => {
                // Left claimed: taken back when the lease runs out, and tried again.
                tracing::warn!(%store_error, %id, "a failed attempt cannot be recorded");
                settle(delivery.ack().await);
            }
        }
    }

    /// Marks a sent notification, trying again for a while if the store fails: left unmarked,
    /// it would be taken back when its lease runs out, and sent a second time.
    async fn record_sent(&self, id: &str, token: &str) {
        let mut wait = Duration::from_millis(100);
        for _ in 0..6 {
            match self.0.store.sent(id, token).await {
                Ok(true) => return,
                Ok(false) => {
                    tracing::warn!(%id, "sent after its claim ran out: it may be sent twice");
                    return;
                }
                Err(error) => {
                    tracing::warn!(%error, %id, "a sent notification cannot be marked yet");
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                }
            }
        }
        tracing::error!(%id, "a sent notification could not be marked: it will be sent again");
    }

    async fn send_once(
        &self,
        channel: Channel,
        notification: &crate::store::Notification,
    ) -> Result<(), SendError> {
        if self.0.knobs.failing(channel) {
            return Err(SendError::transient(format!(
                "the {channel} channel is failing (its failure knob is on)"
            )));
        }
        let to = match channel {
            Channel::Email => {
                let recipient = self
                    .0
                    .store
                    .recipient(&notification.user_id)
                    .await
                    .map_err(|error| SendError::transient(error.to_string()))?;
                match recipient {
                    Some(recipient) if !recipient.email.is_empty() => recipient.email,
                    _ => {
                        return Err(SendError::transient(
                            "no e-mail address is known for the user yet",
                        ));
                    }
                }
            }
            Channel::Sms | Channel::Push => notification.user_id.clone(),
        };
        let outgoing = Outgoing {
            id: notification.id.clone(),
            channel,
            to,
            subject: notification.subject.clone(),
            body: notification.body.clone(),
        };
        let sender = &self.0.senders[channel.index()];
        match tokio::time::timeout(self.0.retries.send_timeout, sender.send(&outgoing)).await {
            Ok(sent) => sent,
            Err(_) => Err(SendError::transient(format!(
                "no answer within {:?}",
                self.0.retries.send_timeout
            ))),
        }
    }
}

fn settle(result: Result<(), crate::queue::QueueError>) {
    if let Err(error) = result {
        tracing::warn!(%error, "a queued notification cannot be settled; it comes again");
    }
}

fn log_panic(joined: Result<(), tokio::task::JoinError>) {
    if let Err(error) = joined
        && error.is_panic()
    {
        tracing::error!(%error, "a notification's delivery panicked");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_doubles_up_to_the_longest_and_keeps_its_upper_half() {
        let first = Duration::from_millis(100);
        let most = Duration::from_millis(1_000);
        for _ in 0..200 {
            for (attempts, whole) in [
                (1, 100),
                (2, 200),
                (3, 400),
                (4, 800),
                (5, 1_000),
                (40, 1_000),
            ] {
                let wait = backoff(first, most, attempts);
                let whole = Duration::from_millis(whole);
                assert!(wait >= whole / 2 && wait <= whole, "{attempts}: {wait:?}");
            }
        }
    }
}
