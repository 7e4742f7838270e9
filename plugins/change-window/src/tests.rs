use super::*;

/// An exec request with the commands the host's parse gives for it (as `tether_policy::
/// parse_commands` returns them: wrapped commands are listed again with `via`).
fn exec(text: &str, commands: &[&[&str]]) -> Request {
    Request::exec(text).with_commands(commands.iter().map(|c| Command::new(c)).collect())
}

// 2026-11-21 is a Saturday.
fn at(day_offset: u64, h: u64, m: u64) -> Timestamp {
    const SAT_2026_11_21: u64 = 1_795_219_200_000;
    Timestamp::from_unix_ms(SAT_2026_11_21 + ((day_offset * 24 + h) * 60 + m) * 60_000)
}

fn settings() -> Settings {
    Settings::from_config(
        Some("Sat 02:00-06:00, Sun 02:00-06:00, Fri 22:00-01:00".into()),
        None,
        None,
    )
    .unwrap()
}

#[test]
fn clock_anchor_is_saturday() {
    assert_eq!(at(0, 0, 0).weekday(), Weekday::Sat);
    assert_eq!(at(0, 0, 0).to_string(), "2026-11-21T00:00:00Z");
}

#[test]
fn parses_windows() {
    assert_eq!(parse_windows("Mon 00:00-01:30").unwrap(), vec![(0, 90)]);
    assert_eq!(
        parse_windows("Sun 23:00-01:00").unwrap(),
        vec![(6 * 1440 + 1380, 6 * 1440 + 1500)]
    );
    assert_eq!(parse_windows("").unwrap(), vec![]);
    for bad in [
        "Sat",
        "Sat 2-6",
        "Xyz 02:00-06:00",
        "Sat 25:00-26:00",
        "Sat 02:60-03:00",
    ] {
        assert!(parse_windows(bad).is_err(), "{bad}");
    }
}

#[test]
fn windows_including_wrap_past_midnight_and_week_end() {
    let s = settings();
    assert!(s.in_window(at(0, 2, 0)));
    assert!(s.in_window(at(0, 5, 59)));
    assert!(!s.in_window(at(0, 6, 0)));
    assert!(!s.in_window(at(0, 1, 59)));
    assert!(s.in_window(at(1, 3, 0))); // Sunday
    assert!(s.in_window(at(6, 23, 0))); // Friday 23:00
    assert!(s.in_window(at(7, 0, 30))); // Saturday 00:30, from Friday's window
    assert!(!s.in_window(at(7, 1, 0)));
    let wrap = Settings::from_config(Some("Sun 23:00-01:00".into()), None, None).unwrap();
    assert!(wrap.in_window(at(2, 0, 30))); // Monday 00:30: wrapped past the end of the week
    assert!(!wrap.in_window(at(2, 1, 0)));
}

#[test]
fn what_counts_as_a_write() {
    let s = settings();
    assert!(s.is_write(&Request::file_write("/etc/motd")));
    assert!(s.is_write(&exec(
        "systemctl restart nginx",
        &[&["systemctl", "restart", "nginx"]]
    )));
    assert!(s.is_write(&exec(
        "sudo  apt install -y curl",
        &[
            &["sudo", "apt", "install", "-y", "curl"],
            &["apt", "install", "-y", "curl"]
        ]
    )));
    assert!(s.is_write(&exec("apt-get upgrade", &[&["apt-get", "upgrade"]])));
    assert!(s.is_write(&exec("deploy", &[&["deploy"]])));
    // The review's bypasses: chaining, a path, options before the subcommand, env.
    assert!(s.is_write(&exec(
        "true; systemctl restart nginx",
        &[&["true"], &["systemctl", "restart", "nginx"]]
    )));
    assert!(s.is_write(&exec(
        "/usr/bin/systemctl restart x",
        &[&["/usr/bin/systemctl", "restart", "x"]]
    )));
    assert!(s.is_write(&exec(
        "systemctl --no-block restart x",
        &[&["systemctl", "--no-block", "restart", "x"]]
    )));
    assert!(s.is_write(&exec(
        "env systemctl stop x",
        &[
            &["env", "systemctl", "stop", "x"],
            &["systemctl", "stop", "x"]
        ]
    )));
    assert!(s.is_write(&exec(
        "X=1 systemctl start x",
        &[&["X=1", "systemctl", "start", "x"]]
    )));
    // A command the host could not split counts as a write.
    let mut odd = Request::exec("echo 'x");
    odd.unparsable = Some("unbalanced single quote".into());
    assert!(s.is_write(&odd));
    assert!(!s.is_write(&exec("aptitude search x", &[&["aptitude", "search", "x"]])));
    assert!(!s.is_write(&exec(
        "systemctl status nginx",
        &[&["systemctl", "status", "nginx"]]
    )));
    assert!(!s.is_write(&exec(
        "echo systemctl restart x",
        &[&["echo", "systemctl", "restart", "x"]]
    )));
    assert!(!s.is_write(&exec("uptime", &[&["uptime"]])));
    assert!(!s.is_write(&Request::new(RequestKind::FileRead)));
}

#[test]
fn globs() {
    assert!(glob_match("CHG-*", "CHG-1234"));
    assert!(glob_match("CHG-*", "CHG-"));
    assert!(!glob_match("CHG-*", "INC-1"));
    assert!(glob_match("*-prod-*", "CHG-prod-7"));
    assert!(glob_match("exact", "exact"));
    assert!(!glob_match("exact", "exactly"));
    assert!(glob_match("a*é", "abcé"));
}

#[test]
fn decisions() {
    let s = settings();
    let tuesday_noon = at(3, 12, 0);
    let write = exec(
        "systemctl restart nginx",
        &[&["systemctl", "restart", "nginx"]],
    );
    match decide(&write, tuesday_noon, &s) {
        Verdict::Deny(reason) => {
            assert!(reason.contains("CHG-*"), "{reason}");
            assert!(reason.contains("Tue 12:00 UTC"), "{reason}");
        }
        other => panic!("expected deny, got {other:?}"),
    }
    assert_eq!(
        decide(&write.clone().with_ticket("CHG-42"), tuesday_noon, &s),
        Verdict::Abstain
    );
    assert!(matches!(
        decide(&write.clone().with_ticket("INC-42"), tuesday_noon, &s),
        Verdict::Deny(_)
    ));
    assert_eq!(decide(&write, at(0, 3, 0), &s), Verdict::Abstain);
    assert_eq!(
        decide(&exec("df -h", &[&["df", "-h"]]), tuesday_noon, &s),
        Verdict::Abstain
    );
    assert!(matches!(
        decide(&Request::file_write("/etc/hosts"), tuesday_noon, &s),
        Verdict::Deny(_)
    ));
}

#[test]
fn no_windows_configured_means_writes_need_a_ticket() {
    let s = Settings::from_config(None, Some("make install".into()), Some("OPS-*".into())).unwrap();
    assert!(matches!(
        decide(
            &exec("make install", &[&["make", "install"]]),
            at(0, 3, 0),
            &s
        ),
        Verdict::Deny(_)
    ));
    assert_eq!(
        decide(
            &exec("make install", &[&["make", "install"]]).with_ticket("OPS-1"),
            at(0, 3, 0),
            &s
        ),
        Verdict::Abstain
    );
    assert_eq!(
        decide(
            &exec("apt install x", &[&["apt", "install", "x"]]),
            at(0, 3, 0),
            &s
        ),
        Verdict::Abstain
    );
}
