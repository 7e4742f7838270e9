//! `/v1/plugins`: list the loaded WASM plugins, reload the manifest.

use hyper::StatusCode;
use serde_json::json;
use tether_api::{Empty, PluginList, PluginReloadResponse};

use super::Ctx;
use crate::http::Fail;

/// `GET /v1/plugins`: the loaded plugins with their counters.
pub(crate) async fn list(ctx: Ctx, _req: Empty) -> Result<PluginList, Fail> {
    Ok(match ctx.state.plugins.clone() {
        Some(p) => PluginList {
            plugins: p.list(),
            hint: None,
        },
        None => PluginList {
            plugins: Vec::new(),
            hint: Some("no plugins_manifest in tetherd.toml".to_owned()),
        },
    })
}

/// `POST /v1/plugins/reload`: re-read the plugin manifest (atomic; a bad plugin keeps the old set).
pub(crate) async fn reload(ctx: Ctx, _req: Empty) -> Result<PluginReloadResponse, Fail> {
    let Some(p) = ctx.state.plugins.clone() else {
        return Err(Fail::new(
            StatusCode::CONFLICT,
            "no_plugins",
            "this tetherd loads no plugins",
            "set plugins_manifest in tetherd.toml and restart",
        ));
    };
    let result = super::blocking("the plugin reload", move || p.reload()).await?;
    let data = match &result {
        Ok(n) => json!({"ok": true, "plugins": n}),
        Err(e) => json!({"ok": false, "error": e.to_string()}),
    };
    ctx.state
        .audit_or_refuse("plugin.reload", ctx.actor(), None, data)
        .await?;
    match result {
        Ok(plugins) => Ok(PluginReloadResponse { plugins }),
        Err(e) => Err(Fail::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_plugins",
            format!("plugin reload refused, the previous plugins stay loaded: {e}"),
            "fix the manifest or the plugin (tether plugin list shows what is loaded) and reload again",
        )),
    }
}
