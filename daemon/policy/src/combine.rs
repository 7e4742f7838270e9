//! The one rule that combines the regex decision with the policy plugins' votes, used by
//! `policy check`, policy fixtures and every route that acts on a decision.
use serde::{Deserialize, Serialize};

use crate::{
    Decision, Mode, Outcome, PluginVote, Policy, PolicyEngine, PolicyHooks, Request, TraceEntry,
    Verdict, Vote,
};

/// What a policy check answers: the decision after the plugins voted, and their votes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checked {
    /// The regex rules' decision combined with the votes ([`Decision::apply_votes`]).
    pub decision: Decision,
    /// Every policy plugin's vote, in manifest order; empty when no plugin was asked (none
    /// loaded, or the policy is `off`).
    pub plugin_votes: Vec<PluginVote>,
}

impl Decision {
    /// Whether plugins are asked about this decision: in every mode but `off`, where nothing is
    /// enforced.
    pub fn takes_votes(&self) -> bool {
        self.mode != Mode::Off
    }

    /// Applies policy plugins' votes after the regex rules: a deny or approval vote can only
    /// tighten the verdict; an allow loosens a regex deny only from a plugin with
    /// `may_override`. In `warn` mode a plugin's deny becomes `warn`, like a rule's; in `off`
    /// mode votes change nothing. Each vote that counts adds `plugin:NAME` to the rule ids and a
    /// line to the trace.
    pub fn apply_votes(&mut self, votes: &[PluginVote]) {
        if !self.takes_votes() {
            return;
        }
        for v in votes {
            self.apply_vote(v);
        }
    }

