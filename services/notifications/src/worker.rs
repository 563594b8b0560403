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
/// How often the dispatcher looks without being woken, and takes back abandoned claims.
const POLL: Duration = Duration::from_secs(1);

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

impl Notifications {
    /// Hands queued notifications to their channels' queues until `stop`.
    async fn dispatch(self, stop: CancellationToken) {
        let store = &self.0.store;
        if !self.0.queue.durable() {
            // In-process queues lost what they held when the process stopped: all of it again.
            match store.requeue_abandoned(true).await {
                Ok(0) => {}
                Ok(again) => tracing::info!(again, "notifications queued again after a restart"),
                Err(error) => tracing::error!(%error, "queued notifications cannot be read"),
            }
        }
        loop {
            if let Err(error) = store.requeue_abandoned(false).await {
                tracing::warn!(%error, "abandoned notifications cannot be taken back");
            }
            loop {
                let batch = match store.unqueued(BATCH).await {
                    Ok(batch) => batch,
                    Err(error) => {
                        tracing::warn!(%error, "queued notifications cannot be read");
                        break;
                    }
                };
                let full = batch.len() == BATCH as usize;
                let mut handed = true;
                for (id, channel) in batch {
                    let Some(channel) = Channel::parse(&channel) else {
                        continue;
                    };
                    let published = tokio::select! {
                        () = stop.cancelled() => return,
                        published = self.0.queue.publish(channel, &id) => published,
                    };
                    if let Err(error) = published {
                        tracing::warn!(%error, "a notification cannot be queued; tried again");
                        handed = false;
                        break;
                    }
                    if let Err(error) = store.mark_enqueued(&id).await {
                        tracing::warn!(%error, "a queued notification cannot be marked");
                        handed = false;
                        break;
                    }
                }
                if !(full && handed) {
                    break;
                }
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = self.0.queued.notified() => {}
                () = tokio::time::sleep(POLL) => {}
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
                    let stop = stop.clone();
                    running.spawn(async move {
                        this.deliver(channel, delivery, stop).await;
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
            while running.try_join_next().is_some() {}
        }
        while running.join_next().await.is_some() {}
    }

    /// The lease a claim holds for one attempt and the wait after it.
    fn lease_until(&self) -> i64 {
        let retries = &self.0.retries;
        let lease = retries.send_timeout + retries.retry_max + Duration::from_secs(30);
        shop_common::unix_millis() + i64::try_from(lease.as_millis()).unwrap_or(i64::MAX / 2)
    }

    /// Sends one notification, retrying, then dead-lettering; settles its delivery.
    async fn deliver(
        &self,
        channel: Channel,
        delivery: Box<dyn Delivery>,
        stop: CancellationToken,
    ) {
        let store = &self.0.store;
        let id = delivery.id().to_owned();
        let claimed = match store.claim(&id, self.lease_until()).await {
            Ok(claimed) => claimed,
            Err(error) => {
                tracing::warn!(%error, %id, "a notification cannot be claimed; left queued");
                return settle(delivery.requeue().await);
            }
        };
        let Some(notification) = claimed else {
            // Sent, dead, or another worker's: nothing to do.
            return settle(delivery.ack().await);
        };
        loop {
            let sent = self.send_once(channel, &notification).await;
            let error = match sent {
                Ok(()) => {
                    if let Err(error) = store.sent(&id).await {
                        // Sent but not marked: the claim expires and it is sent again.
                        tracing::error!(%error, %id, "a sent notification cannot be marked");
                    }
                    tracing::debug!(%id, channel = channel.as_str(), "notification sent");
                    return settle(delivery.ack().await);
                }
                Err(error) => error,
            };
            let attempts = match store.failed(&id, &error.0, self.lease_until()).await {
                Ok(attempts) => u32::try_from(attempts).unwrap_or(u32::MAX),
                Err(store_error) => {
                    tracing::warn!(%store_error, %id, "a failed attempt cannot be recorded");
                    return settle(delivery.requeue().await);
                }
            };
            let retries = self.0.retries;
            if attempts >= retries.max_attempts {
                tracing::warn!(%id, channel = channel.as_str(), attempts, %error,
                    "a notification's attempts ran out: dead-lettered");
                if let Err(error) = store.kill(&id).await {
                    tracing::warn!(%error, %id, "a dead notification cannot be marked");
                    return settle(delivery.requeue().await);
                }
                return settle(delivery.dead_letter().await);
            }
            tracing::info!(%id, channel = channel.as_str(), attempts, %error,
                "a notification could not be sent; tried again");
            let wait = backoff(retries.retry, retries.retry_max, attempts);
            tokio::select! {
                () = stop.cancelled() => {
                    // Stopping: hand it back now rather than when the claim expires.
                    if let Err(error) = store.release(&id).await {
                        tracing::warn!(%error, %id, "a claimed notification cannot be released");
                    }
                    return settle(delivery.requeue().await);
                }
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    async fn send_once(
        &self,
        channel: Channel,
        notification: &crate::store::Notification,
    ) -> Result<(), SendError> {
        if self.0.knobs.failing(channel) {
            return Err(SendError(format!(
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
                    .map_err(|error| SendError(error.to_string()))?;
                match recipient {
                    Some(recipient) if !recipient.email.is_empty() => recipient.email,
                    _ => return Err(SendError("no e-mail address is known for the user".into())),
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
            Err(_) => Err(SendError(format!(
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
