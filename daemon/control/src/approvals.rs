//! The approvals core ([`tether_approvals`]) in the daemon: one lock around the records, every
//! change audited before it takes effect and persisted through the [`ApprovalStore`], the
//! just-in-time grants kept where role checks can read them without waiting, and a sweeper that
//! expires what is due (`approval.expired`, `access.expired`) without anyone acting.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use hyper::StatusCode;
use serde_json::json;
use tether_api::{AllowanceInfo, ApprovalInfo, ApprovalPerson, QuorumInfo, ReviewInfo, RoleGrant};
use tether_approvals::{
    ApprovalError, ApprovalStore, Approvals, Change, FileStore, Record, Settings, State, Subject,
};
use tether_audit::Actor;
use tether_config::ApprovalsSection;
use tether_model::{Alert, Role, Severity};
use tokio_util::sync::CancellationToken;

use crate::AppState;
use crate::http::Fail;

/// Unix time in milliseconds.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The engine settings `[approvals]` means.
pub fn settings(section: &ApprovalsSection) -> Settings {
    Settings {
        expiry_ms: section.expiry_secs() * 1000,
        quorum: section
            .quorum
            .iter()
            .map(|q| tether_approvals::QuorumRule {
                role: q.role,
                count: q.count,
            })
            .collect(),
        max_pending_per_caller: section.max_pending_per_caller,
        max_pending: section.max_pending,
        max_allowance_ms: section.max_allowance_secs() * 1000,
        max_access_ms: section.max_access_secs() * 1000,
        ..Settings::default()
    }
}

/// Approval records, their store, and the role grants in force.
pub struct ApprovalService {
    engine: tokio::sync::Mutex<Approvals>,
    store: Arc<dyn ApprovalStore>,
    /// (uid, role, lapses at ms) of every grant in force, for [`ApprovalService::granted_role`].
    grants: RwLock<Vec<(u32, Role, u64)>>,
    /// The grants as the status route shows them.
    grant_list: RwLock<Vec<RoleGrant>>,
}

impl std::fmt::Debug for ApprovalService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApprovalService").finish_non_exhaustive()
    }
}

impl ApprovalService {
    /// Opens the file store in `state_dir/approvals` and loads every record (a record that
    /// cannot be read is skipped with a warning: it grants nothing).
    pub fn open(
        section: &ApprovalsSection,
        state_dir: &std::path::Path,
    ) -> Result<ApprovalService, ApprovalError> {
        let store = FileStore::open(state_dir.join("approvals"))?;
        Self::with_store(section, Arc::new(store))
    }

    /// Loads every record from `store`.
    pub fn with_store(
        section: &ApprovalsSection,
        store: Arc<dyn ApprovalStore>,
    ) -> Result<ApprovalService, ApprovalError> {
        let (records, skipped) = store.load()?;
        for s in skipped {
            tracing::warn!("skipped an approval record: {s}");
        }
        let engine = Approvals::new(settings(section), records);
        let mut service = ApprovalService {
            grants: RwLock::new(Vec::new()),
            grant_list: RwLock::new(Vec::new()),
            engine: tokio::sync::Mutex::new(Approvals::default()),
            store,
        };
        service.refresh(&engine);
        service.engine = tokio::sync::Mutex::new(engine);
        Ok(service)
    }

    fn refresh(&self, engine: &Approvals) {
        let now = now_ms();
        let mut list: Vec<RoleGrant> = Vec::new();
        let mut grants = Vec::new();
        for r in engine.active_grants(now) {
            if let (Subject::Access { role, .. }, Some(until)) = (&r.subject, r.grant_expires_at_ms)
            {
                grants.push((r.requester.uid, *role, until));
                list.push(RoleGrant {
                    id: r.id.clone(),
                    holder: person(&r.requester),
                    role: *role,
                    expires_at: until / 1000,
                });
            }
        }
        list.sort_by_key(|g| g.expires_at);
        if let Ok(mut g) = self.grants.write() {
            *g = grants;
        }
        if let Ok(mut l) = self.grant_list.write() {
            *l = list;
        }
    }

    /// The strongest just-in-time role `uid` holds now (checked against the clock on every
    /// call, so a grant is gone at its expiry even before the sweeper records it).
    pub fn granted_role(&self, uid: u32) -> Option<Role> {
        let now = now_ms();
        let g = match self.grants.read() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        g.iter()
            .filter(|(u, _, until)| *u == uid && now < *until)
            .map(|(_, r, _)| *r)
            .max()
    }

