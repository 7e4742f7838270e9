//! The syntax of secret names, shared by the vault (which stores under them) and the config
//! checks (which name them offline, without linking the vault).

/// Longest accepted secret name.
pub const MAX_SECRET_NAME_LEN: usize = 64;

/// Checks a secret name: 1–64 characters of `A-Z a-z 0-9 . _ -`, starting with a letter or
/// digit (a safe path component for every backend). The error says what is wrong.
pub fn check_secret_name(name: &str) -> Result<(), &'static str> {
    let Some(first) = name.chars().next() else {
        return Err("it is empty");
    };
    if name.len() > MAX_SECRET_NAME_LEN {
        return Err("it is too long");
    }
    if !first.is_ascii_alphanumeric() {
        return Err("it must start with a letter or digit");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err("it contains a character outside A-Z a-z 0-9 . _ -");
    }
    Ok(())
}
