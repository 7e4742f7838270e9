//! [`Approvals`]: the state machine over every record, sans-IO. Each operation takes `now`
//! (unix milliseconds) and returns the [`Change`]s to audit and persist; a refused operation
//! changes nothing.

use std::collections::BTreeMap;

use regex::Regex;
use tether_model::Role;

use crate::record::{binding, subject_key, valid_id};
use crate::{
    Allowance, AllowanceSpec, ApprovalError, Principal, QuorumRule, Record, Review, State, Subject,
    quorum,
};

/// Longest reason or comment, bytes.
pub const MAX_TEXT_BYTES: usize = 1024;
/// Longest allowance pattern, bytes.
pub const MAX_PATTERN_BYTES: usize = 1024;

/// Limits and defaults (from `[approvals]` of the daemon's config).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// How long a request may wait for its decision and (exec) its single use, milliseconds.
    pub expiry_ms: u64,
    /// The quorum for exec approvals (every condition together).
    pub quorum: Vec<QuorumRule>,
    /// Most pending requests per requester uid.
    pub max_pending_per_caller: usize,
    /// Most pending requests in all.
    pub max_pending: usize,
    /// Longest allowance a reviewer may grant, milliseconds.
    pub max_allowance_ms: u64,
    /// Longest just-in-time role grant, milliseconds.
    pub max_access_ms: u64,
    /// How long final records are kept for `approvals list`, milliseconds.
    pub retain_ms: u64,
    /// Most final records kept (the oldest go first beyond it), so withdrawn or denied requests
    /// can't pile up within the retention.
    pub max_final: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            expiry_ms: 15 * 60 * 1000,
            quorum: vec![QuorumRule {
                role: Role::Operator,
                count: 1,
            }],
            max_pending_per_caller: 20,
            max_pending: 1000,
            max_allowance_ms: 8 * 3600 * 1000,
            max_access_ms: 12 * 3600 * 1000,
            retain_ms: 24 * 3600 * 1000,
            max_final: 10_000,
        }
    }
}

/// One record that changed, with the audit event type it calls for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// `approval.requested|granted|denied|expired|used`, `access.requested|granted|revoked|expired`,
    /// or `approval.reviewed` for an approval that did not complete the quorum yet.
    pub event: &'static str,
    /// The record after the change.
    pub record: Record,
}

/// What [`Approvals::request`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requested {
    /// A new record (persist and audit it).
    New(Change),
    /// The same requester already waits for the same thing: that record.
    Existing(Record),
}

/// Every approval record, and the rules for changing them.
#[derive(Debug, Clone, Default)]
pub struct Approvals {
    settings: Settings,
    records: BTreeMap<String, Record>,
}

fn audit_prefix(subject: &Subject) -> &'static str {
    match subject {
        Subject::Exec { .. } => "approval",
        Subject::Access { .. } => "access",
    }
}

fn event(subject: &Subject, what: &str) -> &'static str {
    match (audit_prefix(subject), what) {
        ("approval", "requested") => "approval.requested",
        ("approval", "granted") => "approval.granted",
        ("approval", "denied") => "approval.denied",
        ("approval", "expired") => "approval.expired",
        ("approval", "used") => "approval.used",
        ("access", "requested") => "access.requested",
        ("access", "granted") => "access.granted",
        ("access", "denied") => "access.denied",
        ("access", "revoked") => "access.revoked",
        ("access", "expired") => "access.expired",
        _ => "approval.reviewed",
    }
}

/// Compiles an allowance pattern anchored at both ends.
fn anchored(pattern: &str) -> Result<Regex, ApprovalError> {
    if pattern.is_empty() || pattern.len() > MAX_PATTERN_BYTES {
        return Err(ApprovalError::Invalid {
            field: "allowance.pattern",
            message: format!("give a regular expression of 1 to {MAX_PATTERN_BYTES} bytes"),
        });
    }
    regex::RegexBuilder::new(&format!("^(?:{pattern})$"))
        .size_limit(1 << 20)
        .build()
        .map_err(|e| ApprovalError::Invalid {
            field: "allowance.pattern",
            message: format!("not a valid regular expression: {e}"),
        })
}