    /// Grants in force now.
    pub fn grant_list(&self) -> Vec<RoleGrant> {
        let now = now_ms() / 1000;
        let l = match self.grant_list.read() {
            Ok(l) => l,
            Err(p) => p.into_inner(),
        };
        l.iter().filter(|g| now < g.expires_at).cloned().collect()
    }

    /// Reads the records under the lock.
    pub(crate) async fn read<T>(&self, f: impl FnOnce(&Approvals) -> T) -> T {
        let engine = self.engine.lock().await;
        f(&engine)
    }

    /// Runs `op` on a copy of the records with the settings of `config`; audits every change
    /// it made (as `actor`), persists the changed records, then makes the copy current. A
    /// refusal, a failed audit write or a failed store write leaves everything as it was.
    pub(crate) async fn transact<T>(
        &self,
        state: &AppState,
        actor: &Actor,
        op: impl FnOnce(&mut Approvals) -> Result<(Vec<Change>, T), ApprovalError>,
    ) -> Result<(Vec<Change>, T), Fail> {
        let mut engine = self.engine.lock().await;
        let mut next = engine.clone();
        next.set_settings(settings(&state.config().approvals));
        let (changes, value) = op(&mut next).map_err(fail)?;
        for c in &changes {
            state
                .audit_or_refuse(c.event, actor.clone(), None, audit_data(&c.record))
                .await?;
        }
        self.persist(
            changes.iter().map(|c| c.record.clone()).collect(),
            Vec::new(),
        )
        .await
        .map_err(|e| {
            tracing::error!("could not persist an approval change: {e}");
            fail(e)
        })?;
        *engine = next;
        self.refresh(&engine);
        Ok((changes, value))
    }

    /// Writes `records` and deletes `gone` on a blocking thread (each write is fsynced).
    async fn persist(&self, records: Vec<Record>, gone: Vec<String>) -> Result<(), ApprovalError> {
        let store = Arc::clone(&self.store);
        tokio::task::spawn_blocking(move || {
            for r in &records {
                store.put(r)?;
            }
            for id in &gone {
                store.remove(id)?;
            }
            Ok(())
        })
        .await
        .map_err(|e| ApprovalError::Store {
            path: "approvals".to_owned(),
            reason: format!("the writer panicked: {e}"),
        })?
    }

    /// Expires what is due and forgets old final records; audited as the daemon.
    async fn sweep(&self, state: &AppState) {
        let now = now_ms();
        let mut engine = self.engine.lock().await;
        if !engine.due(now) {
            // Grants can lapse between sweeps; keep the snapshot tidy anyway.
            return;
        }
        let mut next = engine.clone();
        let (changes, gone) = next.sweep(now);
        let actor = crate::audit::daemon_actor();
        for c in &changes {
            if let Err(e) = state
                .audit(c.event, actor.clone(), None, audit_data(&c.record))
                .await
            {
                tracing::error!(
                    "could not audit {} of {}: {e}; retrying later",
                    c.event,
                    c.record.id
                );
                return;
            }
        }
        let records = changes.iter().map(|c| c.record.clone()).collect();
        if let Err(e) = self.persist(records, gone).await {
            tracing::error!("could not persist expired approvals: {e}");
        }
        *engine = next;
        self.refresh(&engine);
    }
}

/// Expires due approvals and grants every 250 ms until `shutdown`.
pub fn spawn_sweeper(
    state: Arc<AppState>,
    shutdown: CancellationToken,
) -> Option<tokio::task::JoinHandle<()>> {
    state.approvals.as_ref()?;
    Some(tokio::spawn(async move {
        let Some(service) = state.approvals.clone() else {
            return;
        };
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
            service.sweep(&state).await;
        }
    }))
}

