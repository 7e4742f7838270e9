//! wit-bindgen output, one module per world. Private to the SDK: plugin authors use the
//! traits and types in `policy`, `alerts`, `audit`, `enroll` and `host` instead.
//!
//! The `policy-hook` world is generated first and owns the shared interfaces (`types` and the
//! host imports); the other worlds reuse them through `with`, so every world sees one set of types.
#![allow(missing_docs, unsafe_code, clippy::all)]

/// Bindings for the `policy-hook` world (and the shared `types`/import interfaces).
pub mod policy {
    wit_bindgen::generate!({
        path: "wit/tether-plugin-0.2.0",
        world: "policy-hook",
        generate_unused_types: true,
        pub_export_macro: true,
        export_macro_name: "__tether_export_policy_hook",
        default_bindings_module: "$crate::__private::bindings::policy",
    });
}

/// Bindings for the `alert-sink` world.
pub mod alerts {
    wit_bindgen::generate!({
        path: "wit/tether-plugin-0.2.0",
        world: "alert-sink",
        with: {
            "tether:plugin/types@0.2.0": crate::__private::bindings::policy::tether::plugin::types,
            "tether:plugin/log@0.2.0": crate::__private::bindings::policy::tether::plugin::log,
            "tether:plugin/clock@0.2.0": crate::__private::bindings::policy::tether::plugin::clock,
            "tether:plugin/config@0.2.0": crate::__private::bindings::policy::tether::plugin::config,
            "tether:plugin/secrets@0.2.0": crate::__private::bindings::policy::tether::plugin::secrets,
            "tether:plugin/http@0.2.0": crate::__private::bindings::policy::tether::plugin::http,
        },
        pub_export_macro: true,
        export_macro_name: "__tether_export_alert_sink",
        default_bindings_module: "$crate::__private::bindings::alerts",
    });
}

/// Bindings for the `audit-sink` world.
pub mod audit {
    wit_bindgen::generate!({
        path: "wit/tether-plugin-0.2.0",
        world: "audit-sink",
        with: {
            "tether:plugin/tcp@0.2.0": crate::__private::bindings::alerts::tether::plugin::tcp,
            "tether:plugin/types@0.2.0": crate::__private::bindings::policy::tether::plugin::types,
            "tether:plugin/log@0.2.0": crate::__private::bindings::policy::tether::plugin::log,
            "tether:plugin/clock@0.2.0": crate::__private::bindings::policy::tether::plugin::clock,
            "tether:plugin/config@0.2.0": crate::__private::bindings::policy::tether::plugin::config,
            "tether:plugin/secrets@0.2.0": crate::__private::bindings::policy::tether::plugin::secrets,
            "tether:plugin/http@0.2.0": crate::__private::bindings::policy::tether::plugin::http,
        },
        pub_export_macro: true,
        export_macro_name: "__tether_export_audit_sink",
        default_bindings_module: "$crate::__private::bindings::audit",
    });
}

/// Bindings for the `enrollment-hook` world.
pub mod enroll {
    wit_bindgen::generate!({
        path: "wit/tether-plugin-0.2.0",
        world: "enrollment-hook",
        with: {
            "tether:plugin/types@0.2.0": crate::__private::bindings::policy::tether::plugin::types,
            "tether:plugin/log@0.2.0": crate::__private::bindings::policy::tether::plugin::log,
            "tether:plugin/clock@0.2.0": crate::__private::bindings::policy::tether::plugin::clock,
            "tether:plugin/config@0.2.0": crate::__private::bindings::policy::tether::plugin::config,
            "tether:plugin/secrets@0.2.0": crate::__private::bindings::policy::tether::plugin::secrets,
            "tether:plugin/http@0.2.0": crate::__private::bindings::policy::tether::plugin::http,
        },
        pub_export_macro: true,
        export_macro_name: "__tether_export_enrollment_hook",
        default_bindings_module: "$crate::__private::bindings::enroll",
    });
}

/// The shared interfaces, under short names.
pub use policy::tether::plugin::{clock, config, http, log, secrets, types};
