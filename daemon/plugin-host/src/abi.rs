//! Every published WIT version behind one type: the host loads 0.2.0 components and keeps
//! loading 0.1.0 ones unchanged. A component is type-checked against the newest version first
//! (its `evaluate` takes the 0.2.0 request with `parsed`), then against 0.1.0.

use crate::store::StoreState;
use crate::types;
use crate::{v0_1, v0_2};

/// A call result translated to crate types, with the size of its variable-length parts.
pub(crate) type Called<T> = wasmtime::Result<Option<(T, usize)>>;

/// A pre-linked component of some WIT version.
#[derive(Clone)]
pub(crate) enum Pre {
    V1(v0_1::Pre),
    V2(v0_2::Pre),
}

/// Instantiated bindings of some WIT version.
pub(crate) enum Bindings {
    V1(v0_1::Bindings),
    V2(v0_2::Bindings),
}

/// Adds the host imports of every version to `linker`.
pub(crate) fn add_to_linker(
    linker: &mut wasmtime::component::Linker<StoreState>,
) -> wasmtime::Result<()> {
    v0_1::add_to_linker(linker)?;
    v0_2::add_to_linker(linker)
}

impl Pre {
    /// Type-checks `pre` against the world for `kind`, newest version first.
    pub fn new(
        kind: crate::manifest::PluginKind,
        pre: wasmtime::component::InstancePre<StoreState>,
    ) -> wasmtime::Result<Pre> {
        match v0_2::Pre::new(kind, pre.clone()) {
            Ok(p) => Ok(Pre::V2(p)),
            Err(newest) => v0_1::Pre::new(kind, pre).map(Pre::V1).map_err(|oldest| {
                wasmtime::Error::msg(format!(
                    "as tether:plugin@0.2.0: {newest:#}; as tether:plugin@0.1.0: {oldest:#}"
                ))
            }),
        }
    }

    /// The WIT version this component was built against.
    pub fn version(&self) -> &'static str {
        match self {
            Pre::V1(_) => "0.1.0",
            Pre::V2(_) => "0.2.0",
        }
    }

    /// Instantiates the component in `store`.
    pub fn instantiate(
        &self,
        store: &mut wasmtime::Store<StoreState>,
    ) -> wasmtime::Result<Bindings> {
        Ok(match self {
            Pre::V1(p) => Bindings::V1(p.instantiate(store)?),
            Pre::V2(p) => Bindings::V2(p.instantiate(store)?),
        })
    }
}

impl Bindings {
    /// Calls a policy hook's `evaluate`. `parse` is the policy's own parser (0.2.0 guests get
    /// its parse; `None`: the built-in wrapper table).
    pub fn evaluate(
        &self,
        store: &mut wasmtime::Store<StoreState>,
        req: &tether_policy::Request,
        parse: Option<tether_policy::CommandParser<'_>>,
    ) -> Called<tether_policy::Vote> {
        match self {
            Bindings::V1(b) => b.evaluate(store, req),
            Bindings::V2(b) => b.evaluate(store, req, parse),
        }
    }

    /// Calls an alert sink's `deliver`.
    pub fn deliver_alert(
        &self,
        store: &mut wasmtime::Store<StoreState>,
        a: &tether_model::Alert,
    ) -> Called<Result<(), String>> {
        match self {
            Bindings::V1(b) => b.deliver_alert(store, a),
            Bindings::V2(b) => b.deliver_alert(store, a),
        }
    }

    /// Calls an audit sink's `deliver-batch`.
    pub fn deliver_audit(
        &self,
        store: &mut wasmtime::Store<StoreState>,
        events: &[types::AuditRecord],
    ) -> Called<Result<(), String>> {
        match self {
            Bindings::V1(b) => b.deliver_audit(store, events),
            Bindings::V2(b) => b.deliver_audit(store, events),
        }
    }

    /// Calls an enrollment hook's `on-enroll`.
    pub fn on_enroll(
        &self,
        store: &mut wasmtime::Store<StoreState>,
        req: &types::EnrollRequest,
    ) -> Called<types::EnrollDecision> {
        match self {
            Bindings::V1(b) => b.on_enroll(store, req),
            Bindings::V2(b) => b.on_enroll(store, req),
        }
    }
}