fn text(field: &'static str, value: &str) -> Result<(), ApprovalError> {
    if value.len() > MAX_TEXT_BYTES {
        return Err(ApprovalError::Invalid {
            field,
            message: format!("{} bytes; at most {MAX_TEXT_BYTES} are kept", value.len()),
        });
    }
    if value
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return Err(ApprovalError::Invalid {
            field,
            message: "contains control characters".to_owned(),
        });
    }
    Ok(())
}

impl Approvals {
    /// An engine with `settings` over `records` (as loaded from the store).
    pub fn new(settings: Settings, records: impl IntoIterator<Item = Record>) -> Approvals {
        Approvals {
            settings,
            records: records.into_iter().map(|r| (r.id.clone(), r)).collect(),
        }
    }

    /// The settings in force.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Replaces the settings (a reload). Existing records keep their quorum and expiry.
    pub fn set_settings(&mut self, settings: Settings) {
        self.settings = settings;
    }

    /// Every record, by id.
    pub fn records(&self) -> impl Iterator<Item = &Record> {
        self.records.values()
    }

    /// One record.
    pub fn get(&self, id: &str) -> Result<&Record, ApprovalError> {
        if !valid_id(id) {
            return Err(ApprovalError::BadId { id: id.to_owned() });
        }
        self.records
            .get(id)
            .ok_or_else(|| ApprovalError::NotFound { id: id.to_owned() })
    }

    fn pending_count(&self, uid: Option<u32>, now: u64) -> usize {
        self.records
            .values()
            .filter(|r| r.state == State::Pending && now < r.expires_at_ms)
            .filter(|r| uid.is_none_or(|u| r.requester.uid == u))
            .count()
    }

    /// Asks for an approval of `subject` by `requester`, or finds the pending one for exactly
    /// the same thing. `id` is the new record's id (from [`crate::new_id`]).
    pub fn request(
        &mut self,
        requester: Principal,
        subject: Subject,
        reason: &str,
        id: String,
        now: u64,
    ) -> Result<Requested, ApprovalError> {
        if !valid_id(&id) {
            return Err(ApprovalError::BadId { id });
        }
        text("reason", reason)?;
        let (quorum, expires_at_ms) = match &subject {
            Subject::Exec { command, targets } => {
                if command.is_empty() || targets.is_empty() {
                    return Err(ApprovalError::Invalid {
                        field: "subject",
                        message: "an exec approval needs a command and at least one target"
                            .to_owned(),
                    });
                }
                if targets.windows(2).any(|w| w[0] >= w[1]) {
                    return Err(ApprovalError::Invalid {
                        field: "subject.targets",
                        message: "targets must be sorted and distinct (use Subject::exec)"
                            .to_owned(),
                    });
                }
                (self.settings.quorum.clone(), now + self.settings.expiry_ms)
            }
            Subject::Access {
                role,
                duration_secs,
            } => {
                let ms = duration_secs.saturating_mul(1000);
                if ms == 0 || ms > self.settings.max_access_ms {
                    return Err(ApprovalError::Invalid {
                        field: "duration",
                        message: format!(
                            "{duration_secs} s is not between 1 s and the limit of {} s (approvals.max_access)",
                            self.settings.max_access_ms / 1000
                        ),
                    });
                }
                if reason.trim().is_empty() {
                    return Err(ApprovalError::Invalid {
                        field: "reason",
                        message: "say why you need the role (--reason TEXT)".to_owned(),
                    });
                }
                (
                    vec![QuorumRule {
                        role: *role,
                        count: 1,
                    }],
                    now + self.settings.expiry_ms,
                )
            }
        };
        let key = subject_key(&requester, &subject);
        if let Some(existing) = self.records.values().find(|r| {
            r.state == State::Pending
                && now < r.expires_at_ms
                && subject_key(&r.requester, &r.subject) == key
        }) {
            return Ok(Requested::Existing(existing.clone()));
        }
        if self.pending_count(Some(requester.uid), now) >= self.settings.max_pending_per_caller {
            return Err(ApprovalError::TooManyPending {
                scope: "this caller",
                limit: self.settings.max_pending_per_caller,
            });
        }
        if self.pending_count(None, now) >= self.settings.max_pending {
            return Err(ApprovalError::TooManyPending {
                scope: "the daemon",
                limit: self.settings.max_pending,
            });
        }
        let record = Record {
            binding: binding(&requester, &subject, expires_at_ms),
            id: id.clone(),
            requester,
            reason: reason.to_owned(),
            created_at_ms: now,
            expires_at_ms,
            quorum,
            state: State::Pending,
            reviews: Vec::new(),
            allowance: None,
            decided_at_ms: None,
            used_at_ms: None,
            grant_expires_at_ms: None,
            subject,
        };
        self.records.insert(id, record.clone());
        Ok(Requested::New(Change {
            event: event(&record.subject, "requested"),
            record,
        }))
    }