    fn apply_vote(&mut self, v: &PluginVote) {
        let rule = format!("plugin:{}", v.plugin);
        let (verdict, reason, outcome) = match &v.vote {
            Vote::Abstain => return,
            Vote::Deny(r) => (Verdict::Deny, r, Outcome::Denied),
            Vote::RequireApproval(r) => (Verdict::RequireApproval, r, Outcome::NeedsApproval),
            Vote::Allow => {
                if v.may_override && self.verdict == Verdict::Deny {
                    self.verdict = Verdict::Allow;
                    self.reason = format!("allowed by plugin {} (may_override)", v.plugin).into();
                    self.rule_ids.push(rule.clone());
                    self.trace.push(TraceEntry {
                        subject: v.plugin.clone(),
                        rule: Some(rule),
                        outcome: Outcome::Allowed,
                        note: "overrides the regex deny".into(),
                    });
                }
                return;
            }
        };
        let verdict = if self.mode == Mode::Warn {
            Verdict::Warn
        } else {
            verdict
        };
        let stronger = match (self.verdict, verdict) {
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
        self.trace.push(TraceEntry {
            subject: v.plugin.clone(),
            rule: Some(rule.clone()),
            outcome,
            note: note.into(),
        });
        if stronger {
            self.verdict = verdict;
            self.reason = format!("plugin {}: {reason}", v.plugin).into();
        }
        if !self.rule_ids.contains(&rule) {
            self.rule_ids.push(rule);
        }
    }

    /// Asks `hooks` (when given and [`takes_votes`](Self::takes_votes)) about `req` and applies
    /// their votes to this decision. Blocks while the plugins run.
    pub fn with_votes(mut self, req: &Request, hooks: Option<&dyn PolicyHooks>) -> Checked {
        let plugin_votes = match hooks {
            Some(h) if self.takes_votes() => h.vote(req),
            _ => Vec::new(),
        };
        self.apply_votes(&plugin_votes);
        Checked {
            decision: self,
            plugin_votes,
        }
    }
}

impl Policy {
    /// What `policy check` says about `req`: [`evaluate`](Self::evaluate), then the plugins'
    /// votes combined by [`Decision::apply_votes`]. Blocks while the plugins run.
    pub fn check(&self, req: &Request, hooks: Option<&dyn PolicyHooks>) -> Checked {
        self.evaluate(req).with_votes(req, hooks)
    }
}

impl PolicyEngine {
    /// Like [`Policy::check`] against the policy in force, recording the regex evaluation's
    /// metrics like [`evaluate`](Self::evaluate). Blocks while the plugins run.
    pub fn check(&self, req: &Request, hooks: Option<&dyn PolicyHooks>) -> Checked {
        self.evaluate(req).with_votes(req, hooks)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::{HookFailure, PolicySpec};

    fn policy(mode: &str) -> Policy {
        let spec = PolicySpec::from_toml_str(&format!(
            "[policy]\nmode = \"{mode}\"\n[[policy.deny_commands]]\nid = \"no-reboot\"\npattern = \"^reboot\"\n"
        ))
        .unwrap();
        Policy::compile(&spec).unwrap()
    }

    fn vote(plugin: &str, vote: Vote, may_override: bool) -> PluginVote {
        PluginVote {
            plugin: plugin.into(),
            vote,
            may_override,
            error: None,
        }
    }

    struct Fixed(Vec<PluginVote>);
    impl PolicyHooks for Fixed {
        fn vote(&self, _: &Request) -> Vec<PluginVote> {
            self.0.clone()
        }
    }

    #[test]
    fn a_deny_vote_tightens_an_allow() {
        let p = policy("enforce");
        let hooks = Fixed(vec![
            vote("quiet", Vote::Abstain, false),
            vote("cw", Vote::Deny("outside the window".into()), false),
        ]);
        let c = p.check(&Request::exec("uptime"), Some(&hooks));
        assert_eq!(c.decision.verdict, Verdict::Deny);
        assert_eq!(c.decision.rule_ids, ["plugin:cw"]);
        assert_eq!(c.decision.reason, "plugin cw: outside the window");
        assert_eq!(c.plugin_votes.len(), 2);
    }

    #[test]
    fn approval_is_weaker_than_deny_and_stronger_than_allow() {
        let mut d = policy("enforce").evaluate(&Request::exec("uptime"));
        d.apply_votes(&[
            vote("a", Vote::RequireApproval("ask".into()), false),
            vote("b", Vote::Allow, true),
        ]);
        assert_eq!(d.verdict, Verdict::RequireApproval);
        let mut d = policy("enforce").evaluate(&Request::exec("reboot"));
        d.apply_votes(&[vote("a", Vote::RequireApproval("ask".into()), false)]);
        assert_eq!(d.verdict, Verdict::Deny);
        assert_eq!(d.rule_ids, ["no-reboot", "plugin:a"]);
    }

    #[test]
    fn an_allow_loosens_a_regex_deny_only_with_may_override() {
        let req = Request::exec("reboot");
        let p = policy("enforce");
        let c = p.check(&req, Some(&Fixed(vec![vote("x", Vote::Allow, false)])));
        assert_eq!(c.decision.verdict, Verdict::Deny);
        let c = p.check(&req, Some(&Fixed(vec![vote("x", Vote::Allow, true)])));
        assert_eq!(c.decision.verdict, Verdict::Allow);
        assert!(c.decision.rule_ids.contains(&"plugin:x".to_owned()));
        assert_eq!(c.decision.reason, "allowed by plugin x (may_override)");
    }

    #[test]
    fn warn_mode_turns_a_plugin_deny_into_warn_and_off_mode_asks_nobody() {
        let hooks = Fixed(vec![vote("cw", Vote::Deny("no".into()), false)]);
        let c = policy("warn").check(&Request::exec("uptime"), Some(&hooks));
        assert_eq!(c.decision.verdict, Verdict::Warn);
        let c = policy("off").check(&Request::exec("uptime"), Some(&hooks));
        assert_eq!(c.decision.verdict, Verdict::Allow);
        assert!(c.plugin_votes.is_empty());
        let mut d = policy("off").evaluate(&Request::exec("uptime"));
        d.apply_votes(&hooks.0);
        assert_eq!(
            d.verdict,
            Verdict::Allow,
            "votes change nothing in off mode"
        );
    }

    #[test]
    fn a_failed_plugin_is_named_in_the_trace() {
        let mut v = vote("spin", Vote::Deny("failing closed".into()), false);
        v.error = Some(HookFailure {
            kind: "timeout".into(),
            message: "call exceeded timeout_ms = 50".into(),
        });
        let mut d = policy("enforce").evaluate(&Request::exec("uptime"));
        d.apply_votes(&[v]);
        assert_eq!(d.verdict, Verdict::Deny);
        let last = d.trace.last().unwrap();
        assert_eq!(
            last.note,
            "failing closed (plugin failed: timeout: call exceeded timeout_ms = 50)"
        );
    }

    #[test]
    fn votes_keep_their_json_shape() {
        let mut v = vote("spin", Vote::Deny("failing closed".into()), false);
        v.error = Some(HookFailure {
            kind: "timeout".into(),
            message: "too slow".into(),
        });
        let json = serde_json::to_value(&v).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "plugin": "spin",
                "vote": {"vote": "deny", "reason": "failing closed"},
                "may_override": false,
                "error": "timeout: too slow",
            })
        );
        let back: PluginVote = serde_json::from_value(json).unwrap();
        assert_eq!(back, v);
        assert_eq!(back.outcome().unwrap_err().kind, "timeout");
        let abstain = serde_json::to_value(vote("q", Vote::Abstain, true)).unwrap();
        assert_eq!(abstain["vote"], serde_json::json!({"vote": "abstain"}));
    }
}
