//! [`PluginHost`]: engine, loading, per-plugin instances, calls, stats, quarantine, metrics.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};
use tether_model::{Alert, AlertSink, NoAlerts, Severity};
use tether_policy::{PluginVote, Request, Vote};
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store};

use crate::abi::{Bindings, Called, Pre};
use crate::cache::{CacheKey, NoCacheKey, Unusable};
use crate::caps::{Grants, NoSecrets, SecretSource};
use crate::error::{Error, Result};
use crate::events::{Failed, NoEvents, PluginEvents, Quarantined};
use crate::manifest::{MAX_MEMORY_MB, Manifest, PluginKind, PluginSpec};
use crate::store::StoreState;
use crate::types::*;

/// Epoch tick period: deadlines are accurate to one tick.
const TICK: Duration = Duration::from_millis(2);
/// Most plugin instances alive at once (old + new set during a reload, plus recycling).
const MAX_INSTANCES: u32 = 128;
/// Latency samples kept per plugin for the p99 in [`PluginInfo`].
const LATENCY_SAMPLES: usize = 1024;

/// How the host is set up.
pub struct HostOptions {
    /// Where precompiled components are cached by content hash (created 0700). `None`: compile in memory.
    pub cache_dir: Option<PathBuf>,
    /// The key that authenticates cache entries (see [`CacheKey`]); without one the cache is
    /// not used even when `cache_dir` is set.
    pub cache_key: Arc<dyn CacheKey>,
    /// The vault, for granted `secrets.get` names.
    pub secrets: Arc<dyn SecretSource>,
    /// Where `plugin_quarantined` alerts go.
    pub alerts: Arc<dyn AlertSink>,
    /// Told when a plugin is quarantined (the daemon audits it as `plugin.quarantine`).
    pub events: Arc<dyn PluginEvents>,
    /// Consecutive failures (trap, timeout, memory, output too large) before quarantine. Default 5.
    pub quarantine_after: u32,
}

impl Default for HostOptions {
    fn default() -> Self {
        HostOptions {
            cache_dir: None,
            cache_key: Arc::new(NoCacheKey),
            secrets: Arc::new(NoSecrets),
            alerts: Arc::new(NoAlerts),
            events: Arc::new(NoEvents),
            quarantine_after: 5,
        }
    }
}

/// One loaded plugin, as `tether plugin list` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginInfo {
    /// Name from the manifest.
    pub name: String,
    /// Its world.
    pub kind: PluginKind,
    /// SHA-256 of the component, hex.
    pub sha256: String,
    /// Key id of the signer (`None`: unsigned, loaded under `allow_unsigned`).
    pub signer: Option<String>,
    /// Calls made (including failed ones).
    pub calls: u64,
    /// Failed calls.
    pub errors: u64,
    /// 99th percentile call latency over the last 1024 calls, microseconds.
    pub p99_us: Option<u64>,
    /// 50th percentile likewise.
    pub p50_us: Option<u64>,
    /// Quarantined after repeated failures (reload to clear).
    pub quarantined: bool,
    /// `secrets.get` calls refused (name not granted).
    pub secret_denials: u64,
    /// `http.send` calls refused by the destination check.
    pub http_denials: u64,
}

struct Live {
    store: Store<StoreState>,
    bindings: Bindings,
}

/// Whose input a call carried, for the failure accounting (see [`Stats::failing_callers`]).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Caller {
    /// Input the daemon made itself (alerts, audit batches).
    Daemon,
    /// Input shaped by one caller: the control-API user of a policy request, the host name of
    /// an enrollment.
    User(String),
}

/// Distinct callers remembered per failure streak (two are enough to decide).
const MAX_FAILING_CALLERS: usize = 8;

#[derive(Default)]
struct Stats {
    calls: u64,
    errors: u64,
    consecutive: u32,
    /// Whose inputs the current streak of failures came from. A plugin is quarantined only
    /// when the streak is long enough AND it failed on the daemon's own input or on inputs of
    /// at least two callers: one caller's crafted input (a command that makes the plugin trap
    /// or spin) then only fails that caller's requests (`fail_closed`: they are denied), and
    /// can never quarantine the plugin into denying everyone else.
    failing_callers: std::collections::BTreeSet<Caller>,
    quarantined: bool,
    latencies_us: VecDeque<u64>,
}

