//! [`AlertService`]: the tokio driver around [`Router`] and one [`SinkQueue`] per sink.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};
use serde::Serialize;
use tether_model::{Alert, AlertSink, Severity};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::backoff::{RetryPolicy, jitter};
use crate::error::{AlertsError, Result};
use crate::queue::{Completed, DropReason, Next, SinkQueue};
use crate::route::{Admission, Route, Router};

/// The kind of the alert `tether alerts test SINK` sends.
pub const TEST_KIND: &str = "test";

/// Delivers one alert to one sink (an alert-sink plugin). Blocking: called from
/// `spawn_blocking`. The error text follows [`crate::Failure::parse`].
pub trait AlertDeliver: Send + Sync {
    /// Delivers `alert` to `sink`.
    fn deliver(&self, sink: &str, alert: &Alert) -> std::result::Result<(), String>;
}

/// Where dead letters go (the daemon writes `alert.dropped` to the audit log). Must not block.
pub trait DeadLetter: Send + Sync {
    /// `alert` could not be delivered to `sink`, for `reason`, after `attempts`; `error` is the
    /// last failure (empty for a full queue).
    fn dropped(&self, sink: &str, alert: &Alert, reason: DropReason, attempts: u32, error: &str);
}

/// `[alerts]` settings, as the driver needs them.
#[derive(Debug, Clone)]
pub struct AlertsSettings {
    /// Routes; empty: every alert to every sink in `default_sinks`.
    pub routes: Vec<Route>,
    /// Cool-down per (category, host).
    pub cooldown: Duration,
    /// Queue capacity per sink.
    pub queue_capacity: usize,
    /// Retry timing.
    pub retry: RetryPolicy,
    /// Recent alerts kept for `tether alerts list`.
    pub history: usize,
}

impl AlertsSettings {
    /// The settings of an `[alerts]` section (at start and on a live reload).
    pub fn from_section(a: &tether_config::AlertsSection) -> AlertsSettings {
        AlertsSettings {
            routes: a
                .routes
                .iter()
                .map(|r| Route {
                    categories: r.categories.clone(),
                    min_severity: r.min_severity,
                    sinks: r.sinks.clone(),
                })
                .collect(),
            cooldown: Duration::from_secs(a.cooldown_secs),
            queue_capacity: a.queue_capacity,
            retry: RetryPolicy::from_section(a),
            history: 200,
        }
    }
}

impl Default for AlertsSettings {
    fn default() -> Self {
        AlertsSettings {
            routes: Vec::new(),
            cooldown: Duration::from_secs(300),
            queue_capacity: 256,
            retry: RetryPolicy::default(),
            history: 200,
        }
    }
}

/// Where one alert stands with one sink.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SinkState {
    /// Waiting in the sink's queue.
    Queued,
    /// A delivery failed; another attempt is due.
    Retrying,
    /// Delivered.
    Delivered,
    /// Dead-lettered (audited as `alert.dropped`, counted).
    Dropped,
}

/// One recent alert and its delivery state per sink.
#[derive(Debug, Clone, Serialize)]
pub struct AlertEntry {
    /// Increasing id.
    pub id: u64,
    /// When it was raised, RFC 3339 UTC.
    pub ts: String,
    /// The alert (its `fields` include `suppressed_repeats` when the cool-down held some back).
    pub alert: Alert,
    /// Held back by the cool-down (a repeat); then `sinks` is empty.
    pub suppressed: bool,
    /// Per sink: state, attempts, last error.
    pub sinks: BTreeMap<String, SinkProgress>,
}

/// One sink's progress with one alert.
#[derive(Debug, Clone, Serialize)]
pub struct SinkProgress {
    /// Where it stands.
    pub state: SinkState,
    /// Attempts made.
    pub attempts: u32,
    /// The last failure, if any.
    pub error: Option<String>,
    /// Why it was dropped.
    pub reason: Option<&'static str>,
}

#[derive(Clone)]
struct Item {
    id: u64,
    alert: Alert,
}

struct Slot {
    queue: Mutex<SinkQueue<Item>>,
    wake: Notify,
    /// Stops this sink's task (a reload removed the sink) or the daemon's shutdown.
    stop: CancellationToken,
}

struct Metrics {
    raised: IntCounterVec,
    suppressed: IntCounterVec,
    delivered: IntCounterVec,
    retries: IntCounterVec,
    dropped: IntCounterVec,
    depth: IntGaugeVec,
}