    /// A pending record that `reviewer` may review now, or why not. Expires it when due.
    fn reviewable(
        &mut self,
        id: &str,
        reviewer: &Principal,
        role: Role,
        now: u64,
    ) -> Result<&mut Record, ApprovalError> {
        self.get(id)?;
        let Some(r) = self.records.get_mut(id) else {
            return Err(ApprovalError::NotFound { id: id.to_owned() });
        };
        if r.state == State::Pending && now >= r.expires_at_ms {
            return Err(ApprovalError::Expired { id: id.to_owned() });
        }
        if r.state != State::Pending {
            return Err(ApprovalError::WrongState {
                id: id.to_owned(),
                state: r.state.as_str(),
                wanted: "pending",
            });
        }
        if r.requester.uid == reviewer.uid {
            return Err(ApprovalError::SelfApproval { uid: reviewer.uid });
        }
        if r.reviews.iter().any(|v| v.reviewer.uid == reviewer.uid) {
            return Err(ApprovalError::AlreadyReviewed { uid: reviewer.uid });
        }
        if !quorum::eligible(&r.quorum, role) {
            return Err(ApprovalError::NotEligible {
                role,
                needs: quorum::describe(&r.quorum),
            });
        }
        Ok(r)
    }

    /// Checks an allowance against the request that prompted it: the pattern must match the
    /// whole command and every host must be one of the request's targets, so the allowance
    /// covers that request and is never wider in hosts than it; its time is bounded by
    /// `max_allowance_ms`. Returns the allowance with sorted, distinct hosts.
    fn check_allowance(
        &self,
        subject: &Subject,
        spec: &AllowanceSpec,
    ) -> Result<AllowanceSpec, ApprovalError> {
        let Subject::Exec { command, targets } = subject else {
            return Err(ApprovalError::Invalid {
                field: "allowance",
                message: "only exec approvals can be granted as an allowance".to_owned(),
            });
        };
        let re = anchored(&spec.pattern)?;
        if !re.is_match(command) {
            return Err(ApprovalError::Invalid {
                field: "allowance.pattern",
                message: format!(
                    "{:?} does not match the whole command {command:?}; an allowance must cover the request that prompted it",
                    spec.pattern
                ),
            });
        }
        let mut hosts = spec.hosts.clone();
        hosts.sort();
        hosts.dedup();
        if hosts.is_empty() {
            return Err(ApprovalError::Invalid {
                field: "allowance.hosts",
                message: "name at least one of the request's hosts".to_owned(),
            });
        }
        if let Some(extra) = hosts.iter().find(|h| !targets.contains(h)) {
            return Err(ApprovalError::Invalid {
                field: "allowance.hosts",
                message: format!(
                    "{extra} is not one of the request's hosts ({}); an allowance is never wider than its request",
                    targets.join(", ")
                ),
            });
        }
        let ms = spec.ttl_secs.saturating_mul(1000);
        if ms == 0 || ms > self.settings.max_allowance_ms {
            return Err(ApprovalError::Invalid {
                field: "allowance.ttl",
                message: format!(
                    "{} s is not between 1 s and the limit of {} s (approvals.max_allowance)",
                    spec.ttl_secs,
                    self.settings.max_allowance_ms / 1000
                ),
            });
        }
        Ok(AllowanceSpec {
            pattern: spec.pattern.clone(),
            hosts,
            ttl_secs: spec.ttl_secs,
        })
    }