impl Stats {
    fn streak_is_general(&self) -> bool {
        self.failing_callers.contains(&Caller::Daemon) || self.failing_callers.len() >= 2
    }
}

struct Plugin {
    spec: PluginSpec,
    sha256: [u8; 32],
    signer: Option<String>,
    pre: Pre,
    grants: Arc<Grants>,
    live: Mutex<Option<Live>>,
    stats: Mutex<Stats>,
}

#[derive(Default)]
struct PluginSet {
    plugins: Vec<Arc<Plugin>>,
}

struct Metrics {
    calls: IntCounterVec,
    errors: IntCounterVec,
    latency: HistogramVec,
}

impl Metrics {
    fn new(registry: &Registry) -> Result<Metrics> {
        let calls = IntCounterVec::new(
            Opts::new("tether_plugin_calls_total", "Plugin calls, by plugin."),
            &["plugin"],
        )?;
        let errors = IntCounterVec::new(
            Opts::new(
                "tether_plugin_errors_total",
                "Failed plugin calls, by plugin and kind (timeout, memory, trap, output_too_large, instantiate, rejected, quarantined).",
            ),
            &["plugin", "kind"],
        )?;
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "tether_plugin_call_duration_seconds",
                "Wall time of one plugin call, including host imports.",
            )
            .buckets(vec![
                5e-6, 1e-5, 2e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 1e-2, 5e-2, 0.1, 0.5,
                1.0, 5.0,
            ]),
            &["plugin"],
        )?;
        registry.register(Box::new(calls.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        Ok(Metrics {
            calls,
            errors,
            latency,
        })
    }
}

/// Shuts the HTTP runtime down without blocking (safe to drop inside async code).
struct RtGuard(Option<tokio::runtime::Runtime>);
impl Drop for RtGuard {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// Stops the epoch ticker thread.
struct Ticker {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}
impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The plugin host. Cheap to share behind an `Arc`; all methods take `&self`.
pub struct PluginHost {
    engine: Engine,
    linker: Linker<StoreState>,
    set: RwLock<Arc<PluginSet>>,
    manifest_path: Option<PathBuf>,
    opts: HostOptions,
    metrics: Metrics,
    rt: RtGuard,
    reload_lock: Mutex<()>,
    _ticker: Ticker,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a plugin lock cannot leave it inconsistent in a way that matters:
    // the instance is recycled on the next error anyway.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn ticks(timeout_ms: u64) -> u64 {
    // The deadline fires between timeout and timeout + one tick.
    (timeout_ms as u128).div_ceil(TICK.as_millis()) as u64 + 1
}

impl PluginHost {
    /// A host with no plugins; load some with [`PluginHost::reload_from`].
    pub fn new(opts: HostOptions, registry: &Registry) -> Result<PluginHost> {
        Self::build(None, opts, registry)
    }

    /// Loads every plugin in the manifest file; [`PluginHost::reload`] re-reads the same file.
    pub fn load(manifest: &Path, opts: HostOptions, registry: &Registry) -> Result<PluginHost> {
        let host = Self::build(Some(manifest.to_path_buf()), opts, registry)?;
        host.reload()?;
        Ok(host)
    }

