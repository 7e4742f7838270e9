//! Combining the regex verdict with policy plugins' votes: the one rule every caller (policy
//! check, fixtures, exec) applies.

use tether_model::policy::{Decision, HookVote, Mode, Outcome, PluginVote, TraceEntry, Verdict};

/// Applies policy plugins' votes after the regex rules: a deny or approval vote can only tighten
/// the verdict; an allow loosens a regex deny only from a plugin with `may_override`. In `warn`
/// mode a plugin's deny becomes `warn`, like a rule's.
pub fn apply_votes(d: &mut Decision, votes: &[PluginVote]) {
    for v in votes {
        let rule = format!("plugin:{}", v.plugin);
        let (verdict, reason, outcome) = match &v.vote {
            HookVote::Abstain => continue,
            HookVote::Deny(r) => (Verdict::Deny, r.clone(), Outcome::Denied),
            HookVote::RequireApproval(r) => {
                (Verdict::RequireApproval, r.clone(), Outcome::NeedsApproval)
            }
            HookVote::Allow => {
                if v.may_override && d.verdict == Verdict::Deny {
                    d.verdict = Verdict::Allow;
                    d.reason = format!("allowed by plugin {} (may_override)", v.plugin).into();
                    d.rule_ids.push(rule.clone());
                    d.trace.push(TraceEntry {
                        subject: v.plugin.clone(),
                        rule: Some(rule),
                        outcome: Outcome::Allowed,
                        note: "overrides the regex deny".into(),
                    });
                }
                continue;
            }
        };
        let verdict = if d.mode == Mode::Warn {
            Verdict::Warn
        } else {
            verdict
        };
        let stronger = match (d.verdict, verdict) {
            (Verdict::Deny, _) => false,
            (_, Verdict::Deny) => true,
            (Verdict::RequireApproval, _) => false,
            (_, Verdict::RequireApproval) => true,
            (Verdict::Allow, Verdict::Warn) => true,
            _ => false,
        };
        let note = match &v.error {
            Some(e) => format!("{reason} (plugin failed: {e})"),
            None => reason.clone(),
        };
        d.trace.push(TraceEntry {
            subject: v.plugin.clone(),
            rule: Some(rule.clone()),
            outcome,
            note: note.into(),
        });
        if stronger {
            d.verdict = verdict;
            d.reason = format!("plugin {}: {reason}", v.plugin).into();
        }
        if !d.rule_ids.contains(&rule) {
            d.rule_ids.push(rule);
        }
    }
}
