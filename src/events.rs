//! Session lifecycle events: created, rotated, destroyed, logged out
//! everywhere, expired; delivered to [`SessionListener`]s through a
//! [`SessionEvents`] hub (see there for delivery and guarantees).

use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::SystemTime;

use crate::id::StorageKey;

/// How many events a hub queues for its listeners unless told otherwise.
pub const DEFAULT_EVENT_QUEUE: usize = 1024;

/// Something that happened to a session.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SessionEvent {
    /// What happened.
    pub kind: SessionEventKind,
    /// The session's user, where known: always for in-process events of a
    /// session with a user; for expirations only where the store still knows
    /// it (memory and PostgreSQL do, Redis does not).
    pub user: Option<String>,
    /// When it happened (for expirations: when the store noticed).
    pub at: SystemTime,
    /// The kind of store it happened in ([`SessionStore::name`](crate::SessionStore::name)).
    pub store: &'static str,
}

impl SessionEvent {
    /// An event of `kind` that happened now.
    pub fn new(kind: SessionEventKind, user: Option<String>, store: &'static str) -> Self {
        Self {
            kind,
            user,
            at: SystemTime::now(),
            store,
        }
    }

    /// The event's name, as used in the `unstuck_events_total` metric:
    /// `created`, `rotated`, `destroyed`, `logged_out_everywhere`, `expired`.
    pub fn name(&self) -> &'static str {
        match self.kind {
            SessionEventKind::Created { .. } => "created",
            SessionEventKind::Rotated { .. } => "rotated",
            SessionEventKind::Destroyed { .. } => "destroyed",
            SessionEventKind::LoggedOutEverywhere { .. } => "logged_out_everywhere",
            SessionEventKind::Expired { .. } => "expired",
        }
    }
}

/// The kinds of [`SessionEvent`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SessionEventKind {
    /// A new session was stored (its first response carries its cookie).
    Created {
        /// The new session.
        key: StorageKey,
    },
    /// A session moved to a new ID ([`Session::cycle_id`](crate::Session::cycle_id),
    /// at login); the old ID no longer works.
    Rotated {
        /// The session's key before.
        from: StorageKey,
        /// Its key now.
        to: StorageKey,
    },
    /// A live session was ended by [`Session::destroy`](crate::Session::destroy) (logout).
    Destroyed {
        /// The ended session.
        key: StorageKey,
    },
    /// Every session of the event's user was ended
    /// ([`Session::destroy_user_sessions`](crate::Session::destroy_user_sessions)).
    /// The store does not say which keys those were, so no `Destroyed`
    /// event follows for each.
    LoggedOutEverywhere {
        /// How many live sessions were ended.
        sessions: u64,
    },
    /// The store removed a session whose time was up.
    Expired {
        /// The expired session.
        key: StorageKey,
    },
}

/// Receives [`SessionEvent`]s. Implemented by every
/// `Fn(&SessionEvent) + Send + Sync + 'static` closure.
///
/// Called on the hub's delivery thread, never on a request's task. Keep it
/// cheap; a listener that blocks holds up the listeners behind it (events
/// beyond the queue's capacity are then dropped and counted).
pub trait SessionListener: Send + Sync + 'static {
    /// Called once per event.
    fn on_event(&self, event: &SessionEvent);
}

impl<F: Fn(&SessionEvent) + Send + Sync + 'static> SessionListener for F {
    fn on_event(&self, event: &SessionEvent) {
        self(event);
    }
}

type Listeners = Arc<RwLock<Vec<Arc<dyn SessionListener>>>>;

