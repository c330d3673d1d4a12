//! The admin API's bearer token: read once from a file, compared in constant time, never shown.
//!
//! The file must be private to its owner (like an ssh key): a token any local user can read
//! would let every local user drain regions. It holds one token; surrounding whitespace (the
//! newline `openssl rand -hex 32 > admin.token` writes) is ignored.
//!
//! Comparison is by HMAC under a key drawn at start-up: the presented token's tag is checked
//! against the real token's with ring's constant-time `hmac::verify`, so neither the token's
//! bytes nor its length can be learnt from response timing.

use std::{
    fmt,
    path::{Path, PathBuf},
};

use ring::hmac;

/// Why the admin API cannot start (or `meridian ctl` cannot authenticate).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AdminError {
    #[error("admin token file {path}: cannot read it: {message}")]
    TokenUnreadable { path: PathBuf, message: String },
    #[error(
        "admin token file {path} is readable by group or others (mode {mode:04o}); \
         restrict it: chmod 600 {path}"
    )]
    TokenFileExposed { path: PathBuf, mode: u32 },
    #[error("admin token file {path} is empty")]
    TokenEmpty { path: PathBuf },
    #[error(
        "admin token file {path}: the token must be printable ASCII without spaces \
         (it travels in an HTTP header); e.g. `openssl rand -hex 32`"
    )]
    TokenNotPrintable { path: PathBuf },
    #[error("the system random generator failed; cannot key the admin token comparison")]
    RandomUnavailable,
}

/// A bearer token. `Debug` and `Display` are redacted so it never reaches a log.
#[derive(Clone)]
pub struct AdminToken {
    secret: Box<str>,
    /// Random per process; only ever used to compare.
    key: hmac::Key,
    /// `HMAC(key, secret)`.
    tag: hmac::Tag,
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

impl AdminToken {
    /// Reads the token, refusing a file that group or others may read.
    pub fn from_file(path: &Path) -> Result<AdminToken, AdminError> {
        let unreadable = |error: std::io::Error| AdminError::TokenUnreadable {
            path: path.to_path_buf(),
            message: error.to_string(),
        };
        let metadata = std::fs::metadata(path).map_err(unreadable)?;
        check_private(path, &metadata)?;
        let text = std::fs::read_to_string(path).map_err(unreadable)?;
        AdminToken::parse(&text, path)
    }

    /// The token in `text` (the file's contents); `path` only names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<AdminToken, AdminError> {
        let token = text.trim();
        if token.is_empty() {
            return Err(AdminError::TokenEmpty {
                path: path.to_path_buf(),
            });
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(AdminError::TokenNotPrintable {
                path: path.to_path_buf(),
            });
        }
        let key = hmac::Key::generate(hmac::HMAC_SHA256, &ring::rand::SystemRandom::new())
            .map_err(|_| AdminError::RandomUnavailable)?;
        let tag = hmac::sign(&key, token.as_bytes());
        Ok(AdminToken {
            secret: token.into(),
            key,
            tag,
        })
    }

    /// Whether `presented` is this token, in time independent of the token.
    pub fn matches(&self, presented: &[u8]) -> bool {
        hmac::verify(&self.key, presented, self.tag.as_ref()).is_ok()
    }

    /// Whether `headers` carry `Authorization: Bearer <this token>`: the one check behind both
    /// admin APIs (the DNS node's and the relay's).
    pub fn authorizes(&self, headers: &http::HeaderMap) -> bool {
        let Some(value) = headers.get(http::header::AUTHORIZATION) else {
            return false;
        };
        // The scheme is case-insensitive (RFC 9110 §11.1).
        let Some((scheme, credentials)) = value.as_bytes().split_at_checked(7) else {
            return false;
        };
        scheme.eq_ignore_ascii_case(b"Bearer ") && self.matches(credentials.trim_ascii())
    }

    /// The token itself, for a client that must send it. Never log it.
    pub fn reveal(&self) -> &str {
        &self.secret
    }
}

#[cfg(unix)]
fn check_private(path: &Path, metadata: &std::fs::Metadata) -> Result<(), AdminError> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = metadata.permissions().mode() & 0o7777;
    if mode & 0o044 != 0 {
        return Err(AdminError::TokenFileExposed {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_path: &Path, _metadata: &std::fs::Metadata) -> Result<(), AdminError> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> &'static Path {
        Path::new("/etc/meridian/admin.token")
    }

    #[test]
    fn parses_trimmed_tokens_and_rejects_bad_ones() {
        let token = AdminToken::parse("  s3cret-token\n", p()).unwrap();
        assert!(token.matches(b"s3cret-token"));
        assert!(!token.matches(b"s3cret-toke"));
        assert!(!token.matches(b"s3cret-tokenx"));
        assert!(!token.matches(b"S3cret-token"));
        assert!(!token.matches(b""));
        assert_eq!(
            AdminToken::parse(" \n", p()).unwrap_err(),
            AdminError::TokenEmpty { path: p().into() }
        );
        assert_eq!(
            AdminToken::parse("two words", p()).unwrap_err(),
            AdminError::TokenNotPrintable { path: p().into() }
        );
        assert_eq!(
            AdminToken::parse("caf\u{e9}", p()).unwrap_err(),
            AdminError::TokenNotPrintable { path: p().into() }
        );
    }

    #[test]
    fn only_the_exact_bearer_token_authorizes() {
        let token = AdminToken::parse("tok3n", p()).unwrap();
        let cases: &[(Option<&str>, bool)] = &[
            (Some("Bearer tok3n"), true),
            (Some("bearer tok3n"), true),
            (Some("Bearer  tok3n "), true),
            (Some("Bearer tok3"), false),
            (Some("Bearer tok3nn"), false),
            (Some("Basic tok3n"), false),
            (Some("tok3n"), false),
            (Some("Bearer"), false),
            (None, false),
        ];
        for (value, ok) in cases {
            let mut headers = http::HeaderMap::new();
            if let Some(value) = value {
                headers.insert(http::header::AUTHORIZATION, value.parse().unwrap());
            }
            assert_eq!(token.authorizes(&headers), *ok, "{value:?}");
        }
    }

    #[test]
    fn debug_output_is_redacted() {
        let token = AdminToken::parse("hunter2", p()).unwrap();
        assert!(!format!("{token:?}").contains("hunter2"));
    }

    #[cfg(unix)]
    #[test]
    fn refuses_files_others_can_read() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.token");
        std::fs::write(&path, "abc123\n").unwrap();
        for (mode, ok) in [(0o600, true), (0o400, true), (0o640, false), (0o604, false)] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let got = AdminToken::from_file(&path);
            assert_eq!(got.is_ok(), ok, "mode {mode:o}: {got:?}");
            if !ok {
                let message = got.unwrap_err().to_string();
                assert!(message.contains("chmod 600"), "{message}");
                assert!(!message.contains("abc123"), "{message}");
            }
        }
        let missing = AdminToken::from_file(&dir.path().join("nope")).unwrap_err();
        assert!(matches!(missing, AdminError::TokenUnreadable { .. }));
    }
}
