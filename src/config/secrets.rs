//! Secrets: reading them from files, and hiding them in any text that may carry one.
//!
//! Every secret file the configuration names is read here, so that a relative path means the
//! same thing everywhere (systemd's `$CREDENTIALS_DIRECTORY`); every rendering of a URL or of an
//! error that may quote one goes through [`mask_secrets`].

use std::path::{Path, PathBuf};

use super::ConfigError;

/// Reads a secret file; a relative path is looked up in systemd's credentials directory.
/// Trailing line breaks are dropped (an editor's or `echo`'s); an empty secret is refused, as it
/// would only fail later as a wrong password. An error names `key`.
pub(super) fn read_secret(path: &Path, key: &str) -> Result<String, ConfigError> {
    let resolved = resolve(path);
    let text = std::fs::read_to_string(&resolved).map_err(|e| {
        ConfigError::invalid(key, format!("cannot read {}: {e}", resolved.display()))
    })?;
    let secret = text.trim_end_matches(['\n', '\r']).to_owned();
    if secret.is_empty() {
        return Err(ConfigError::invalid(
            key,
            format!("{} is empty", resolved.display()),
        ));
    }
    Ok(secret)
}

/// A configured file's path: a relative one is looked up in systemd's credentials directory
/// when there is one (the password files and the TLS certificates and keys alike).
pub(super) fn resolve(path: &Path) -> PathBuf {
    match std::env::var_os("CREDENTIALS_DIRECTORY") {
        Some(dir) if path.is_relative() => Path::new(&dir).join(path),
        _ => path.to_path_buf(),
    }
}

/// Replaces the password of a URL, if it has one, by `********`: its userinfo password and any
/// `password` / `sslpassword` query parameter. Works on text the URL parser refuses too (libpq's
/// multi-host `postgres://u:p@h1:5432,h2:5432/db`).
pub fn mask_url(raw: &str) -> String {
    mask_secrets(raw)
}

const MASK: &str = "********";