/// The audit record's data for a changed record (the last review is the one just made).
pub(crate) fn audit_data(r: &Record) -> serde_json::Value {
    let mut data = json!({
        "id": r.id,
        "kind": r.subject.kind(),
        "state": r.state.as_str(),
        "requester": {"uid": r.requester.uid, "user": r.requester.name},
        "reason": r.reason,
        "binding": r.binding,
        "expires_at_ms": r.expires_at_ms,
    });
    match &r.subject {
        Subject::Exec { command, targets } => {
            data["command"] = json!(command);
            data["hosts"] = json!(targets);
        }
        Subject::Access {
            role,
            duration_secs,
        } => {
            data["role"] = json!(role);
            data["duration_secs"] = json!(duration_secs);
            if let Some(t) = r.grant_expires_at_ms {
                data["grant_expires_at_ms"] = json!(t);
            }
        }
    }
    if let Some(v) = r.reviews.last() {
        data["review"] = json!({
            "reviewer": {"uid": v.reviewer.uid, "user": v.reviewer.name},
            "role": v.role,
            "decision": if v.approve { "approve" } else { "deny" },
            "comment": v.comment,
        });
    }
    if let Some(a) = &r.allowance {
        data["allowance"] =
            json!({"pattern": a.pattern, "hosts": a.hosts, "expires_at_ms": a.expires_at_ms});
    }
    data
}

/// Raises `approval_requested` for a new request.
pub(crate) fn alert_requested(state: &AppState, r: &Record) {
    let mut alert = Alert::new(
        "approval_requested",
        Severity::Warning,
        format!(
            "{} asks for approval of {} ({}); review with `tether approvals list`",
            r.requester.name,
            r.subject.describe(),
            r.id
        ),
    )
    .field("id", r.id.clone())
    .field("requester", r.requester.name.clone())
    .field("kind", r.subject.kind());
    if let Subject::Exec { targets, .. } = &r.subject {
        alert = alert.field("hosts", targets.join(","));
    }
    state.alerts.raise(alert);
}

fn person(p: &tether_approvals::Principal) -> ApprovalPerson {
    ApprovalPerson {
        uid: p.uid,
        user: p.name.clone(),
    }
}

/// The wire form of a record.
pub(crate) fn info(r: &Record) -> ApprovalInfo {
    let (command, hosts, role, duration_secs) = match &r.subject {
        Subject::Exec { command, targets } => (Some(command.clone()), targets.clone(), None, None),
        Subject::Access {
            role,
            duration_secs,
        } => (None, Vec::new(), Some(*role), Some(*duration_secs)),
    };
    let approving: Vec<Role> = r
        .reviews
        .iter()
        .filter(|v| v.approve)
        .map(|v| v.role)
        .collect();
    ApprovalInfo {
        id: r.id.clone(),
        kind: r.subject.kind().to_owned(),
        state: r.state.as_str().to_owned(),
        requester: person(&r.requester),
        command,
        hosts,
        role,
        duration_secs,
        reason: r.reason.clone(),
        binding: r.binding.clone(),
        created_at: r.created_at_ms / 1000,
        expires_at: r.expires_at_ms / 1000,
        quorum: r
            .quorum
            .iter()
            .map(|q| QuorumInfo {
                role: q.role,
                count: q.count,
            })
            .collect(),
        quorum_met: tether_approvals::quorum::met(&r.quorum, &approving),
        reviews: r
            .reviews
            .iter()
            .map(|v| ReviewInfo {
                reviewer: person(&v.reviewer),
                role: v.role,
                decision: if v.approve { "approve" } else { "deny" }.to_owned(),
                comment: v.comment.clone(),
                allowance: v.allowance.as_ref().map(|a| AllowanceInfo {
                    pattern: a.pattern.clone(),
                    hosts: a.hosts.clone(),
                    expires_at: a.ttl_secs,
                }),
                at: v.at_ms / 1000,
            })
            .collect(),
        allowance: r.allowance.as_ref().map(|a| AllowanceInfo {
            pattern: a.pattern.clone(),
            hosts: a.hosts.clone(),
            expires_at: a.expires_at_ms / 1000,
        }),
        used_at: r.used_at_ms.map(|t| t / 1000),
        grant_expires_at: r.grant_expires_at_ms.map(|t| t / 1000),
    }
}

/// Whether `r` is in `state` (a name; unknown names were refused before).
pub(crate) fn in_state(r: &Record, state: Option<State>) -> bool {
    state.is_none_or(|s| r.state == s)
}

