//! Test plugin (`tether:plugin@0.2.0`): denies every request with a reason that spells the
//! host's parse (`req.commands()`: argv, `[redirections]`, `<paths …>`, `(via …)`) and the
//! ticket, so tests can check what guests receive.
use tether_plugin_sdk::policy::{PolicyHook, Request, Verdict, export_policy};

/// Echoes the parse.
pub struct ParseProbe;

impl PolicyHook for ParseProbe {
    fn evaluate(req: Request) -> Verdict {
        let cmds: Vec<String> = req
            .commands()
            .iter()
            .map(|c| {
                let mut s = c.argv.join(" ");
                for r in &c.redirects {
                    s.push_str(&format!(" [{}{}]", r.op, r.target));
                }
                if !c.paths.is_empty() {
                    s.push_str(&format!(" <paths {}>", c.paths.join(",")));
                }
                if let Some(v) = &c.via {
                    s.push_str(&format!(" (via {v})"));
                }
                s
            })
            .collect();
        Verdict::deny(format!(
            "parsed: {} | ticket={} | unparsable={}",
            cmds.join(" ; "),
            req.ticket().unwrap_or(""),
            req.unparsable.as_deref().unwrap_or("")
        ))
    }
}

export_policy!(ParseProbe);