    /// Records `reviewer`'s approval. When the quorum is met the record is granted: an exec may
    /// then run once (or, when every approving reviewer gave the same allowance, commands
    /// within the allowance may run until it ends); an access grant starts its clock.
    pub fn approve(
        &mut self,
        id: &str,
        reviewer: Principal,
        role: Role,
        comment: Option<String>,
        allowance: Option<AllowanceSpec>,
        now: u64,
    ) -> Result<Change, ApprovalError> {
        if let Some(c) = &comment {
            text("comment", c)?;
        }
        let subject = self.get(id)?.subject.clone();
        let allowance = allowance
            .map(|a| self.check_allowance(&subject, &a))
            .transpose()?;
        let r = self.reviewable(id, &reviewer, role, now)?;
        r.reviews.push(Review {
            reviewer,
            role,
            approve: true,
            comment,
            allowance,
            at_ms: now,
        });
        let roles: Vec<Role> = r
            .reviews
            .iter()
            .filter(|v| v.approve)
            .map(|v| v.role)
            .collect();
        if !quorum::met(&r.quorum, &roles) {
            return Ok(Change {
                event: "approval.reviewed",
                record: r.clone(),
            });
        }
        r.state = State::Granted;
        r.decided_at_ms = Some(now);
        match &r.subject {
            Subject::Access { duration_secs, .. } => {
                r.grant_expires_at_ms = Some(now + duration_secs.saturating_mul(1000));
            }
            Subject::Exec { .. } => {
                let specs: Vec<Option<&AllowanceSpec>> = r
                    .reviews
                    .iter()
                    .filter(|v| v.approve)
                    .map(|v| v.allowance.as_ref())
                    .collect();
                if let Some(Some(first)) = specs.first()
                    && specs.iter().all(|s| *s == Some(*first))
                {
                    r.allowance = Some(Allowance {
                        pattern: first.pattern.clone(),
                        hosts: first.hosts.clone(),
                        expires_at_ms: now + first.ttl_secs.saturating_mul(1000),
                    });
                }
            }
        }
        Ok(Change {
            event: event(&r.subject, "granted"),
            record: r.clone(),
        })
    }

    /// Records a denial by `reviewer` (one eligible denial ends the request), or the requester
    /// withdrawing their own pending request.
    pub fn deny(
        &mut self,
        id: &str,
        reviewer: Principal,
        role: Role,
        comment: Option<String>,
        now: u64,
    ) -> Result<Change, ApprovalError> {
        if let Some(c) = &comment {
            text("comment", c)?;
        }
        let own = self.get(id)?.requester.uid == reviewer.uid;
        let r = if own {
            self.reviewable_own(id, now)?
        } else {
            self.reviewable(id, &reviewer, role, now)?
        };
        r.reviews.push(Review {
            reviewer,
            role,
            approve: false,
            comment,
            allowance: None,
            at_ms: now,
        });
        r.state = State::Denied;
        r.decided_at_ms = Some(now);
        Ok(Change {
            event: event(&r.subject, "denied"),
            record: r.clone(),
        })
    }

    fn reviewable_own(&mut self, id: &str, now: u64) -> Result<&mut Record, ApprovalError> {
        let Some(r) = self.records.get_mut(id) else {
            return Err(ApprovalError::NotFound { id: id.to_owned() });
        };
        if r.state == State::Pending && now >= r.expires_at_ms {
            return Err(ApprovalError::Expired { id: id.to_owned() });
        }
        if r.state != State::Pending {
            return Err(ApprovalError::WrongState {
                id: id.to_owned(),
                state: r.state.as_str(),
                wanted: "pending",
            });
        }
        Ok(r)
    }