/// The control API's answer for a refused approval operation.
pub(crate) fn fail(e: ApprovalError) -> Fail {
    let (status, code, hint) = match &e {
        ApprovalError::NotFound { .. } => (
            StatusCode::NOT_FOUND,
            "approval_not_found",
            "`tether approvals list` shows the requests you may see",
        ),
        ApprovalError::BadId { .. } => (
            StatusCode::BAD_REQUEST,
            "bad_approval_id",
            "copy the id from `tether approvals list`",
        ),
        ApprovalError::Invalid { .. } => (
            StatusCode::BAD_REQUEST,
            "invalid_approval",
            "fix the named field and retry",
        ),
        ApprovalError::SelfApproval { .. } => (
            StatusCode::FORBIDDEN,
            "self_approval",
            "ask another operator (a different uid) to review it",
        ),
        ApprovalError::NotEligible { .. } => (
            StatusCode::FORBIDDEN,
            "not_eligible",
            "ask someone holding the named role (or an admin)",
        ),
        ApprovalError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden", ""),
        ApprovalError::Mismatch { .. } => (
            StatusCode::FORBIDDEN,
            "approval_mismatch",
            "run exactly what was approved, or run without --approval to ask for a new approval",
        ),
        ApprovalError::AlreadyReviewed { .. } => (
            StatusCode::CONFLICT,
            "already_reviewed",
            "the quorum needs other reviewers",
        ),
        ApprovalError::WrongState { .. } => (
            StatusCode::CONFLICT,
            "approval_state",
            "`tether approvals list` shows its state; a used or decided request needs a new one",
        ),
        ApprovalError::Expired { .. } => (
            StatusCode::CONFLICT,
            "approval_expired",
            "run the command again to ask for a new approval",
        ),
        ApprovalError::TooManyPending { .. } => (
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_pending",
            "`tether approvals list --state pending` shows them; withdraw some with `tether approvals deny ID`",
        ),
        _ => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "approval_store",
            "check state_dir/approvals (space, permissions), then retry",
        ),
    };
    Fail::new(status, code, e.to_string(), hint)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tether_approvals::{Principal, Requested};

    fn state() -> AppState {
        AppState::new(
            tether_config::Config::default(),
            crate::state::ConfigSource::default(),
            prometheus::Registry::new(),
        )
        .unwrap()
    }

    fn actor() -> Actor {
        crate::audit::daemon_actor()
    }

    #[tokio::test]
    async fn changes_persist_and_grants_are_read_back_after_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let section = ApprovalsSection::default();
        let svc = ApprovalService::open(&section, dir.path()).unwrap();
        let st = state();
        let alice = Principal {
            uid: 4244,
            name: "alice".into(),
        };
        let subject = Subject::Access {
            role: Role::Operator,
            duration_secs: 3600,
        };
        let id = tether_approvals::new_id().unwrap();
        let (changes, ()) = svc
            .transact(&st, &actor(), |e| {
                match e.request(alice, subject, "on call", id.clone(), now_ms())? {
                    Requested::New(c) => Ok((vec![c], ())),
                    Requested::Existing(_) => Ok((Vec::new(), ())),
                }
            })
            .await
            .unwrap();
        assert_eq!(changes[0].event, "access.requested");
        assert!(dir.path().join(format!("approvals/{id}.json")).is_file());
        // A refused change leaves everything as it was.
        let refused = svc
            .transact(&st, &actor(), |e| {
                let bob = Principal {
                    uid: 4244,
                    name: "alice".into(),
                };
                Ok((
                    vec![e.approve(&id, bob, Role::Admin, None, None, now_ms())?],
                    (),
                ))
            })
            .await;
        assert_eq!(refused.err().unwrap().error.code, "self_approval");
        assert_eq!(svc.granted_role(4244), None);
        svc.transact(&st, &actor(), |e| {
            let root = Principal {
                uid: 0,
                name: "root".into(),
            };
            Ok((
                vec![e.approve(&id, root, Role::Admin, None, None, now_ms())?],
                (),
            ))
        })
        .await
        .unwrap();
        assert_eq!(svc.granted_role(4244), Some(Role::Operator));
        assert_eq!(svc.grant_list().len(), 1);
        // A restart reads the grant back.
        let again = ApprovalService::open(&section, dir.path()).unwrap();
        assert_eq!(again.granted_role(4244), Some(Role::Operator));
        assert_eq!(again.granted_role(4242), None);
    }
}