    fn build(
        manifest_path: Option<PathBuf>,
        opts: HostOptions,
        registry: &Registry,
    ) -> Result<PluginHost> {
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(MAX_INSTANCES)
            .total_core_instances(MAX_INSTANCES * 8)
            .total_memories(MAX_INSTANCES * 2)
            .total_tables(MAX_INSTANCES * 8)
            .max_memory_size(MAX_MEMORY_MB as usize * 1024 * 1024);
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            .max_wasm_stack(512 * 1024)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config).map_err(|e| Error::Engine(format!("{e:#}")))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)
            .and_then(|()| crate::store::deny_blocking(&mut linker))
            .and_then(|()| crate::abi::add_to_linker(&mut linker))
            .map_err(|e| Error::Engine(format!("linking host imports: {e:#}")))?;
        let metrics = Metrics::new(registry)?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("tether-plugin-http")
            .enable_io()
            .enable_time()
            .build()
            .map_err(|e| Error::Runtime(format!("http runtime: {e}")))?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            let weak = engine.weak();
            std::thread::Builder::new()
                .name("tether-plugin-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(TICK);
                        match weak.upgrade() {
                            Some(e) => e.increment_epoch(),
                            None => break,
                        }
                    }
                })
                .map_err(|e| Error::Runtime(format!("epoch ticker thread: {e}")))?
        };
        Ok(PluginHost {
            engine,
            linker,
            set: RwLock::new(Arc::new(PluginSet::default())),
            manifest_path,
            opts,
            metrics,
            rt: RtGuard(Some(rt)),
            reload_lock: Mutex::new(()),
            _ticker: Ticker {
                stop,
                thread: Some(thread),
            },
        })
    }

    /// Re-reads the manifest file given to [`PluginHost::load`] and swaps the plugin set
    /// atomically: if any plugin fails to load, the old set stays and the error names it.
    /// Returns the number of plugins now loaded.
    pub fn reload(&self) -> Result<usize> {
        let Some(path) = &self.manifest_path else {
            return Err(Error::Manifest {
                path: PathBuf::from("<none>"),
                message: "this host was created without a manifest file; use reload_from".into(),
            });
        };
        let manifest = Manifest::load(path)?;
        self.reload_from(&manifest)
    }

    /// Loads every plugin of `manifest` and swaps them in atomically (all or nothing).
    pub fn reload_from(&self, manifest: &Manifest) -> Result<usize> {
        let _one_at_a_time = lock(&self.reload_lock);
        let mut plugins = Vec::with_capacity(manifest.plugins.len());
        for spec in &manifest.plugins {
            plugins.push(Arc::new(self.load_plugin(manifest, spec)?));
        }
        let n = plugins.len();
        for p in &plugins {
            tracing::info!(
                plugin = %p.spec.name,
                kind = p.spec.kind.as_str(),
                sha256 = %hex::encode(p.sha256),
                signer = p.signer.as_deref().unwrap_or("unsigned"),
                abi = p.pre.version(),
                "plugin loaded"
            );
        }
        *self.set.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(PluginSet { plugins });
        Ok(n)
    }

    fn load_plugin(&self, manifest: &Manifest, spec: &PluginSpec) -> Result<Plugin> {
        let bytes = std::fs::read(&spec.path).map_err(|source| Error::Io {
            what: "plugin component",
            path: spec.path.clone(),
            source,
        })?;
        let verified = crate::signing::verify_bytes(
            &spec.path,
            &bytes,
            &manifest.trusted_keys,
            manifest.allow_unsigned,
        )?;
        let load_err = |e: wasmtime::Error| Error::Load {
            plugin: spec.name.clone(),
            message: format!("{e:#}"),
        };
        let component = self.compile(&spec.name, &bytes, &verified.sha256)?;
        let pre = self.linker.instantiate_pre(&component).map_err(load_err)?;
        let pre = Pre::new(spec.kind, pre).map_err(|e| Error::Load {
            plugin: spec.name.clone(),
            message: format!(
                "does not implement the {} world (kind = \"{}\"): {e:#}",
                spec.kind.as_str().replace('_', "-"),
                spec.kind.as_str()
            ),
        })?;
        let rt = self
            .rt
            .0
            .as_ref()
            .map(|r| r.handle().clone())
            .ok_or_else(|| Error::Runtime("http runtime is shut down".into()))?;
        let grants = Arc::new(Grants::new(spec.clone(), self.opts.secrets.clone(), rt)?);
        let plugin = Plugin {
            spec: spec.clone(),
            sha256: verified.sha256,
            signer: verified.signer,
            pre,
            grants,
            live: Mutex::new(None),
            stats: Mutex::new(Stats::default()),
        };
        // Instantiate now so a component that cannot start is refused at load time.
        let live = self.instantiate(&plugin).map_err(load_err)?;
        *lock(&plugin.live) = Some(live);
        Ok(plugin)
    }

    /// Compiles `bytes`, or loads the precompiled artifact cached under its content hash when
    /// its MAC verifies (see [`crate::cache`]); anything else in the cache is recompiled over.
    fn compile(&self, plugin: &str, bytes: &[u8], sha256: &[u8; 32]) -> Result<Component> {
        let load_err = |e: wasmtime::Error| Error::Load {
            plugin: plugin.to_string(),
            message: format!("{e:#}"),
        };
        let key = self.opts.cache_key.cache_key().filter(|k| k.len() >= 32);
        let (Some(dir), Some(key)) = (&self.opts.cache_dir, key) else {
            if self.opts.cache_dir.is_some() {
                tracing::warn!(
                    plugin,
                    "no plugin cache key available; compiling in memory without the cache"
                );
            }
            return Component::new(&self.engine, bytes).map_err(load_err);
        };
        let compat = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            self.engine.precompile_compatibility_hash().hash(&mut h);
            h.finish().to_be_bytes()
        };
        let file = dir.join(format!(
            "{}-{}.cwasm",
            hex::encode(sha256),
            hex::encode(compat)
        ));
        match crate::cache::open(&file, &key, sha256, &compat) {
            Ok(artifact) => match deserialize_authenticated(&self.engine, &artifact) {
                Ok(c) => return Ok(c),
                Err(e) => tracing::warn!(
                    plugin,
                    file = %file.display(),
                    "cached artifact unusable, recompiling: {e:#}"
                ),
            },
            Err(Unusable::Missing) => {}
            Err(why) => tracing::warn!(
                plugin,
                file = %file.display(),
                "cached artifact refused ({why}); recompiling from the signed component"
            ),
        }
        let artifact = self.engine.precompile_component(bytes).map_err(load_err)?;
        let component = deserialize_authenticated(&self.engine, &artifact).map_err(load_err)?;
        let io = |what, path: &Path| {
            let path = path.to_path_buf();
            move |source| Error::Io { what, path, source }
        };
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io("plugin cache dir", dir))?;
        }
        if let Some(entry) = crate::cache::seal(&key, sha256, &compat, &artifact) {
            tether_durable::write_atomic(&file, &entry, 0o600)
                .map_err(|e| io("plugin cache file", &file)(e.source))?;
        }
        Ok(component)
    }

    fn instantiate(&self, p: &Plugin) -> wasmtime::Result<Live> {
        let mem = p.spec.limits.memory_mb as usize * 1024 * 1024;
        let mut store = Store::new(&self.engine, StoreState::new(p.grants.clone(), mem));
        store.limiter(|s| &mut s.limiter);
        store.epoch_deadline_trap();
        store.set_epoch_deadline(ticks(p.spec.limits.timeout_ms));
        store.data_mut().deadline =
            Instant::now() + Duration::from_millis(p.spec.limits.timeout_ms);
        let bindings = p.pre.instantiate(&mut store)?;
        Ok(Live { store, bindings })
    }

    fn snapshot(&self) -> Arc<PluginSet> {
        self.set.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// One call into one plugin, contained: never panics, never blocks past the deadline
    /// (plus one epoch tick), recycles the instance after a failure.
    fn invoke<T>(
        &self,
        p: &Plugin,
        caller: &Caller,
        call: impl FnOnce(&Bindings, &mut Store<StoreState>) -> Called<T>,
    ) -> Result<T, PluginError> {
        let name = p.spec.name.as_str();
        if lock(&p.stats).quarantined {
            self.metrics
                .errors
                .with_label_values(&[name, ErrorKind::Quarantined.as_str()])
                .inc();
            return Err(PluginError {
                kind: ErrorKind::Quarantined,
                message: format!(
                    "plugin {name} is quarantined; fix it and run `tether plugin reload`"
                ),
            });
        }
        let start = Instant::now();
        let limits = p.spec.limits;
        let result = {
            let mut slot = lock(&p.live);
            if slot.is_none() {
                match self.instantiate(p) {
                    Ok(l) => *slot = Some(l),
                    Err(e) => {
                        return self.finish(
                            p,
                            caller,
                            start,
                            Err(PluginError {
                                kind: ErrorKind::Instantiate,
                                message: short(&format!("{e:#}")),
                            }),
                        );
                    }
                }
            }
            let r = match slot.as_mut() {
                None => Err(PluginError {
                    kind: ErrorKind::Instantiate,
                    message: "no instance".into(),
                }),
                Some(live) => {
                    let data = live.store.data_mut();
                    data.deadline = start + Duration::from_millis(limits.timeout_ms);
                    data.limiter.hit = false;
                    live.store.set_epoch_deadline(ticks(limits.timeout_ms));
                    let called = call(&live.bindings, &mut live.store);
                    live.store.data_mut().tcp_close_all();
                    match called {
                        Ok(Some((v, n))) if n <= limits.max_output_bytes => Ok(v),
                        Ok(Some((_, n))) => Err(PluginError {
                            kind: ErrorKind::OutputTooLarge,
                            message: format!(
                                "result of {n} bytes exceeds max_output_bytes = {}",
                                limits.max_output_bytes
                            ),
                        }),
                        Ok(None) => Err(PluginError {
                            kind: ErrorKind::Trap,
                            message: "host error: plugin world does not match its kind".into(),
                        }),
                        Err(e) => Err(classify(&e, live.store.data().limiter.hit, limits)),
                    }
                }
            };
            if r.is_err() {
                // Recycle: a trapped instance may be in any state; a huge result left a big heap.
                *slot = None;
            }
            r
        };
        self.finish(p, caller, start, result)
    }

    fn finish<T>(
        &self,
        p: &Plugin,
        caller: &Caller,
        start: Instant,
        result: Result<T, PluginError>,
    ) -> Result<T, PluginError> {
        let elapsed = start.elapsed();
        let name = p.spec.name.as_str();
        self.metrics.calls.with_label_values(&[name]).inc();
        self.metrics
            .latency
            .with_label_values(&[name])
            .observe(elapsed.as_secs_f64());
        let mut quarantine = None;
        let mut failed = None;
        {
            let mut st = lock(&p.stats);
            st.calls += 1;
            if st.latencies_us.len() == LATENCY_SAMPLES {
                st.latencies_us.pop_front();
            }
            st.latencies_us.push_back(elapsed.as_micros() as u64);
            match &result {
                Ok(_) => {
                    st.consecutive = 0;
                    st.failing_callers.clear();
                }
                Err(e) => {
                    st.errors += 1;
                    self.metrics
                        .errors
                        .with_label_values(&[name, e.kind.as_str()])
                        .inc();
                    tracing::warn!(
                        plugin = name,
                        kind = e.kind.as_str(),
                        "plugin call failed: {}",
                        e.message
                    );
                    if e.kind != ErrorKind::Rejected {
                        st.consecutive += 1;
                        if st.failing_callers.len() < MAX_FAILING_CALLERS {
                            st.failing_callers.insert(caller.clone());
                        }
                        failed = Some(Failed {
                            plugin: name.to_owned(),
                            kind: p.spec.kind,
                            consecutive: st.consecutive,
                            error: e.clone(),
                        });
                        if st.consecutive >= self.opts.quarantine_after
                            && st.streak_is_general()
                            && !st.quarantined
                        {
                            st.quarantined = true;
                            quarantine = Some((st.consecutive, e.clone()));
                        }
                    }
                }
            }
        }
        if let Some(f) = failed {
            self.opts.events.failed(&f);
        }
        if let Some((n, last_error)) = quarantine {
            *lock(&p.live) = None;
            tracing::error!(
                plugin = name,
                "plugin quarantined after {n} consecutive failures"
            );
            self.opts.alerts.raise(Alert::new(
                "plugin_quarantined",
                Severity::Warning,
                format!(
                    "plugin {name} quarantined after {n} consecutive failures (last: {}); fix it and run `tether plugin reload`",
                    last_error.kind
                ),
            ));
            self.opts.events.quarantined(&Quarantined {
                plugin: name.to_owned(),
                kind: p.spec.kind,
                failures: n,
                last_error,
            });
        }
        result
    }

    /// Asks every policy plugin, in manifest order, about one request. A plugin whose call
    /// fails votes its `on_error` fallback (`fail_closed` → `Deny`, otherwise `Abstain`) with
    /// [`PluginVote::error`] set. Combine the votes with the regex decision through
    /// [`tether_policy::Decision::apply_votes`].
    ///
    /// A request over the hard input limits ([`tether_policy::MAX_INPUT_BYTES`] per field)
    /// never reaches a plugin: every policy plugin votes `Deny` without being called, and no
    /// failure is counted.
    pub fn evaluate(&self, req: &Request) -> Vec<PluginVote> {
        self.evaluate_parsed(req, None)
    }

    /// Like [`evaluate`](Self::evaluate); `parse` is the policy in force's parser, so 0.2.0
    /// guests see the command split with its `[[policy.wrappers]]` (`None`: built-ins only).
    pub fn evaluate_parsed(
        &self,
        req: &Request,
        parse: Option<tether_policy::CommandParser<'_>>,
    ) -> Vec<PluginVote> {
        let set = self.snapshot();
        let over = over_hard_limits(req);
        let caller = Caller::User(req.user.clone());
        set.plugins
            .iter()
            .filter(|p| p.spec.kind == PluginKind::Policy)
            .map(|p| {
                if let Some(why) = &over {
                    return PluginVote {
                        plugin: p.spec.name.clone(),
                        vote: Vote::Deny(format!("{why}; not passed to policy plugins")),
                        may_override: false,
                        error: None,
                    };
                }
                let (vote, error) = match self.invoke(p, &caller, |b, s| b.evaluate(s, req, parse))
                {
                    Ok(v) => (v, None),
                    Err(e) => {
                        let fallback = match p.spec.on_error {
                            OnError::FailClosed => Vote::Deny(format!(
                                "policy plugin {} failed ({}); failing closed",
                                p.spec.name, e.kind
                            )),
                            OnError::FailOpen | OnError::DropCounted => Vote::Abstain,
                        };
                        (fallback, Some(e.into()))
                    }
                };
                PluginVote {
                    plugin: p.spec.name.clone(),
                    vote,
                    may_override: p.spec.may_override,
                    error,
                }
            })
            .collect()
    }

    /// Delivers one alert to every alert-sink plugin.
    pub fn deliver_alert(&self, alert: &Alert) -> Vec<Delivery> {
        self.deliver(PluginKind::AlertSink, |b, s| b.deliver_alert(s, alert))
    }

    /// Delivers a batch of audit records to every audit-sink plugin.
    pub fn deliver_audit_batch(&self, events: &[AuditRecord]) -> Vec<Delivery> {
        self.deliver(PluginKind::AuditSink, |b, s| b.deliver_audit(s, events))
    }

    /// Delivers one alert to the alert-sink plugin `name` (the alerts crate queues and retries
    /// per sink). During the call the guest reads the alert's structured fields as one JSON
    /// object through `config.get("tether.alert.fields")`. `None` when no alert-sink plugin of
    /// that name is loaded.
    pub fn deliver_alert_to(&self, name: &str, alert: &Alert) -> Option<Result<(), PluginError>> {
        let fields = serde_json::to_string(&alert.fields).unwrap_or_else(|_| "{}".into());
        let context = vec![("tether.alert.fields".to_owned(), fields)];
        self.deliver_to(PluginKind::AlertSink, name, context, |b, s| {
            b.deliver_alert(s, alert)
        })
    }

    /// Delivers a batch of audit records to the audit-sink plugin `name`. During the call the
    /// guest reads the batch's proof of completeness through `config.get`:
    /// `tether.batch.first_seq`, `tether.batch.last_seq` and `tether.batch.last_hash` (the chain
    /// hash of the last record). `None` when no audit-sink plugin of that name is loaded.
    pub fn deliver_audit_batch_to(
        &self,
        name: &str,
        events: &[AuditRecord],
        last_hash: &str,
    ) -> Option<Result<(), PluginError>> {
        let seq = |e: Option<&AuditRecord>| e.map_or(0, |e| e.seq).to_string();
        let context = vec![
            ("tether.batch.first_seq".to_owned(), seq(events.first())),
            ("tether.batch.last_seq".to_owned(), seq(events.last())),
            ("tether.batch.last_hash".to_owned(), last_hash.to_owned()),
        ];
        self.deliver_to(PluginKind::AuditSink, name, context, |b, s| {
            b.deliver_audit(s, events)
        })
    }

    /// Calls the sink plugin `name` of `kind` with `context` readable under its reserved
    /// `tether.` config keys for the duration of the call only.
    fn deliver_to(
        &self,
        kind: PluginKind,
        name: &str,
        context: Vec<(String, String)>,
        call: impl Fn(&Bindings, &mut Store<StoreState>) -> Called<Result<(), String>>,
    ) -> Option<Result<(), PluginError>> {
        let set = self.snapshot();
        let p = set
            .plugins
            .iter()
            .find(|p| p.spec.kind == kind && p.spec.name == name)?;
        Some(
            self.invoke_sink(p, &|b: &Bindings, s: &mut Store<StoreState>| {
                s.data_mut().call_context = context.clone();
                let r = call(b, s);
                s.data_mut().call_context.clear();
                r
            }),
        )
    }

    /// The names of the loaded plugins of `kind`, in manifest order.
    pub fn names(&self, kind: PluginKind) -> Vec<String> {
        self.snapshot()
            .plugins
            .iter()
            .filter(|p| p.spec.kind == kind)
            .map(|p| p.spec.name.clone())
            .collect()
    }

    fn deliver(
        &self,
        kind: PluginKind,
        call: impl Fn(&Bindings, &mut Store<StoreState>) -> Called<Result<(), String>>,
    ) -> Vec<Delivery> {
        let set = self.snapshot();
        set.plugins
            .iter()
            .filter(|p| p.spec.kind == kind)
            .map(|p| {
                let outcome = self.invoke_sink(p, &call);
                Delivery {
                    plugin: p.spec.name.clone(),
                    outcome,
                }
            })
            .collect()
    }

    fn invoke_sink(
        &self,
        p: &Plugin,
        call: &impl Fn(&Bindings, &mut Store<StoreState>) -> Called<Result<(), String>>,
    ) -> Result<(), PluginError> {
        // A sink that runs fine but reports a failed delivery is `rejected`, counted, and
        // does not count toward quarantine.
        let start = Instant::now();
        match self.invoke(p, &Caller::Daemon, call) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(msg)) => {
                let name = p.spec.name.as_str();
                self.metrics
                    .errors
                    .with_label_values(&[name, ErrorKind::Rejected.as_str()])
                    .inc();
                lock(&p.stats).errors += 1;
                tracing::warn!(
                    plugin = name,
                    elapsed_us = start.elapsed().as_micros() as u64,
                    "sink rejected delivery: {}",
                    short(&msg)
                );
                Err(PluginError {
                    kind: ErrorKind::Rejected,
                    message: short(&msg),
                })
            }
            Err(e) => Err(e),
        }
    }

    /// Asks the enrollment hooks about one enrollment, in manifest order. Each hook sees the
    /// invite's tags plus the tags approved by the hooks before it (a later tag of the same key
    /// replaces an earlier one); the first effective `Deny` stops the round, so the hooks after
    /// it are not called. A failed call counts as its `on_error` decision (`fail_closed`, the
    /// default for enrollment hooks, denies).
    pub fn on_enroll(&self, req: &EnrollRequest) -> Vec<EnrollVote> {
        let set = self.snapshot();
        let mut req = req.clone();
        let mut votes = Vec::new();
        for p in set
            .plugins
            .iter()
            .filter(|p| p.spec.kind == PluginKind::EnrollmentHook)
        {
            let caller = Caller::User(req.name.clone());
            let outcome = self.invoke(p, &caller, |b, s| b.on_enroll(s, &req));
            let effective = match &outcome {
                Ok(d) => d.clone(),
                Err(e) => match p.spec.on_error {
                    OnError::FailClosed => EnrollDecision::Deny(format!(
                        "enrollment plugin {} failed ({}); failing closed",
                        p.spec.name, e.kind
                    )),
                    OnError::FailOpen | OnError::DropCounted => EnrollDecision::Approve(Vec::new()),
                },
            };
            let denied = matches!(effective, EnrollDecision::Deny(_));
            if let EnrollDecision::Approve(tags) = &effective {
                for (k, v) in tags {
                    req.tags.retain(|(old, _)| old != k);
                    req.tags.push((k.clone(), v.clone()));
                }
            }
            votes.push(EnrollVote {
                plugin: p.spec.name.clone(),
                outcome,
                effective,
            });
            if denied {
                break;
            }
        }
        votes
    }

    /// Whether any plugin of `kind` is loaded (skip building requests when none is).
    pub fn has(&self, kind: PluginKind) -> bool {
        self.snapshot().plugins.iter().any(|p| p.spec.kind == kind)
    }

    /// The loaded plugins with their counters (`tether plugin list`).
    pub fn list(&self) -> Vec<PluginInfo> {
        use std::sync::atomic::Ordering::Relaxed;
        self.snapshot()
            .plugins
            .iter()
            .map(|p| {
                let st = lock(&p.stats);
                let mut l: Vec<u64> = st.latencies_us.iter().copied().collect();
                l.sort_unstable();
                let pct = |q: f64| {
                    (!l.is_empty())
                        .then(|| l[((l.len() as f64 * q).ceil() as usize).clamp(1, l.len()) - 1])
                };
                PluginInfo {
                    name: p.spec.name.clone(),
                    kind: p.spec.kind,
                    sha256: hex::encode(p.sha256),
                    signer: p.signer.clone(),
                    calls: st.calls,
                    errors: st.errors,
                    p99_us: pct(0.99),
                    p50_us: pct(0.50),
                    quarantined: st.quarantined,
                    secret_denials: p.grants.secret_denials.load(Relaxed),
                    http_denials: p.grants.http_denials.load(Relaxed),
                }
            })
            .collect()
    }
}