impl Metrics {
    fn new(registry: &Registry) -> Result<Metrics> {
        let m = Metrics {
            raised: IntCounterVec::new(
                Opts::new("tether_alerts_raised_total", "Alerts raised, by kind."),
                &["kind"],
            )?,
            suppressed: IntCounterVec::new(
                Opts::new(
                    "tether_alerts_suppressed_total",
                    "Alerts held back by the cool-down, by kind.",
                ),
                &["kind"],
            )?,
            delivered: IntCounterVec::new(
                Opts::new(
                    "tether_alerts_delivered_total",
                    "Alerts delivered, by sink.",
                ),
                &["sink"],
            )?,
            retries: IntCounterVec::new(
                Opts::new(
                    "tether_alerts_retries_total",
                    "Failed alert deliveries that will be retried, by sink.",
                ),
                &["sink"],
            )?,
            dropped: IntCounterVec::new(
                Opts::new(
                    "tether_alerts_dropped_total",
                    "Alerts dead-lettered (audited as alert.dropped), by sink and reason.",
                ),
                &["sink", "reason"],
            )?,
            depth: IntGaugeVec::new(
                Opts::new("tether_alerts_queue_depth", "Alerts queued per sink."),
                &["sink"],
            )?,
        };
        registry.register(Box::new(m.raised.clone()))?;
        registry.register(Box::new(m.suppressed.clone()))?;
        registry.register(Box::new(m.delivered.clone()))?;
        registry.register(Box::new(m.retries.clone()))?;
        registry.register(Box::new(m.dropped.clone()))?;
        registry.register(Box::new(m.depth.clone()))?;
        Ok(m)
    }
}

struct Inner {
    settings: Mutex<AlertsSettings>,
    /// The sinks every alert goes to when no route is configured (set by `start`).
    default_sinks: Mutex<Vec<String>>,
    /// The daemon's shutdown (set by `start`); sink tasks started later stop on it too.
    shutdown: Mutex<Option<CancellationToken>>,
    router: Mutex<Router>,
    /// Filled by [`AlertService::start`]; alerts raised before wait in `early`.
    slots: Mutex<HashMap<String, Arc<Slot>>>,
    early: Mutex<Option<VecDeque<Alert>>>,
    history: Mutex<VecDeque<AlertEntry>>,
    changed: Notify,
    next_id: AtomicU64,
    metrics: Metrics,
    deliver: Arc<dyn AlertDeliver>,
    dead: Arc<dyn DeadLetter>,
}

/// The daemon's alert sink: routes, cools down, queues per sink and delivers with retries;
/// what cannot be delivered is dead-lettered and counted. Cheap to clone.
#[derive(Clone)]
pub struct AlertService {
    inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Alerts raised before the sinks are known (start-up) that are kept.
const EARLY_MAX: usize = 1024;

impl AlertService {
    /// A service with `settings`; nothing is delivered until [`AlertService::start`].
    pub fn new(
        settings: AlertsSettings,
        deliver: Arc<dyn AlertDeliver>,
        dead: Arc<dyn DeadLetter>,
        registry: &Registry,
    ) -> Result<AlertService> {
        let router = Router::new(settings.routes.clone(), settings.cooldown)?;
        Ok(AlertService {
            inner: Arc::new(Inner {
                router: Mutex::new(router),
                settings: Mutex::new(settings),
                default_sinks: Mutex::new(Vec::new()),
                shutdown: Mutex::new(None),
                slots: Mutex::new(HashMap::new()),
                early: Mutex::new(Some(VecDeque::new())),
                history: Mutex::new(VecDeque::new()),
                changed: Notify::new(),
                next_id: AtomicU64::new(1),
                metrics: Metrics::new(registry)?,
                deliver,
                dead,
            }),
        })
    }

    /// Starts one delivery task per sink: the sinks the routes name, or `default_sinks` when no
    /// route is configured (then every alert goes to each of them). Alerts raised before now are
    /// routed. The tasks stop on `shutdown`, dead-lettering what is still queued.
    pub fn start(
        &self,
        default_sinks: Vec<String>,
        shutdown: CancellationToken,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let inner = &self.inner;
        *lock(&inner.default_sinks) = default_sinks.clone();
        *lock(&inner.shutdown) = Some(shutdown.clone());
        let settings = lock(&inner.settings).clone();
        if settings.routes.is_empty()
            && !default_sinks.is_empty()
            && let Ok(r) = Router::new(default_route(default_sinks), settings.cooldown)
        {
            *lock(&inner.router) = r;
        }
        let sinks = lock(&inner.router).sinks();
        let mut tasks = Vec::new();
        {
            let mut slots = lock(&inner.slots);
            for sink in sinks {
                let (slot, task) = self.spawn_sink(&sink, &settings, &shutdown);
                slots.insert(sink, slot);
                tasks.push(task);
            }
        }
        let early = lock(&inner.early).take().unwrap_or_default();
        for alert in early {
            self.route(alert);
        }
        tasks
    }

