//! `tether plugin new NAME --kind KIND`: a plugin crate from the templates in
//! `plugin-sdk/templates/` (compiled into this binary), with the next steps to build, sign and
//! load it.

use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};
use serde::Serialize;

use crate::error::CliError;
use crate::global::Global;
use crate::output;

/// Arguments of `tether plugin new`.
#[derive(Debug, Args)]
pub struct NewArgs {
    /// The plugin's name: lowercase letters, digits and '-', starting with a letter.
    #[arg(value_name = "NAME")]
    name: String,
    /// Which world the plugin implements.
    #[arg(long, value_enum)]
    kind: Kind,
    /// Directory to create (must not exist, or be empty). Default: ./NAME.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// The plugin-sdk/ directory of a Tether checkout to build against. Default: the one this
    /// tether was built from, if it still exists.
    #[arg(long, value_name = "PATH")]
    sdk_path: Option<PathBuf>,
}

/// The plugin worlds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Kind {
    /// `policy-hook`: votes on exec/file requests after the regex rules.
    Policy,
    /// `alert-sink`: delivers the daemon's alerts (Slack, webhooks, pagers).
    #[value(alias = "alert_sink")]
    AlertSink,
    /// `audit-sink`: delivers batches of audit records (SIEMs).
    #[value(alias = "audit_sink")]
    AuditSink,
    /// `enrollment-hook`: approves or denies targets joining, adds tags.
    #[value(alias = "enrollment_hook")]
    EnrollmentHook,
}

macro_rules! template {
    ($path:literal) => {
        include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../plugin-sdk/templates/",
            $path
        ))
    };
}

const CARGO_TOML: &str = template!("Cargo.toml.tmpl");
const README: &str = template!("README.md.tmpl");
const GITIGNORE: &str = template!("gitignore.tmpl");

impl Kind {
    /// As `--kind` spells it.
    fn as_str(self) -> &'static str {
        match self {
            Kind::Policy => "policy",
            Kind::AlertSink => "alert-sink",
            Kind::AuditSink => "audit-sink",
            Kind::EnrollmentHook => "enrollment-hook",
        }
    }

    /// As `kind = "..."` in plugins.toml spells it.
    fn manifest(self) -> &'static str {
        match self {
            Kind::Policy => "policy",
            Kind::AlertSink => "alert_sink",
            Kind::AuditSink => "audit_sink",
            Kind::EnrollmentHook => "enrollment_hook",
        }
    }

    /// Its `src/lib.rs` template.
    fn lib_rs(self) -> &'static str {
        match self {
            Kind::Policy => template!("policy/src/lib.rs.tmpl"),
            Kind::AlertSink => template!("alert-sink/src/lib.rs.tmpl"),
            Kind::AuditSink => template!("audit-sink/src/lib.rs.tmpl"),
            Kind::EnrollmentHook => template!("enrollment-hook/src/lib.rs.tmpl"),
        }
    }
}

/// Names cargo refuses or that would clash with the SDK dependency.
const RESERVED: &[&str] = &[
    "alloc",
    "core",
    "std",
    "test",
    "proc-macro",
    "tether-plugin-sdk",
    "as",
    "async",
    "await",
    "box",
    "break",
    "const",
    "continue",
    "crate",
    "do",
    "dyn",
    "else",
    "enum",
    "extern",
    "false",
    "fn",
    "for",
    "gen",
    "if",
    "impl",
    "in",
    "let",
    "loop",
    "macro",
    "match",
    "mod",
    "move",
    "mut",
    "priv",
    "pub",
    "ref",
    "return",
    "self",
    "static",
    "struct",
    "super",
    "trait",
    "true",
    "try",
    "type",
    "typeof",
    "unsafe",
    "use",
    "virtual",
    "where",
    "while",
    "yield",
];