/// Where session events go: a set of listeners shared by a
/// [`SessionLayer`](crate::SessionLayer) (created, rotated, destroyed,
/// logged out everywhere) and the stores that report expirations.
///
/// Cheap to clone; clones share listeners, queue and counters.
///
/// # Delivery
/// A hub never slows a request down. Emitting an event is a non-blocking push
/// onto a bounded queue (default 1024 events); one thread per hub
/// (`unstuck-events`, started on the first event) takes events off the queue and
/// calls every listener in turn, in the order they were added. So:
/// - a slow listener delays only the listeners and events behind it; once the
///   queue is full, new events are dropped and counted
///   ([`SessionEvents::dropped`], and the metric `unstuck_events_dropped_total`);
/// - a listener that panics is caught and logged; the others, and later
///   events, are delivered as usual;
/// - events from one hub arrive in the order they were emitted.
///
/// Listeners are plain synchronous callbacks. One that needs to do I/O (write
/// an audit table, call a webhook) should hand the event to its own task, for
/// example through a channel.
///
/// # What is guaranteed
/// - **In-process events are exact**: [`Created`](SessionEventKind::Created),
///   [`Rotated`](SessionEventKind::Rotated),
///   [`Destroyed`](SessionEventKind::Destroyed) and
///   [`LoggedOutEverywhere`](SessionEventKind::LoggedOutEverywhere) are emitted
///   by the layer once the store has confirmed the change, and never for a
///   change that failed. They are lost only if the queue is full (counted) or
///   the process dies before delivery.
/// - **Expirations** ([`Expired`](SessionEventKind::Expired)) are reported
///   where the store can tell: [`MemoryStore`](crate::MemoryStore) when its
///   sweep removes a session (writes sweep at most every 30 seconds, so the
///   event can come that much later, or later still without writes),
///   `PostgresStore` when its cleanup deletes the row (as late as the cleanup
///   interval), `RedisStore` through Redis keyspace notifications, which are
///   fire-and-forget: sent per node, lost while the listener is disconnected,
///   and only sent when the server is configured for them (see
///   `RedisStore::spawn_expiry_events`). Treat expirations as a signal for
///   metrics and audit trails, not as a guarantee.
/// - Events name sessions by their [`StorageKey`] (a hash of the ID: it cannot
///   be used as a cookie), never by their ID.
///
/// # Examples
/// ```
/// use unstuck::{MemoryStore, SessionEvent, SessionEvents, SessionLayer};
///
/// let events = SessionEvents::new().with_listener(|event: &SessionEvent| {
///     // An audit log: the user and what happened, never the session ID.
///     eprintln!("session {} for {:?}", event.name(), event.user);
/// });
/// let store = MemoryStore::new().with_events(events.clone());
/// let layer = SessionLayer::new(store).with_events(events);
/// # let _ = layer;
/// ```
#[derive(Clone)]
pub struct SessionEvents {
    inner: Arc<Hub>,
}

struct Hub {
    listeners: Listeners,
    capacity: usize,
    /// The queue to the delivery thread, made with the first event.
    queue: OnceLock<SyncSender<SessionEvent>>,
    dropped: AtomicU64,
}

impl Default for SessionEvents {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for SessionEvents {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionEvents")
            .field("listeners", &read(&self.inner.listeners).len())
            .field("capacity", &self.inner.capacity)
            .field("dropped", &self.dropped())
            .finish()
    }
}

fn read(listeners: &Listeners) -> std::sync::RwLockReadGuard<'_, Vec<Arc<dyn SessionListener>>> {
    // Adding a listener is one push: a panic cannot leave the list half-made.
    listeners.read().unwrap_or_else(|p| p.into_inner())
}

impl SessionEvents {
    /// A hub with no listeners yet, queueing up to [`DEFAULT_EVENT_QUEUE`] events.
    pub fn new() -> Self {
        Self::with_capacity(DEFAULT_EVENT_QUEUE)
    }