    fn spawn_sink(
        &self,
        sink: &str,
        settings: &AlertsSettings,
        shutdown: &CancellationToken,
    ) -> (Arc<Slot>, tokio::task::JoinHandle<()>) {
        let inner = &self.inner;
        for reason in DropReason::ALL {
            inner
                .metrics
                .dropped
                .with_label_values(&[sink, reason.as_str()]);
        }
        inner.metrics.delivered.with_label_values(&[sink]);
        inner.metrics.depth.with_label_values(&[sink]).set(0);
        let slot = Arc::new(Slot {
            queue: Mutex::new(SinkQueue::new(settings.queue_capacity, settings.retry)),
            wake: Notify::new(),
            stop: shutdown.child_token(),
        });
        let task = tokio::spawn(run_sink(
            self.inner.clone(),
            sink.to_owned(),
            slot.clone(),
            slot.stop.clone(),
        ));
        (slot, task)
    }

    /// Applies changed `[alerts]` settings without a restart (`tether config reload`, SIGHUP):
    /// routes and cool-down (the cool-down windows are kept), queue capacity and retry timing
    /// for every sink, and the sink list: a sink a route now names gets its queue and task; a
    /// sink no route names any more stops, dead-lettering what it still held (`alert.dropped`,
    /// reason `shutdown`). Invalid routes change nothing and return the error. Must run inside
    /// the tokio runtime, after [`AlertService::start`] (before it, the settings are only
    /// stored). Returns the sinks (added, removed).
    pub fn reconfigure(&self, settings: AlertsSettings) -> Result<(Vec<String>, Vec<String>)> {
        let inner = &self.inner;
        let defaults = lock(&inner.default_sinks).clone();
        let routes = if settings.routes.is_empty() && !defaults.is_empty() {
            default_route(defaults)
        } else {
            settings.routes.clone()
        };
        lock(&inner.router).reconfigure(routes, settings.cooldown)?;
        *lock(&inner.settings) = settings.clone();
        let Some(shutdown) = lock(&inner.shutdown).clone() else {
            return Ok((Vec::new(), Vec::new()));
        };
        let wanted = lock(&inner.router).sinks();
        let mut slots = lock(&inner.slots);
        let removed: Vec<String> = slots
            .keys()
            .filter(|k| !wanted.contains(k))
            .cloned()
            .collect();
        for name in &removed {
            if let Some(slot) = slots.remove(name) {
                slot.stop.cancel();
            }
        }
        let mut added = Vec::new();
        for name in wanted {
            match slots.get(&name) {
                Some(slot) => {
                    lock(&slot.queue).set_limits(settings.queue_capacity, settings.retry);
                    slot.wake.notify_one();
                }
                None => {
                    let (slot, _task) = self.spawn_sink(&name, &settings, &shutdown);
                    slots.insert(name.clone(), slot);
                    added.push(name);
                }
            }
        }
        Ok((added, removed))
    }

    /// The configured sink names (after [`AlertService::start`]).
    pub fn sinks(&self) -> Vec<String> {
        let mut v: Vec<String> = lock(&self.inner.slots).keys().cloned().collect();
        v.sort();
        v
    }

    /// The most recent alerts, newest first.
    pub fn recent(&self, limit: usize) -> Vec<AlertEntry> {
        lock(&self.inner.history)
            .iter()
            .rev()
            .take(limit)
            .cloned()
            .collect()
    }

