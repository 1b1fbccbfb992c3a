//! The workspace search query of `GET /workspaces?q=...`, parsed as coderd
//! does: space-separated `key:value` terms, values optionally quoted, a bare
//! term meaning `name:`.

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WorkspaceFilter {
    /// Username (case-insensitive) or `me`.
    pub owner: Option<String>,
    /// Case-insensitive substring of the workspace name.
    pub name: Option<String>,
    /// Template name (case-insensitive).
    pub template: Option<String>,
    /// Latest build status.
    pub status: Option<String>,
    pub outdated: Option<bool>,
    /// `has-agent:` (comma-separated) and `healthy:`: some agent of the
    /// latest build has one of these statuses. coderd turns `healthy:true`
    /// into `connected` and `healthy:false` into `disconnected,timeout`.
    pub agent_statuses: Vec<String>,
    /// `id:` (comma-separated workspace ids).
    pub ids: Option<Vec<String>>,
}

/// A query term coderd would reject: `(field, detail)`.
pub type QueryError = (String, String);

/// coderd understands these too; the simulator says so instead of silently
/// ignoring them.
const UNSUPPORTED: &[&str] =
    &["organization", "deleted", "dormant", "has-ai-task", "last_used_before", "last_used_after", "param", "shared"];

/// The terms coderd parses as a single value (`has-agent:` and `id:` take
/// several, in one term or many).
const SINGLE: &[&str] = &["owner", "name", "template", "status", "outdated", "healthy"];

pub fn parse(query: &str) -> Result<WorkspaceFilter, Vec<QueryError>> {
    let mut filter = WorkspaceFilter::default();
    let mut errors = Vec::new();
    let mut once = std::collections::HashSet::new();
    for term in split_outside_quotes(query, ' ') {
        let parts = split_outside_quotes(&term, ':');
        let (key, value) = match parts.as_slice() {
            [value] => ("name".to_owned(), unquote(value)),
            [key, value] => (key.to_lowercase(), unquote(value)),
            _ => {
                errors.push(("q".to_owned(), format!("Query element {term:?} can only contain 1 ':'")));
                continue;
            }
        };
        // coderd takes one value of these, and refuses a second term.
        if SINGLE.contains(&key.as_str()) && !once.insert(key.clone()) {
            errors.push((
                key.clone(),
                format!("Query param {key:?} provided more than once, found 2 times. Only provide 1 instance of this query param."),
            ));
            continue;
        }
        match key.as_str() {
            "owner" => filter.owner = Some(value),
            "name" => filter.name = Some(value),
            "template" => filter.template = Some(value),
            "status" => filter.status = Some(value),
            "outdated" => match value.parse() {
                Ok(outdated) => filter.outdated = Some(outdated),
                Err(_) => errors.push((key, format!("Query param \"outdated\" must be a valid boolean: {value:?}"))),
            },
            "has-agent" => filter.agent_statuses.extend(value.split(',').map(|s| s.trim().to_lowercase())),
            "healthy" => match value.parse::<bool>() {
                Ok(true) => filter.agent_statuses.push("connected".into()),
                Ok(false) => filter.agent_statuses.extend(["disconnected".into(), "timeout".into()]),
                Err(_) => errors.push((key, format!("Query param \"healthy\" must be a valid boolean: {value:?}"))),
            },
            "id" => filter.ids.get_or_insert_with(Vec::new).extend(value.split(',').map(|s| s.trim().to_lowercase())),
            known if UNSUPPORTED.contains(&known) => errors.push((
                key.clone(),
                format!("Query param {key:?} is valid in coderd but not supported by the simulator"),
            )),
            _ => errors.push((key.clone(), format!("Query param {key:?} is not a valid query param"))),
        }
    }
    if errors.is_empty() { Ok(filter) } else { Err(errors) }
}

fn split_outside_quotes(text: &str, delimiter: char) -> Vec<String> {
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    for ch in text.chars() {
        match ch {
            '"' => {
                quoted = !quoted;
                current.push(ch);
            }
            _ if ch == delimiter && !quoted => {
                if !current.is_empty() {
                    parts.push(std::mem::take(&mut current));
                }
            }
            _ => current.push(ch),
        }
    }
    if !current.is_empty() {
        parts.push(current);
    }
    parts
}

fn unquote(value: &str) -> String {
    value.trim_matches('"').to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_and_bare_terms() {
        let filter = parse(r#"owner:"alice" name:ws template:docker-dev"#).unwrap();
        assert_eq!(filter.owner.as_deref(), Some("alice"));
        assert_eq!(filter.name.as_deref(), Some("ws"));
        assert_eq!(filter.template.as_deref(), Some("docker-dev"));
        assert_eq!(parse("fix-bug").unwrap().name.as_deref(), Some("fix-bug"));
    }

    #[test]
    fn quoted_values_may_hold_spaces() {
        assert_eq!(parse(r#"name:"a b""#).unwrap().name.as_deref(), Some("a b"));
    }

    #[test]
    fn unknown_keys_are_errors() {
        let errors = parse("colour:blue").unwrap_err();
        assert_eq!(errors[0].0, "colour");
    }

    #[test]
    fn agent_health_and_ids() {
        let filter = parse("owner:alice healthy:false").unwrap();
        assert_eq!(filter.agent_statuses, ["disconnected", "timeout"]);
        let filter = parse("has-agent:connecting,connected").unwrap();
        assert_eq!(filter.agent_statuses, ["connecting", "connected"]);
        let filter = parse("id:A,b").unwrap();
        assert_eq!(filter.ids, Some(vec!["a".to_string(), "b".to_string()]));
        assert!(parse("healthy:maybe").is_err());
        // One owner and one status per query, as coderd has it; ids and
        // agent statuses in any number.
        assert!(parse("owner:alice owner:bob").is_err());
        assert!(parse("status:running status:starting").is_err());
        let filter = parse("id:a,b id:c has-agent:connected has-agent:timeout").unwrap();
        assert_eq!(filter.ids.unwrap(), ["a", "b", "c"]);
        assert_eq!(filter.agent_statuses, ["connected", "timeout"]);
    }

    #[test]
    fn empty_query_matches_everything() {
        assert_eq!(parse("").unwrap(), WorkspaceFilter::default());
    }
}