/// Checks a plugin name: it becomes the crate name, the `.wasm` name and the manifest name.
fn validate_name(name: &str) -> Result<(), String> {
    let hint =
        "use lowercase letters, digits and '-', starting with a letter (e.g. no-friday-deploys)";
    if name.is_empty() || name.len() > 64 {
        return Err(format!("plugin name must be 1 to 64 characters: {hint}"));
    }
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Err(format!("invalid plugin name {name:?}: {hint}"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(format!(
            "invalid plugin name {name:?}: {c:?} is not allowed; {hint}"
        ));
    }
    if name.ends_with('-') {
        return Err(format!(
            "invalid plugin name {name:?}: it must not end with '-'; {hint}"
        ));
    }
    if RESERVED.contains(&name) {
        return Err(format!(
            "invalid plugin name {name:?}: reserved by Rust or cargo; choose another"
        ));
    }
    Ok(())
}

/// The SDK to depend on, as an absolute path.
fn sdk_path(given: Option<&Path>) -> Result<PathBuf, CliError> {
    let built = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../plugin-sdk"));
    let is_sdk = |p: &Path| {
        std::fs::read_to_string(p.join("Cargo.toml"))
            .is_ok_and(|t| t.contains("name = \"tether-plugin-sdk\""))
    };
    let path = match given {
        Some(p) if is_sdk(p) => p,
        Some(p) => {
            return Err(CliError::Usage(format!(
                "--sdk-path {}: not the Tether plugin SDK (no Cargo.toml of tether-plugin-sdk there)\nhint: pass the plugin-sdk/ directory of a Tether source checkout",
                p.display()
            )));
        }
        None if is_sdk(built) => built,
        None => {
            return Err(CliError::Usage(format!(
                "the plugin SDK this tether was built from is not at {} any more, and no --sdk-path was given\nhint: pass --sdk-path /path/to/tether/plugin-sdk (the plugin-sdk/ directory of a Tether source checkout)",
                built.display()
            )));
        }
    };
    std::fs::canonicalize(path)
        .map_err(|e| CliError::Usage(format!("--sdk-path {}: {e}", path.display())))
}

/// `s` escaped for the inside of a TOML basic string.
fn toml_escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// The template with its placeholders filled in.
fn render(template: &str, vars: &[(&str, &str)]) -> String {
    vars.iter().fold(template.to_owned(), |text, (k, v)| {
        text.replace(&format!("{{{{{k}}}}}"), v)
    })
}

/// The files of a new plugin crate: (relative path, content).
fn files(name: &str, kind: Kind, sdk: &str) -> Vec<(&'static str, String)> {
    let crate_name = name.replace('-', "_");
    let sdk = toml_escape(sdk);
    let vars = [
        ("name", name),
        ("crate_name", crate_name.as_str()),
        ("sdk_path", sdk.as_str()),
        ("kind", kind.as_str()),
        ("manifest_kind", kind.manifest()),
    ];
    vec![
        ("Cargo.toml", render(CARGO_TOML, &vars)),
        ("README.md", render(README, &vars)),
        (".gitignore", render(GITIGNORE, &vars)),
        ("src/lib.rs", render(kind.lib_rs(), &vars)),
    ]
}

#[derive(Serialize)]
struct Out<'a> {
    name: &'a str,
    kind: &'static str,
    dir: &'a Path,
    sdk_path: &'a Path,
    files: Vec<&'static str>,
    wasm: PathBuf,
    manifest_entry: String,
    next_steps: Vec<String>,
}

