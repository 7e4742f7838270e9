//! Explains decisions the way `tether policy check` will:
//! `cargo run -p tether-policy --example explain -- POLICY.toml 'COMMAND'...`.
//! With `--repeat N` it evaluates each command N times (for `valgrind --tool=callgrind`).
#![allow(clippy::unwrap_used)]

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut repeat = 0usize;
    if let Some(i) = args.iter().position(|a| a == "--repeat") {
        repeat = args[i + 1].parse().unwrap();
        args.drain(i..i + 2);
    }
    let Some(file) = args.first() else {
        eprintln!("usage: explain POLICY.toml [--repeat N] COMMAND...");
        std::process::exit(2);
    };
    let text = std::fs::read_to_string(file).unwrap();
    let policy = match tether_policy::Policy::from_toml_str(&text) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    for cmd in &args[1..] {
        let req = tether_policy::Request::exec(cmd.as_str());
        if repeat > 0 {
            let mut denied = 0usize;
            for _ in 0..repeat {
                denied +=
                    usize::from(policy.evaluate(&req).verdict == tether_policy::Verdict::Deny);
            }
            println!("{repeat} evaluations, {denied} denied");
        } else {
            println!("$ {cmd}\n{}", policy.evaluate(&req));
        }
    }
}
