//! The Coder session token, kept out of every log, error and debug print.

use std::borrow::Cow;
use std::fmt;
use std::path::{Path, PathBuf};

use reqwest::header::HeaderValue;

/// What replaces the token wherever it would otherwise be shown.
pub(crate) const REDACTED: &str = "[redacted]";

/// A Coder API token (`Coder-Session-Token`).
///
/// `Debug` and `Display` print `[redacted]` and there is no `Serialize`, so the
/// token cannot leak through logs, events or status by accident. Only the
/// client reads it, to set the request header.
#[derive(Clone)]
pub struct SessionToken {
    secret: String,
    /// Built once so a request never has to handle an invalid header value;
    /// marked sensitive so HTTP-level debug output hides it too.
    header: HeaderValue,
}

/// Why a session token was rejected.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("the Coder session token is empty")]
    Empty,
    #[error(
        "the Coder session token contains characters an HTTP header cannot carry \
         (only visible ASCII is allowed)"
    )]
    InvalidCharacters,
    #[error("cannot read the Coder session token from {path}: {reason}")]
    Read { path: PathBuf, reason: String },
}

impl SessionToken {
    /// Takes a token as pasted by a person or read from a Secret: surrounding
    /// whitespace (a trailing newline is common) is dropped.
    pub fn new(token: impl AsRef<str>) -> Result<Self, TokenError> {
        let secret = token.as_ref().trim();
        if secret.is_empty() {
            return Err(TokenError::Empty);
        }
        if !secret.bytes().all(|byte| byte.is_ascii_graphic()) {
            return Err(TokenError::InvalidCharacters);
        }
        let mut header = HeaderValue::from_str(secret).map_err(|_| TokenError::InvalidCharacters)?;
        header.set_sensitive(true);
        Ok(Self { secret: secret.to_owned(), header })
    }

    /// Reads a token from a file, such as a mounted Secret.
    pub fn from_file(path: &Path) -> Result<Self, TokenError> {
        let contents = std::fs::read_to_string(path).map_err(|error| TokenError::Read {
            path: path.to_owned(),
            // The io error names the failure, never the file's contents.
            reason: error.to_string(),
        })?;
        Self::new(contents)
    }

    /// The token itself. Only for setting the request header.
    pub fn expose(&self) -> &str {
        &self.secret
    }

    pub(crate) fn header_value(&self) -> &HeaderValue {
        &self.header
    }

    /// Replaces the token in text that came from elsewhere (a server message
    /// that echoes the request, a transport error) before it is shown.
    pub(crate) fn redact<'a>(&self, text: &'a str) -> Cow<'a, str> {
        if text.contains(self.secret.as_str()) {
            Cow::Owned(text.replace(self.secret.as_str(), REDACTED))
        } else {
            Cow::Borrowed(text)
        }
    }
}

impl fmt::Debug for SessionToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SessionToken").field(&REDACTED).finish()
    }
}

impl fmt::Display for SessionToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "a1b2c3d4e5-f6g7h8i9j0k1l2m3n4o5p6q7";

    #[test]
    fn trims_surrounding_whitespace() {
        let token = SessionToken::new(format!("  {SECRET}\n")).unwrap();
        assert_eq!(token.expose(), SECRET);
    }

    #[test]
    fn rejects_empty_and_blank_tokens() {
        assert!(matches!(SessionToken::new(""), Err(TokenError::Empty)));
        assert!(matches!(SessionToken::new(" \n\t"), Err(TokenError::Empty)));
    }

    #[test]
    fn rejects_characters_a_header_cannot_carry() {
        for bad in ["abc def", "abc\ndef", "tökén"] {
            assert!(matches!(SessionToken::new(bad), Err(TokenError::InvalidCharacters)), "{bad:?} was accepted");
        }
    }

    #[test]
    fn debug_and_display_hide_the_token() {
        let token = SessionToken::new(SECRET).unwrap();
        let debug = format!("{token:?}");
        let display = token.to_string();
        assert!(!debug.contains(SECRET), "{debug}");
        assert!(!display.contains(SECRET), "{display}");
        assert!(debug.contains(REDACTED));
        assert_eq!(display, REDACTED);
    }

    #[test]
    fn header_value_is_sensitive() {
        let token = SessionToken::new(SECRET).unwrap();
        assert!(token.header_value().is_sensitive());
        assert!(!format!("{:?}", token.header_value()).contains(SECRET));
    }

    #[test]
    fn redact_replaces_every_occurrence() {
        let token = SessionToken::new(SECRET).unwrap();
        let echoed = format!("bad token {SECRET} (was {SECRET})");
        assert_eq!(token.redact(&echoed), "bad token [redacted] (was [redacted])");
        assert!(matches!(token.redact("nothing here"), Cow::Borrowed(_)));
    }

    #[test]
    fn reads_a_token_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, format!("{SECRET}\n")).unwrap();
        assert_eq!(SessionToken::from_file(&path).unwrap().expose(), SECRET);

        std::fs::write(&path, "\n").unwrap();
        assert!(matches!(SessionToken::from_file(&path), Err(TokenError::Empty)));
    }

    #[test]
    fn missing_file_error_names_the_path() {
        let error = SessionToken::from_file(Path::new("/nonexistent/coder-token")).unwrap_err();
        assert!(error.to_string().contains("/nonexistent/coder-token"));
    }
}
