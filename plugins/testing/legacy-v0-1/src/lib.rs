//! Test plugin built against `tether:plugin@0.1.0` (no parsed commands): denies every request,
//! echoing the command and the ticket it was given, so a host test can tell it was called
//! through the 0.1.0 bindings.
#![allow(missing_docs, unsafe_code)]

wit_bindgen::generate!({
    path: "../../../plugin-sdk/wit/tether-plugin-0.1.0",
    world: "policy-hook",
});

struct Legacy;

impl Guest for Legacy {
    fn evaluate(req: tether::plugin::types::Request) -> tether::plugin::types::Verdict {
        tether::plugin::types::Verdict::Deny(format!(
            "legacy 0.1.0 guest: command={} ticket={}",
            req.command.unwrap_or_default(),
            req.ticket.unwrap_or_default()
        ))
    }
}

export!(Legacy);
