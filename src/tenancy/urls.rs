//! The Coder URLs a namespace's Secret (`spec.credentialsRef`) may name.
//!
//! The operator runs with its own network position: without a check, a
//! namespace could make it send requests to any address it can reach (an
//! internal service, a cloud metadata endpoint). The operator's admin lists
//! the allowed origins; by default only the default Coder URL's.

use std::fmt;

use reqwest::Url;

/// An origin: scheme, host and port (the default port of the scheme when
/// the URL names none).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Origin {
    scheme: String,
    host: String,
    port: u16,
}

impl Origin {
    fn of(text: &str) -> Result<Origin, String> {
        let url = Url::parse(text.trim()).map_err(|error| format!("{text:?} is not a URL: {error}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("{text:?} is not an http or https URL"));
        }
        let host = url.host_str().ok_or_else(|| format!("{text:?} has no host"))?.to_lowercase();
        let port = url.port_or_known_default().ok_or_else(|| format!("{text:?} has no port"))?;
        Ok(Origin { scheme: url.scheme().to_owned(), host, port })
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}:{}", self.scheme, self.host, self.port)
    }
}

/// The allow-list. Empty: no Secret URL is allowed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllowedUrls {
    any: bool,
    origins: Vec<Origin>,
}

impl AllowedUrls {
    /// `entries`: URLs whose origins are allowed (a path is ignored), or `*`
    /// for any URL. `default_url`, the operator's default Coder URL, is
    /// allowed when `entries` is empty.
    pub fn new(entries: &[String], default_url: Option<&str>) -> Result<AllowedUrls, String> {
        let entries: Vec<&str> = entries.iter().map(|e| e.trim()).filter(|e| !e.is_empty()).collect();
        if entries.contains(&"*") {
            return Ok(AllowedUrls { any: true, origins: Vec::new() });
        }
        let chosen: Vec<&str> = if entries.is_empty() { default_url.into_iter().collect() } else { entries };
        let origins = chosen.into_iter().map(Origin::of).collect::<Result<_, _>>()?;
        Ok(AllowedUrls { any: false, origins })
    }

    /// Any URL (for tests and single-tenant installs).
    pub fn any() -> AllowedUrls {
        AllowedUrls { any: true, origins: Vec::new() }
    }

    /// Whether `url`'s origin is on the list. A URL that does not parse is
    /// not allowed.
    pub fn allows(&self, url: &str) -> bool {
        if self.any {
            return true;
        }
        Origin::of(url).is_ok_and(|origin| self.origins.contains(&origin))
    }
}

impl fmt::Display for AllowedUrls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.any {
            return f.write_str("any URL");
        }
        if self.origins.is_empty() {
            return f.write_str("no URL");
        }
        let origins: Vec<String> = self.origins.iter().map(Origin::to_string).collect();
        f.write_str(&origins.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(entries: &[&str], default: Option<&str>) -> AllowedUrls {
        AllowedUrls::new(&entries.iter().map(|e| e.to_string()).collect::<Vec<_>>(), default).unwrap()
    }

    #[test]
    fn by_default_only_the_default_urls_origin() {
        let allowed = list(&[], Some("https://coder.example.com/prefix"));
        assert!(allowed.allows("https://coder.example.com"));
        assert!(allowed.allows("https://CODER.example.com:443/other/path"));
        assert!(!allowed.allows("http://coder.example.com"), "another scheme is another origin");
        assert!(!allowed.allows("https://coder.example.com:8443"));
        assert!(!allowed.allows("https://coder.example.com.evil.test"));
        assert!(!allowed.allows("http://169.254.169.254/latest/meta-data"));
        assert!(!allowed.allows("not a url"));
    }

    #[test]
    fn without_a_default_url_nothing_is_allowed() {
        let allowed = list(&[], None);
        assert!(!allowed.allows("https://coder.example.com"));
        assert_eq!(allowed.to_string(), "no URL");
    }

    #[test]
    fn an_explicit_list_replaces_the_default() {
        let allowed = list(&["https://a.example.com", "http://127.0.0.1:3000"], Some("https://coder.example.com"));
        assert!(allowed.allows("https://a.example.com/"));
        assert!(allowed.allows("http://127.0.0.1:3000"));
        assert!(!allowed.allows("http://127.0.0.1:3001"));
        assert!(!allowed.allows("https://coder.example.com"));
    }

    #[test]
    fn a_star_allows_any_url() {
        assert!(list(&["*"], None).allows("http://10.0.0.1:1234"));
        assert!(AllowedUrls::any().allows("https://x.test"));
    }

    #[test]
    fn rejects_bad_entries() {
        assert!(AllowedUrls::new(&["ftp://x.test".into()], None).is_err());
        assert!(AllowedUrls::new(&["x.test".into()], None).is_err());
    }
}
