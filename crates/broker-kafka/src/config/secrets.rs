//! Which property values are secret, never to be shown in `Debug`, logs or errors.

/// Whether a property's value must never be shown: every `sasl.*` and `ssl.*` property, and
/// any whose name holds a word of a secret, also misspelled (`sasl.pasword`, `sals.passwd`).
pub(crate) fn is_secret(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    [
        "pas", "pwd", "secret", "token", "cred", "jaas", "auth", "key",
    ]
    .iter()
    .any(|word| name.contains(word))
        || name.starts_with("sasl.")
        || name.starts_with("ssl.")
}

/// The value to show for a property: itself, or a placeholder when it is secret.
pub(crate) fn redact<'a>(name: &str, value: &'a str) -> &'a str {
    if is_secret(name) {
        "<redacted>"
    } else {
        value
    }
}