    /// A hub queueing up to `capacity` events (at least 1) for its listeners;
    /// events beyond are dropped and counted.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            inner: Arc::new(Hub {
                listeners: Arc::default(),
                capacity: capacity.max(1),
                queue: OnceLock::new(),
                dropped: AtomicU64::new(0),
            }),
        }
    }

    /// Adds a listener; every clone of the hub delivers to it from now on.
    #[must_use]
    pub fn with_listener(self, listener: impl SessionListener) -> Self {
        self.add_listener(listener);
        self
    }

    /// Adds a listener to a hub already in use.
    pub fn add_listener(&self, listener: impl SessionListener) {
        self.inner
            .listeners
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push(Arc::new(listener));
    }

    /// How many events were dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.inner.dropped.load(Ordering::Relaxed)
    }

    /// Queues `event` for the listeners, without ever blocking: a full queue
    /// drops it (counted in [`dropped`](Self::dropped)). Stores call this for
    /// expirations; the layer for everything else.
    pub fn emit(&self, event: SessionEvent) {
        crate::metrics::event(&event);
        if read(&self.inner.listeners).is_empty() {
            return;
        }
        let queue = self.inner.queue.get_or_init(|| {
            let (sender, receiver) = sync_channel(self.inner.capacity);
            let listeners = self.inner.listeners.clone();
            let started = std::thread::Builder::new()
                .name("unstuck-events".into())
                .spawn(move || deliver(&receiver, &listeners));
            if let Err(error) = started {
                // The receiver is gone with the closure: every event is then
                // dropped, and counted, rather than failing requests.
                tracing::error!(%error, "could not start the session event thread");
            }
            sender
        });
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = queue.try_send(event) {
            self.inner.dropped.fetch_add(1, Ordering::Relaxed);
            crate::metrics::event_dropped();
        }
    }
}

/// The delivery thread: runs until every clone of the hub is gone.
fn deliver(queue: &Receiver<SessionEvent>, listeners: &Listeners) {
    while let Ok(event) = queue.recv() {
        let listeners: Vec<Arc<dyn SessionListener>> = read(listeners).clone();
        for listener in listeners {
            if catch_unwind(AssertUnwindSafe(|| listener.on_event(&event))).is_err() {
                tracing::error!(
                    event = event.name(),
                    "a session listener panicked; delivery goes on"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::mpsc::channel;
    use std::time::Duration;

    use super::*;
    use crate::id::SessionId;

    fn created() -> SessionEvent {
        let key = SessionId::generate().storage_key();
        SessionEvent::new(SessionEventKind::Created { key }, None, "memory")
    }

    #[test]
    fn every_listener_gets_every_event_in_order_despite_a_panicking_one() {
        let (tx, rx) = channel();
        let tx = Mutex::new(tx);
        let events = SessionEvents::new()
            .with_listener(|_: &SessionEvent| panic!("a broken listener"))
            .with_listener(move |e: &SessionEvent| {
                tx.lock().unwrap().send(e.clone()).unwrap();
            });
        let sent: Vec<SessionEvent> = (0..3).map(|_| created()).collect();
        for event in &sent {
            events.emit(event.clone());
        }
        for event in &sent {
            let got = rx.recv_timeout(Duration::from_secs(10)).expect("delivered");
            assert_eq!(&got, event);
        }
        assert_eq!(events.dropped(), 0);
    }

    #[test]
    fn a_blocked_listener_never_blocks_emit_and_overflow_is_counted() {
        let (release, blocked) = channel::<()>();
        let blocked = Mutex::new(blocked);
        let (entered_tx, entered) = channel::<()>();
        let entered_tx = Mutex::new(entered_tx);
        let events = SessionEvents::with_capacity(2).with_listener(move |_: &SessionEvent| {
            let _ = entered_tx.lock().unwrap().send(());
            let _ = blocked.lock().unwrap().recv();
        });
        // The first event is taken off the queue and blocks the thread ...
        events.emit(created());
        entered
            .recv_timeout(Duration::from_secs(10))
            .expect("the listener runs");
        // ... two more fill the queue, and the rest are dropped at once.
        for _ in 0..5 {
            events.emit(created());
        }
        assert_eq!(events.dropped(), 3);
        drop(release);
    }

    #[test]
    fn a_hub_without_listeners_queues_nothing() {
        let events = SessionEvents::with_capacity(1);
        for _ in 0..10 {
            events.emit(created());
        }
        assert_eq!(events.dropped(), 0);
        assert!(events.inner.queue.get().is_none());
    }
}
