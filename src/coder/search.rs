//! coderd's workspace search (`GET /api/v2/workspaces?q=`), spelled as
//! v2.36.1's `coderd/searchquery` parses it. The index's queries are built
//! here and nowhere else; what coderd accepts is proven against the real
//! coderd in `tests/real_coderd.rs` (docs/coder-api.md, "Search terms").

/// Every workspace the token may read, of every owner: no filter. coderd
/// applies the token's rights, so a member's token gets its own.
pub const EVERYTHING: &str = "";

/// The workspaces whose agents coderd counts unhealthy.
pub const UNHEALTHY: &str = "healthy:false";

/// The workspaces coderd calls running (their latest build a start that
/// succeeded): the index asks only for the count.
pub const RUNNING: &str = "status:running";

/// The workspaces with a build under way, one query each (coderd takes one
/// `status:` a query), the commonest first: what a stop, a start or a
/// delete made in Coder looks like until its build ends.
pub const BUILDING: [&str; 4] = ["status:stopping", "status:pending", "status:starting", "status:deleting"];

/// One owner's workspaces, the name in double quotes as coderd's parser
/// takes a value (a quote inside one is dropped: no username has one).
pub fn owner(username: &str) -> String {
    format!("owner:\"{}\"", username.replace('"', ""))
}

/// The workspaces with these ids, of any owners: `id:` takes a
/// comma-separated list (spaces between the ids make coderd answer nothing).
pub fn ids(ids: &[String]) -> String {
    format!("id:{}", ids.join(","))
}

/// The running workspaces among these ids (a page of them), read for the
/// count only: which page of the named workspaces holds one that started
/// or stopped.
pub fn running_among(list: &[String]) -> String {
    format!("{RUNNING} {}", ids(list))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_spelled_as_coderds_parser_takes_them() {
        assert_eq!(owner("alice"), "owner:\"alice\"");
        assert_eq!(owner("a\"b"), "owner:\"ab\"");
        assert_eq!(ids(&["a".to_owned(), "b".to_owned()]), "id:a,b");
        assert_eq!(ids(&[]), "id:");
        assert_eq!(running_among(&["a".to_owned(), "b".to_owned()]), "status:running id:a,b");
    }
}