    /// Sends a test alert to `sink` through its real queue (no routing, no cool-down) and waits
    /// up to `wait` for it to be delivered or dropped. Returns its entry as it then stands.
    pub async fn test(&self, sink: &str, wait: Duration) -> Result<AlertEntry> {
        let slot = lock(&self.inner.slots)
            .get(sink)
            .cloned()
            .ok_or_else(|| AlertsError::UnknownSink(sink.to_owned()))?;
        let alert = Alert::new(
            TEST_KIND,
            Severity::Info,
            format!("test alert from tether alerts test {sink}"),
        )
        .field("sink", sink);
        let id = self.record(&alert, false, std::slice::from_ref(&sink.to_owned()));
        self.enqueue(sink, &slot, Item { id, alert });
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let changed = self.inner.changed.notified();
            let entry = self.entry(id);
            let done = entry.as_ref().is_none_or(|e| {
                e.sinks
                    .values()
                    .all(|p| matches!(p.state, SinkState::Delivered | SinkState::Dropped))
            });
            if done || tokio::time::Instant::now() >= deadline {
                return entry.ok_or_else(|| AlertsError::UnknownSink(sink.to_owned()));
            }
            let next = deadline.min(tokio::time::Instant::now() + Duration::from_millis(50));
            let _ = tokio::time::timeout_at(next, changed).await;
        }
    }

    fn entry(&self, id: u64) -> Option<AlertEntry> {
        lock(&self.inner.history)
            .iter()
            .rev()
            .find(|e| e.id == id)
            .cloned()
    }

    fn record(&self, alert: &Alert, suppressed: bool, sinks: &[String]) -> u64 {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let entry = AlertEntry {
            id,
            ts: now_rfc3339(),
            alert: alert.clone(),
            suppressed,
            sinks: sinks
                .iter()
                .map(|s| {
                    (
                        s.clone(),
                        SinkProgress {
                            state: SinkState::Queued,
                            attempts: 0,
                            error: None,
                            reason: None,
                        },
                    )
                })
                .collect(),
        };
        let mut h = lock(&self.inner.history);
        let keep = lock(&self.inner.settings).history.max(1);
        while h.len() >= keep {
            h.pop_front();
        }
        h.push_back(entry);
        drop(h);
        self.inner.changed.notify_waiters();
        id
    }

    fn enqueue(&self, sink: &str, slot: &Slot, item: Item) {
        let pushed = {
            let mut q = lock(&slot.queue);
            let r = q.push(item);
            self.inner
                .metrics
                .depth
                .with_label_values(&[sink])
                .set(q.len() as i64);
            r
        };
        match pushed {
            Ok(()) => slot.wake.notify_one(),
            Err(item) => dead_letter(&self.inner, sink, &item, DropReason::QueueFull, 0, ""),
        }
    }

    fn route(&self, mut alert: Alert) {
        let inner = &self.inner;
        let admission = lock(&inner.router).admit(&alert, std::time::Instant::now());
        match admission {
            Admission::Suppressed { .. } => {
                inner
                    .metrics
                    .suppressed
                    .with_label_values(&[&alert.kind])
                    .inc();
                self.record(&alert, true, &[]);
            }
            Admission::Send { sinks, suppressed } => {
                if suppressed > 0 {
                    alert
                        .fields
                        .insert("suppressed_repeats".into(), suppressed.to_string());
                    alert.message = format!(
                        "{} ({suppressed} repeats suppressed by the cool-down)",
                        alert.message
                    );
                }
                let id = self.record(&alert, false, &sinks);
                let slots = lock(&inner.slots).clone();
                for sink in &sinks {
                    let item = Item {
                        id,
                        alert: alert.clone(),
                    };
                    match slots.get(sink) {
                        Some(slot) => self.enqueue(sink, slot, item),
                        None => {
                            dead_letter(inner, sink, &item, DropReason::Rejected, 0, "no such sink")
                        }
                    }
                }
            }
        }
    }
}

impl AlertSink for AlertService {
    fn raise(&self, alert: Alert) {
        let host = alert.host.as_deref().unwrap_or("-");
        match alert.severity {
            Severity::Info => tracing::info!(alert = %alert.kind, host, "ALERT: {}", alert.message),
            Severity::Warning => {
                tracing::warn!(alert = %alert.kind, host, "ALERT: {}", alert.message)
            }
            Severity::Critical => {
                tracing::error!(alert = %alert.kind, host, "ALERT: {}", alert.message)
            }
        }
        self.inner
            .metrics
            .raised
            .with_label_values(&[&alert.kind])
            .inc();
        {
            let mut early = lock(&self.inner.early);
            if let Some(q) = early.as_mut() {
                if q.len() < EARLY_MAX {
                    q.push_back(alert);
                } else {
                    tracing::error!(alert = %alert.kind, "alert raised during start-up beyond {EARLY_MAX} queued; dropped");
                    self.inner
                        .metrics
                        .dropped
                        .with_label_values(&["*", DropReason::QueueFull.as_str()])
                        .inc();
                }
                return;
            }
        }
        self.route(alert);
    }
}