/// Hides every secret a piece of text may carry — a configuration value, an error message that
/// quotes a TOML line, a URL: the password in `scheme://user:password@host` and the value of any
/// `password=` or `sslpassword=` parameter (URL query or libpq key=value), or of a `pass=`
/// parameter (the redis client's socket URLs).
pub fn mask_secrets(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    // Userinfo passwords: after each "://", in the word before any white space or quote. The
    // two parsers disagree on where the password ends, and both readings are masked:
    // tokio-postgres takes it up to the first '@' even when it holds '/', '?' or '#' (base64
    // passwords do); the URL parser (Redis) up to the last '@' before the path, so a password
    // may hold an '@'. When an '@' is in fact in the path or query, more is masked than needed,
    // never less.
    while let Some(at) = rest.find("://") {
        let (head, tail) = rest.split_at(at + 3);
        out.push_str(head);
        let end = tail
            .find([' ', '\t', '\n', '"', '\''])
            .unwrap_or(tail.len());
        let word = &tail[..end];
        let authority = &word[..word.find(['/', '?', '#']).unwrap_or(word.len())];
        match authority.rfind('@').max(word.find('@')) {
            Some(at) if word[..at].contains(':') => {
                let user_end = word.find(':').expect("checked above");
                out.push_str(&word[..=user_end]);
                out.push_str(MASK);
                out.push_str(&word[at..]);
            }
            _ => out.push_str(word),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    mask_password_parameters(&out)
}

/// `password=…`, `sslpassword=…` (any key ending in `password`, any letter case) and a `pass=`
/// key → `password=********`, `pass=********`.
fn mask_password_parameters(text: &str) -> String {
    let lower = text.to_ascii_lowercase();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut from = 0;
    while let Some(start) = next_secret_value(&lower, from) {
        let end = value_end(text, start);
        out.push_str(&text[copied..start]);
        if end > start {
            out.push_str(MASK);
        }
        copied = end;
        from = end.max(start);
    }
    out.push_str(&text[copied..]);
    out
}

/// Where the next secret parameter's value starts in `lower` (the text in lower case), from
/// `from` on.
fn next_secret_value(lower: &str, from: usize) -> Option<usize> {
    let password = lower[from..]
        .find("password=")
        .map(|i| from + i + "password=".len());
    // `pass` only as a whole key: `bypass=` or `compass=` is no secret.
    let pass = lower[from..]
        .match_indices("pass=")
        .map(|(i, _)| from + i)
        .find(|&i| i == 0 || lower[..i].ends_with(['?', '&', ' ', '\t', '\n', '"', '\'']))
        .map(|i| i + "pass=".len());
    password.into_iter().chain(pass).min()
}

/// Where a parameter's value that starts at `start` ends. A quoted value (libpq's
/// key='value', where a backslash escapes the next character) runs to its closing quote; any
/// other up to the next parameter or white space. Not at '#': tokio-postgres keeps it in the
/// value, and a fragment masked too costs nothing.
fn value_end(text: &str, start: usize) -> usize {
    let value = &text.as_bytes()[start..];
    match value.first() {
        Some(&quote @ (b'\'' | b'"')) => {
            let mut i = 1;
            while i < value.len() {
                match value[i] {
                    b'\\' => i += 2,
                    b if b == quote => return start + i + 1,
                    _ => i += 1,
                }
            }
            text.len()
        }
        _ => text[start..]
            .find(['&', ' ', '\t', '\n', '"', '\''])
            .map_or(text.len(), |e| start + e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn every_place_a_password_can_stand_is_masked() {
        for (raw, shown) in [
            (
                "postgres://app:s3cret@db:5432/trading_system",
                "postgres://app:********@db:5432/trading_system",
            ),
            (
                "postgres://app@db/trading_system?password=s3cret&sslmode=require",
                "postgres://app@db/trading_system?password=********&sslmode=require",
            ),
            (
                "postgres://app@db/t?sslpassword=k3y&PASSWORD=s3cret",
                "postgres://app@db/t?sslpassword=********&PASSWORD=********",
            ),
            (
                "postgres://app:s3cret@h1:5432,h2:5432/t?target_session_attrs=read-write",
                "postgres://app:********@h1:5432,h2:5432/t?target_session_attrs=read-write",
            ),
            (
                "rediss://:s3cret@cache:6380/0",
                "rediss://:********@cache:6380/0",
            ),
            ("redis://cache:6379/0", "redis://cache:6379/0"),
            (
                "host=db user=app password=s3cret dbname=t",
                "host=db user=app password=******** dbname=t",
            ),
            (
                "url = \"postgres://app:s3cret@db/t\nmore",
                "url = \"postgres://app:********@db/t\nmore",
            ),
            (
                "postgres://app:pa/ss?w#rd@db/t",
                "postgres://app:********@db/t",
            ),
            (
                "host=db password='s3 cret' dbname=t",
                "host=db password=******** dbname=t",
            ),
            (
                "host=db password=\"s3 cret\" dbname=t",
                "host=db password=******** dbname=t",
            ),
            // tokio-postgres keeps a '#' in a parameter's value.
            (
                "postgres://app:pa?ss@db/t?password=s#3&x=1",
                "postgres://app:********@db/t?password=********&x=1",
            ),
            // The URL parser (Redis) takes the password up to the last '@' before the path.
            (
                "redis://:p@ss@cache:6379/0",
                "redis://:********@cache:6379/0",
            ),
            (
                "redis://us@er:p@ss@cache:6379/0",
                "redis://us@er:********@cache:6379/0",
            ),
            // An '@' in the query is not taken for the end of the password...
            (
                "postgres://app:s3cret@db/t?application_name=a@b",
                "postgres://app:********@db/t?application_name=a@b",
            ),
            // ...unless tokio-postgres would read it so: then more is masked, never less.
            (
                "postgres://app:s3/cret@db/t?application_name=a@b",
                "postgres://app:********@db/t?application_name=a@b",
            ),
            // The redis client's socket URLs carry the password as `pass`.
            (
                "redis+unix:///run/redis.sock?db=1&pass=s3cret",
                "redis+unix:///run/redis.sock?db=1&pass=********",
            ),
            (
                "unix:///run/redis.sock?pass=s3cret&db=1",
                "unix:///run/redis.sock?pass=********&db=1",
            ),
            ("compass=north bypass=yes", "compass=north bypass=yes"),
            // libpq's quoted values escape a quote with a backslash.
            (
                r"host=db password='it\'s s3cret' dbname=t",
                "host=db password=******** dbname=t",
            ),
            // Two URLs in one message (a cause chain), each masked.
            (
                "db postgres://a:one@h/t, cache redis://:two@c:6379/0",
                "db postgres://a:********@h/t, cache redis://:********@c:6379/0",
            ),
            ("", ""),
            ("password=", "password="),
        ] {
            assert_eq!(mask_secrets(raw), shown, "{raw}");
            assert_eq!(mask_url(raw), shown, "{raw}");
        }
    }

    /// `read_secret`'s own rules: trailing line breaks dropped (nothing else), an unreadable
    /// or empty file refused under the key given, the path in the message.
    #[test]
    fn secret_files_are_read_as_written() {
        crate::config::testing::jail(|jail| {
            jail.create_file("pw", " s3 cret \r\n\n")?;
            let path = jail.directory().join("pw");
            assert_eq!(read_secret(&path, "k").unwrap(), " s3 cret ");
            assert_eq!(read_secret(Path::new("pw"), "k").unwrap(), " s3 cret ");

            let error = read_secret(Path::new("/nonexistent/pw"), "some.key").unwrap_err();
            assert!(
                error
                    .to_string()
                    .starts_with("some.key: cannot read /nonexistent/pw"),
                "{error}"
            );
            jail.create_file("blank", "\r\n")?;
            let error = read_secret(Path::new("blank"), "some.key").unwrap_err();
            assert!(error.to_string().starts_with("some.key: "), "{error}");
            assert!(error.to_string().ends_with("blank is empty"), "{error}");

            // Relative: in $CREDENTIALS_DIRECTORY when set; absolute: as written.
            jail.create_dir("creds")?;
            jail.create_file("creds/pw", "from-creds\n")?;
            jail.set_env(
                "CREDENTIALS_DIRECTORY",
                jail.directory().join("creds").display(),
            );
            assert_eq!(read_secret(Path::new("pw"), "k").unwrap(), "from-creds");
            assert_eq!(read_secret(&path, "k").unwrap(), " s3 cret ");
            Ok(())
        });
    }

    proptest! {
        /// Whatever surrounds it, a password in a URL's userinfo or a password parameter never
        /// survives masking.
        #[test]
        fn no_password_survives(
            before in "[ -~]{0,20}",
            user in "[a-z]{0,8}",
            secret in "[A-Za-z0-9!$%()*+,;~]{4,20}",
            after in "[ -~]{0,20}",
            as_parameter in any::<bool>(),
        ) {
            let text = if as_parameter {
                format!("{before} postgres://{user}@db/t?password={secret}&x=1 {after}")
            } else {
                format!("{before} postgres://{user}:{secret}@db/t {after}")
            };
            let masked = mask_secrets(&text);
            prop_assert!(!masked.contains(&format!("{secret}@")), "{}", masked);
            prop_assert!(!masked.contains(&format!("={secret}")), "{}", masked);
        }

        /// Exactly the password goes, whichever parser's reading: tokio-postgres's (up to the
        /// first '@', '/', '?' and '#' included) and the URL parser's (up to the last '@' before
        /// the path).
        #[test]
        fn exactly_the_userinfo_password_is_masked(
            user in "[a-z]{0,8}",
            pg_secret in "[A-Za-z0-9!$%()*+,;~/?#]{1,20}",
            redis_secret in "[A-Za-z0-9!$%()*+,;~@]{1,20}",
        ) {
            prop_assert_eq!(
                mask_secrets(&format!("postgres://{user}:{pg_secret}@db:5432/t?sslmode=disable")),
                format!("postgres://{user}:********@db:5432/t?sslmode=disable")
            );
            prop_assert_eq!(
                mask_secrets(&format!("redis://{user}:{redis_secret}@cache:6379/0")),
                format!("redis://{user}:********@cache:6379/0")
            );
        }
    }
}