    /// Checks, without changing anything, that approval `id` lets `requester` run exactly
    /// `subject` now: granted, unused, unexpired, and bound to this caller, command and targets.
    pub fn check_use(
        &self,
        id: &str,
        requester: &Principal,
        subject: &Subject,
        now: u64,
    ) -> Result<&Record, ApprovalError> {
        let r = self.get(id)?;
        if r.requester.uid != requester.uid {
            // Someone else's approval: as if it did not exist.
            return Err(ApprovalError::NotFound { id: id.to_owned() });
        }
        if !matches!(r.subject, Subject::Exec { .. }) {
            return Err(ApprovalError::Invalid {
                field: "approval",
                message: format!("{id} is an access request, not an exec approval"),
            });
        }
        if matches!(r.state, State::Pending | State::Granted) && now >= r.expires_at_ms {
            return Err(ApprovalError::Expired { id: id.to_owned() });
        }
        if r.state != State::Granted {
            return Err(ApprovalError::WrongState {
                id: id.to_owned(),
                state: r.state.as_str(),
                wanted: "granted",
            });
        }
        if binding(requester, subject, r.expires_at_ms) != r.binding {
            return Err(ApprovalError::Mismatch {
                id: id.to_owned(),
                approved: r.subject.describe(),
                asked: subject.describe(),
            });
        }
        Ok(r)
    }

    /// Marks approval `id` used, after [`Approvals::check_use`] passed (under the same lock):
    /// it can never run again.
    pub fn mark_used(
        &mut self,
        id: &str,
        requester: &Principal,
        subject: &Subject,
        now: u64,
    ) -> Result<Change, ApprovalError> {
        self.check_use(id, requester, subject, now)?;
        let Some(r) = self.records.get_mut(id) else {
            return Err(ApprovalError::NotFound { id: id.to_owned() });
        };
        r.state = State::Used;
        r.used_at_ms = Some(now);
        Ok(Change {
            event: "approval.used",
            record: r.clone(),
        })
    }

    /// The allowance (its record) that lets `requester` run `subject` now without a new
    /// approval: same requester, unexpired, the pattern matches the whole command and every
    /// target is one of its hosts.
    pub fn allowance_for(
        &self,
        requester: &Principal,
        subject: &Subject,
        now: u64,
    ) -> Option<&Record> {
        let Subject::Exec { command, targets } = subject else {
            return None;
        };
        self.records.values().find(|r| {
            let Some(a) = &r.allowance else {
                return false;
            };
            // An allowance outlives the single use (and the deadline) of its prompting request.
            matches!(r.state, State::Granted | State::Used | State::Expired)
                && r.requester == *requester
                && now < a.expires_at_ms
                && targets.iter().all(|t| a.hosts.contains(t))
                && anchored(&a.pattern).is_ok_and(|re| re.is_match(command))
        })
    }

    /// The strongest role granted to `uid` by access approvals in force at `now`.
    pub fn granted_role(&self, uid: u32, now: u64) -> Option<Role> {
        self.active_grants(now)
            .filter(|r| r.requester.uid == uid)
            .filter_map(|r| match r.subject {
                Subject::Access { role, .. } => Some(role),
                Subject::Exec { .. } => None,
            })
            .max()
    }

    /// Access grants in force at `now`.
    pub fn active_grants(&self, now: u64) -> impl Iterator<Item = &Record> {
        self.records.values().filter(move |r| {
            r.state == State::Granted
                && matches!(r.subject, Subject::Access { .. })
                && r.grant_expires_at_ms.is_some_and(|t| now < t)
        })
    }