pub fn run(global: &Global, args: NewArgs) -> Result<u8, CliError> {
    validate_name(&args.name).map_err(CliError::Usage)?;
    let sdk = sdk_path(args.sdk_path.as_deref())?;
    let sdk_str = sdk.to_str().ok_or_else(|| {
        CliError::Usage(format!(
            "the SDK path {} is not UTF-8; move the checkout to a UTF-8 path",
            sdk.display()
        ))
    })?;
    let dir = args.dir.unwrap_or_else(|| PathBuf::from(&args.name));
    prepare_dir(&dir)?;
    let files = files(&args.name, args.kind, sdk_str);
    for (rel, content) in &files {
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| write_err(parent, e))?;
        }
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .and_then(|mut f| std::io::Write::write_all(&mut f, content.as_bytes()))
            .map_err(|e| write_err(&path, e))?;
    }
    let abs_dir = std::fs::canonicalize(&dir).unwrap_or_else(|_| dir.clone());
    let crate_name = args.name.replace('-', "_");
    let wasm_rel = format!("target/wasm32-wasip2/release/{crate_name}.wasm");
    let wasm = abs_dir.join(&wasm_rel);
    let manifest_entry = format!(
        "[[plugin]]\nname = \"{}\"\nkind = \"{}\"\npath = \"{}\"\n",
        args.name,
        args.kind.manifest(),
        toml_escape(&wasm.to_string_lossy())
    );
    let next_steps = vec![
        format!("cd {}", dir.display()),
        // rustup adds a toolchain file's targets only when it installs the toolchain: without
        // the target, the build fails with "can't find crate for `core`". A no-op when present.
        "rustup target add wasm32-wasip2   # once per toolchain; nothing to do when it is there"
            .to_owned(),
        "cargo build --target wasm32-wasip2 --release".to_owned(),
        "tether plugin keygen --out ~/.config/tether/plugin.key   # once; prints the trusted_keys line for plugins.toml".to_owned(),
        format!("tether plugin sign {wasm_rel} --key ~/.config/tether/plugin.key"),
        "add the [[plugin]] entry below to the daemon's plugins.toml, then: tether plugin reload"
            .to_owned(),
    ];
    if global.json {
        output::json(&Out {
            name: &args.name,
            kind: args.kind.as_str(),
            dir: &abs_dir,
            sdk_path: &sdk,
            files: files.iter().map(|(rel, _)| *rel).collect(),
            wasm,
            manifest_entry,
            next_steps,
        });
        return Ok(0);
    }
    println!(
        "created {} plugin {:?} in {} (SDK: {})",
        args.kind.as_str(),
        args.name,
        dir.display(),
        sdk.display()
    );
    println!();
    println!("Next steps:");
    for step in &next_steps {
        println!("  {step}");
    }
    println!();
    print!("{manifest_entry}");
    Ok(0)
}

/// Creates `dir`, or accepts it when it exists and is empty.
fn prepare_dir(dir: &Path) -> Result<(), CliError> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(CliError::Usage(format!(
                    "{} exists and is not empty: choose another --dir (or NAME), or remove it first",
                    dir.display()
                )));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir).map_err(|e| write_err(dir, e))
        }
        Err(e) => Err(CliError::Usage(format!(
            "{}: {e} (is it a directory you can read?)",
            dir.display()
        ))),
    }
}

fn write_err(path: &Path, e: std::io::Error) -> CliError {
    CliError::Usage(format!(
        "cannot write {}: {e} (check the directory and its permissions)",
        path.display()
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for ok in ["a", "no-friday-deploys", "p2", "x-1-y"] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "1abc",
            "-a",
            "a-",
            "A",
            "a_b",
            "a b",
            "a/b",
            "../x",
            "é",
            "fn",
            "test",
            "tether-plugin-sdk",
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
        assert!(validate_name(&"a".repeat(65)).is_err());
    }

    #[test]
    fn every_template_is_filled_in() {
        for kind in Kind::value_variants() {
            for (rel, text) in files("my-plugin", *kind, "/opt/sdk \"q\"") {
                assert!(!text.contains("{{"), "{kind:?} {rel}: unfilled placeholder");
                if rel == "Cargo.toml" {
                    let v: toml::Value = toml::from_str(&text).unwrap();
                    assert_eq!(
                        v["dependencies"]["tether-plugin-sdk"]["path"].as_str(),
                        Some("/opt/sdk \"q\"")
                    );
                    assert_eq!(v["package"]["name"].as_str(), Some("my-plugin"));
                }
                if rel == "README.md" {
                    assert!(text.contains(&format!("kind = \"{}\"", kind.manifest())));
                    assert!(text.contains("my_plugin.wasm"));
                }
            }
        }
    }
}
