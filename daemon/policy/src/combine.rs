//! The one rule that combines the regex decision with the policy plugins' votes, used by
//! `policy check`, policy fixtures and every route that acts on a decision.
use serde::{Deserialize, Serialize};

use crate::{Decision, PluginVote, Policy, PolicyEngine, PolicyHooks, Request};

/// What a policy check answers: the decision after the plugins voted, and their votes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checked {
    /// The regex rules' decision combined with the votes ([`Decision::apply_votes`]).
    pub decision: Decision,
    /// Every policy plugin's vote, in manifest order; empty when no plugin was asked (none
    /// loaded, or the policy is `off`).
    pub plugin_votes: Vec<PluginVote>,
}

/// Asks `hooks` (when given and the decision [takes votes](Decision::takes_votes)) about
/// `req` and applies their votes to `decision`. Blocks while the plugins run.
///
/// A request refused by a hard limit (over [`crate::MAX_INPUT_BYTES`], or malformed) is never
/// shown to the plugins: it is denied in every mode, no vote could change that, and input no
/// caller may legitimately send must not be able to make a plugin fail.
pub fn with_votes(
    mut decision: Decision,
    req: &Request,
    hooks: Option<&dyn PolicyHooks>,
    policy: &Policy,
) -> Checked {
    let hard = decision
        .rule_ids
        .iter()
        .any(|id| id == crate::builtin::INPUT_TOO_LONG || id == crate::builtin::INVALID_REQUEST);
    let plugin_votes = match hooks {
        Some(h) if decision.takes_votes() && !hard => {
            h.vote_parsed(req, &|cmd, cwd| policy.parse_commands(cmd, cwd))
        }
        _ => Vec::new(),
    };
    decision.apply_votes(&plugin_votes);
    Checked {
        decision,
        plugin_votes,
    }
}

impl Policy {
    /// What `policy check` says about `req`: [`evaluate`](Self::evaluate), then the plugins'
    /// votes combined by [`Decision::apply_votes`]. Blocks while the plugins run.
    pub fn check(&self, req: &Request, hooks: Option<&dyn PolicyHooks>) -> Checked {
        with_votes(self.evaluate(req), req, hooks, self)
    }
}

impl PolicyEngine {
    /// Like [`Policy::check`] against the policy in force, recording the regex evaluation's
    /// metrics like [`evaluate`](Self::evaluate). Blocks while the plugins run.
    pub fn check(&self, req: &Request, hooks: Option<&dyn PolicyHooks>) -> Checked {
        let decision = self.evaluate(req);
        with_votes(decision, req, hooks, &self.policy())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::{HookFailure, PolicySpec, Verdict, Vote};

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

    /// Counts the requests it is asked about.
    struct Counting(std::sync::atomic::AtomicUsize, Vec<PluginVote>);
    impl PolicyHooks for Counting {
        fn vote(&self, _: &Request) -> Vec<PluginVote> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.1.clone()
        }
    }

    #[test]
    fn input_over_the_hard_limits_never_reaches_plugins() {
        let hooks = Counting(Default::default(), vec![vote("x", Vote::Allow, true)]);
        for mode in ["enforce", "warn", "off"] {
            let p = policy(mode);
            let long = Request::exec("a".repeat(crate::MAX_INPUT_BYTES + 1));
            let c = p.check(&long, Some(&hooks));
            assert_eq!(c.decision.verdict, Verdict::Deny, "{mode}");
            assert!(c.plugin_votes.is_empty());
            let mut path = Request::exec("cat");
            path.kind = crate::RequestKind::FileRead;
            path.command = None;
            path.path = Some(format!("/{}", "p".repeat(crate::MAX_INPUT_BYTES)));
            let c = p.check(&path, Some(&hooks));
            assert_eq!(c.decision.verdict, Verdict::Deny, "{mode}");
        }
        assert_eq!(hooks.0.load(std::sync::atomic::Ordering::SeqCst), 0);
        // at the limit it is asked (and a may_override allow cannot lift a hard deny)
        let p = policy("enforce");
        p.check(
            &Request::exec("a".repeat(crate::MAX_INPUT_BYTES)),
            Some(&hooks),
        );
        assert_eq!(hooks.0.load(std::sync::atomic::Ordering::SeqCst), 1);
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