    /// Takes back an access grant before its expiry: by its holder or an admin.
    pub fn revoke(
        &mut self,
        id: &str,
        by: &Principal,
        role: Role,
        now: u64,
    ) -> Result<Change, ApprovalError> {
        let r = self.get(id)?;
        if !matches!(r.subject, Subject::Access { .. }) {
            return Err(ApprovalError::Invalid {
                field: "id",
                message: format!("{id} is an exec approval; only access grants are revoked"),
            });
        }
        if r.requester.uid != by.uid && role != Role::Admin {
            return Err(ApprovalError::Forbidden(format!(
                "only the grant's holder or an admin may revoke {id}"
            )));
        }
        if r.state != State::Granted || r.grant_expires_at_ms.is_none_or(|t| now >= t) {
            return Err(ApprovalError::WrongState {
                id: id.to_owned(),
                state: r.state.as_str(),
                wanted: "granted",
            });
        }
        let Some(r) = self.records.get_mut(id) else {
            return Err(ApprovalError::NotFound { id: id.to_owned() });
        };
        r.state = State::Revoked;
        r.decided_at_ms = Some(now);
        Ok(Change {
            event: "access.revoked",
            record: r.clone(),
        })
    }

    /// Whether [`Approvals::sweep`] at `now` would change anything.
    pub fn due(&self, now: u64) -> bool {
        let retain = self.settings.retain_ms;
        if self.final_ids().len() > self.settings.max_final {
            return true;
        }
        self.records.values().any(|r| match r.state {
            State::Pending => now >= r.expires_at_ms,
            State::Granted => match r.subject {
                Subject::Access { .. } => r.grant_expires_at_ms.is_none_or(|t| now >= t),
                Subject::Exec { .. } => now >= r.expires_at_ms,
            },
            _ => {
                r.decided_at_ms.or(r.used_at_ms).unwrap_or(r.created_at_ms) + retain <= now
                    && r.allowance.as_ref().is_none_or(|a| a.expires_at_ms <= now)
            }
        })
    }

    /// Expires what is due at `now` (pending or unused requests past their expiry, access grants
    /// past theirs) and returns the changes; forgets final records older than the retention
    /// (returned as ids to delete).
    pub fn sweep(&mut self, now: u64) -> (Vec<Change>, Vec<String>) {
        let mut changes = Vec::new();
        for r in self.records.values_mut() {
            let lapsed = match r.state {
                State::Pending => now >= r.expires_at_ms,
                State::Granted => match r.subject {
                    Subject::Access { .. } => r.grant_expires_at_ms.is_none_or(|t| now >= t),
                    Subject::Exec { .. } => now >= r.expires_at_ms,
                },
                _ => false,
            };
            if lapsed {
                r.state = State::Expired;
                r.decided_at_ms = Some(now);
                changes.push(Change {
                    event: event(&r.subject, "expired"),
                    record: r.clone(),
                });
            }
        }
        let retain = self.settings.retain_ms;
        let old: Vec<String> = self
            .records
            .values()
            .filter(|r| {
                r.state.is_final()
                    && r.decided_at_ms.or(r.used_at_ms).unwrap_or(r.created_at_ms) + retain <= now
                    && r.allowance.as_ref().is_none_or(|a| a.expires_at_ms <= now)
            })
            .map(|r| r.id.clone())
            .collect();
        for id in &old {
            self.records.remove(id);
        }
        let mut old = old;
        let finals = self.final_ids();
        let excess = finals.len().saturating_sub(self.settings.max_final);
        for id in finals.into_iter().take(excess) {
            self.records.remove(&id);
            old.push(id);
        }
        (changes, old)
    }

    /// Ids of final records whose allowance (if any) has ended, oldest decision first.
    fn final_ids(&self) -> Vec<String> {
        let mut finals: Vec<(u64, String)> = self
            .records
            .values()
            .filter(|r| r.state.is_final() && r.allowance.is_none())
            .map(|r| (r.decided_at_ms.unwrap_or(r.created_at_ms), r.id.clone()))
            .collect();
        finals.sort();
        finals.into_iter().map(|(_, id)| id).collect()
    }
}