/// Every alert to `sinks` (no routes configured).
fn default_route(sinks: Vec<String>) -> Vec<Route> {
    vec![Route {
        categories: Vec::new(),
        min_severity: Severity::Info,
        sinks,
    }]
}

fn update(inner: &Inner, id: u64, sink: &str, f: impl FnOnce(&mut SinkProgress)) {
    let mut h = lock(&inner.history);
    if let Some(p) = h
        .iter_mut()
        .rev()
        .find(|e| e.id == id)
        .and_then(|e| e.sinks.get_mut(sink))
    {
        f(p);
    }
    drop(h);
    inner.changed.notify_waiters();
}

fn dead_letter(
    inner: &Inner,
    sink: &str,
    item: &Item,
    reason: DropReason,
    attempts: u32,
    error: &str,
) {
    tracing::error!(
        sink,
        alert = %item.alert.kind,
        reason = reason.as_str(),
        attempts,
        "alert dropped: {error}"
    );
    inner
        .metrics
        .dropped
        .with_label_values(&[sink, reason.as_str()])
        .inc();
    inner
        .dead
        .dropped(sink, &item.alert, reason, attempts, error);
    update(inner, item.id, sink, |p| {
        p.state = SinkState::Dropped;
        p.attempts = attempts;
        p.reason = Some(reason.as_str());
        if !error.is_empty() {
            p.error = Some(error.to_owned());
        }
    });
}

/// One sink's delivery loop.
async fn run_sink(inner: Arc<Inner>, sink: String, slot: Arc<Slot>, shutdown: CancellationToken) {
    loop {
        let next = lock(&slot.queue).poll(std::time::Instant::now());
        match next {
            Next::Deliver(item) => {
                let (deliver, s, alert) = (inner.deliver.clone(), sink.clone(), item.alert.clone());
                let result = tokio::task::spawn_blocking(move || deliver.deliver(&s, &alert))
                    .await
                    .unwrap_or_else(|_| Err("the sink call panicked".into()));
                let done = {
                    let mut q = lock(&slot.queue);
                    let done = q.complete(
                        result.as_ref().map(|_| ()).map_err(String::as_str),
                        std::time::Instant::now(),
                        jitter(),
                    );
                    inner
                        .metrics
                        .depth
                        .with_label_values(&[&sink])
                        .set(q.len() as i64);
                    done
                };
                match done {
                    Some(Completed::Delivered { item, attempts }) => {
                        inner.metrics.delivered.with_label_values(&[&sink]).inc();
                        update(&inner, item.id, &sink, |p| {
                            p.state = SinkState::Delivered;
                            p.attempts = attempts;
                        });
                    }
                    Some(Completed::Retrying {
                        item,
                        attempts,
                        error,
                        at,
                    }) => {
                        inner.metrics.retries.with_label_values(&[&sink]).inc();
                        tracing::warn!(
                            sink,
                            alert = %item.alert.kind,
                            attempts,
                            retry_in_ms = at.saturating_duration_since(std::time::Instant::now()).as_millis() as u64,
                            "alert delivery failed, will retry: {error}"
                        );
                        update(&inner, item.id, &sink, |p| {
                            p.state = SinkState::Retrying;
                            p.attempts = attempts;
                            p.error = Some(error);
                        });
                    }
                    Some(Completed::Dropped {
                        item,
                        attempts,
                        reason,
                        error,
                    }) => dead_letter(&inner, &sink, &item, reason, attempts, &error),
                    None => {}
                }
            }
            Next::WaitUntil(at) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(tokio::time::Instant::from_std(at)) => {}
                    _ = shutdown.cancelled() => break,
                }
            }
            Next::Idle => {
                tokio::select! {
                    _ = slot.wake.notified() => {}
                    _ = shutdown.cancelled() => break,
                }
            }
        }
        if shutdown.is_cancelled() {
            break;
        }
    }
    let left = lock(&slot.queue).drain();
    let why = if lock(&inner.shutdown)
        .as_ref()
        .is_some_and(CancellationToken::is_cancelled)
    {
        "the daemon stopped"
    } else {
        "a config reload removed this sink from [alerts]"
    };
    for item in left {
        dead_letter(&inner, &sink, &item, DropReason::Shutdown, 0, why);
    }
}