/// The policy's seam: [`PluginHost::evaluate`]. Lets the host be handed straight to
/// [`tether_policy::Policy::check`] or [`tether_policy::run_fixtures_with`].
impl tether_policy::PolicyHooks for PluginHost {
    fn vote(&self, req: &Request) -> Vec<PluginVote> {
        self.evaluate(req)
    }

    fn vote_parsed(
        &self,
        req: &Request,
        parse: tether_policy::CommandParser<'_>,
    ) -> Vec<PluginVote> {
        self.evaluate_parsed(req, Some(parse))
    }
}

/// Why `req` is over the hard input limits (a field longer than
/// [`tether_policy::MAX_INPUT_BYTES`]), if it is.
fn over_hard_limits(req: &Request) -> Option<String> {
    let limit = tether_policy::MAX_INPUT_BYTES;
    [
        ("command", req.command.as_deref()),
        ("path", req.path.as_deref()),
        ("ticket", req.ticket.as_deref()),
        ("user", Some(req.user.as_str())),
    ]
    .into_iter()
    .find_map(|(what, v)| {
        v.filter(|v| v.len() > limit).map(|v| {
            format!(
                "the {what} is {} bytes, over the {limit}-byte limit",
                v.len()
            )
        })
    })
}

fn short(s: &str) -> String {
    let mut end = s.len().min(512);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

fn classify(e: &wasmtime::Error, memory_hit: bool, limits: crate::manifest::Limits) -> PluginError {
    let trap = e.downcast_ref::<wasmtime::Trap>();
    if trap == Some(&wasmtime::Trap::Interrupt) {
        return PluginError {
            kind: ErrorKind::Timeout,
            message: format!("call exceeded timeout_ms = {}", limits.timeout_ms),
        };
    }
    if memory_hit {
        return PluginError {
            kind: ErrorKind::Memory,
            message: format!(
                "memory growth beyond memory_mb = {} refused",
                limits.memory_mb
            ),
        };
    }
    PluginError {
        kind: ErrorKind::Trap,
        message: match trap {
            Some(t) => t.to_string(),
            None => short(&format!("{e:#}")),
        },
    }
}

/// Turns an artifact this host compiled (just now, or read back from a cache entry whose MAC
/// verified) into a component.
#[allow(unsafe_code)]
fn deserialize_authenticated(engine: &Engine, artifact: &[u8]) -> wasmtime::Result<Component> {
    // SAFETY: wasmtime requires that the bytes were produced by `Engine::precompile_component`
    // of a compatible engine. They are either the output of that call in this process, or a
    // cache entry whose HMAC (key from the vault, never on disk beside the cache) over the
    // signed component's SHA-256, the engine compatibility hash and these exact bytes verified
    // after the whole file was read into memory, so the bytes are ones this daemon compiled
    // and cannot change between the check and this call.
    unsafe { Component::deserialize(engine, artifact) }
}
