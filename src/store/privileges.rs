//! The privileges a MongoDB user needs, compared at start with those the
//! server says it has (`connectionStatus` with `showPrivileges`): a missing
//! `insert` then shows before a token is fetched that could not be stored,
//! and every missing action shows at once. A server that lists no
//! privileges for an authenticated user (SecantusDB, the test server, does
//! not) is not checked here: each refusal then shows when it happens
//! ([`wxtokend_reader::Refused`]).

use mongodb::bson::{doc, Bson, Document};
use mongodb::error::ErrorKind;

use super::{Store, StoreError};

/// Where the README explains users and roles.
const SEE: &str = "see the README, \"MongoDB: TLS, users and roles\"";

/// Actions the user needs on one collection.
pub type Needed = (&'static str, &'static [&'static str]);

/// Privileges the connection string's user lacks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the MongoDB user of the connection string lacks {}: grant it the role wxtokend; {SEE}",
    describe(.database, .missing)
)]
pub struct MissingPrivileges {
    pub database: String,
    /// (collection, action), in the order they were asked for.
    pub missing: Vec<(&'static str, &'static str)>,
}

fn describe(database: &str, missing: &[(&'static str, &'static str)]) -> String {
    let mut by_collection: Vec<(&str, Vec<&str>)> = Vec::new();
    for (collection, action) in missing {
        match by_collection.iter_mut().find(|(c, _)| c == collection) {
            Some((_, actions)) => actions.push(action),
            None => by_collection.push((collection, vec![action])),
        }
    }
    by_collection
        .iter()
        .map(|(collection, actions)| format!("{} on {database}.{collection}", actions.join(", ")))
        .collect::<Vec<_>>()
        .join("; ")
}

impl Store {
    /// The user's privileges as the server lists them (`connectionStatus`
    /// with `showPrivileges`); `None` when the server cannot say (it
    /// refused or does not know the command: a proxy, a compatible
    /// service), with a warning.
    pub async fn privileges(&self) -> Result<Option<Document>, StoreError> {
        let status = self
            .database()
            .run_command(doc! { "connectionStatus": 1, "showPrivileges": true })
            .await;
        match status {
            Ok(status) => Ok(Some(status)),
            Err(e) if matches!(e.kind.as_ref(), ErrorKind::Command(_)) => {
                tracing::warn!(
                    "MongoDB does not list this user's privileges (connectionStatus failed); \
                     a missing one shows when it is refused"
                );
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }
}

impl MissingPrivileges {
    /// Compares `needed` with the privileges in a `connectionStatus`
    /// answer; `None` when nothing is missing or there is nothing to
    /// compare with.
    pub fn compare(database: &str, status: Option<&Document>, needed: &[Needed]) -> Option<Self> {
        missing(database, status?, needed)
    }
}

/// Compares `needed` with the privileges in a `connectionStatus` answer.
fn missing(database: &str, status: &Document, needed: &[Needed]) -> Option<MissingPrivileges> {
    let info = status.get_document("authInfo").ok()?;
    let authenticated = info
        .get_array("authenticatedUsers")
        .is_ok_and(|users| !users.is_empty());
    let privileges = info.get_array("authenticatedUserPrivileges").ok()?;
    if !authenticated || privileges.is_empty() {
        return None;
    }
    let privileges: Vec<&Document> = privileges.iter().filter_map(Bson::as_document).collect();
    let missing: Vec<(&'static str, &'static str)> = needed
        .iter()
        .flat_map(|(collection, actions)| actions.iter().map(move |action| (*collection, *action)))
        .filter(|(collection, action)| {
            !privileges
                .iter()
                .any(|privilege| grants(privilege, database, collection, action))
        })
        .collect();
    Some(MissingPrivileges {
        database: database.to_owned(),
        missing,
    })
    .filter(|m| !m.missing.is_empty())
}

/// Whether one privilege (`{resource, actions}`) allows `action` on
/// `database.collection`. Resources, as MongoDB documents them: a
/// collection, every collection of a database (`collection: ""`), a
/// collection of that name in every database (`db: ""`), every collection
/// (both empty), or `anyResource`; `anyAction` allows every action.
fn grants(privilege: &Document, database: &str, collection: &str, action: &str) -> bool {
    let allows = privilege.get_array("actions").is_ok_and(|actions| {
        actions
            .iter()
            .any(|a| matches!(a.as_str(), Some(a) if a == action || a == "anyAction"))
    });
    let Ok(resource) = privilege.get_document("resource") else {
        return false;
    };
    let covers = resource.get_bool("anyResource").unwrap_or(false)
        || match (resource.get_str("db"), resource.get_str("collection")) {
            (Ok(db), Ok(coll)) => {
                (db.is_empty() || db == database) && (coll.is_empty() || coll == collection)
            }
            _ => false,
        };
    allows && covers
}

#[cfg(test)]
mod tests {
    use super::*;

    const NEEDED: &[Needed] = &[
        ("access_tokens", &["find", "insert", "listIndexes"]),
        ("leases", &["find", "update"]),
    ];

    /// A `connectionStatus` answer as mongod gives it (from MongoDB's
    /// documentation of the command).
    fn status(privileges: Vec<Document>) -> Document {
        doc! {
            "authInfo": {
                "authenticatedUsers": [{ "user": "wxtokend", "db": "wechat" }],
                "authenticatedUserRoles": [{ "role": "wxtokend", "db": "wechat" }],
                "authenticatedUserPrivileges": privileges,
            },
            "ok": 1.0,
        }
    }

    #[test]
    fn a_role_with_everything_lacks_nothing() {
        let exact = status(vec![
            doc! { "resource": { "db": "wechat", "collection": "access_tokens" }, "actions": ["find", "insert", "listIndexes"] },
            doc! { "resource": { "db": "wechat", "collection": "leases" }, "actions": ["update", "find"] },
        ]);
        assert_eq!(missing("wechat", &exact, NEEDED), None);
        // readWrite on the database, readWriteAnyDatabase, root.
        for resource in [
            doc! { "db": "wechat", "collection": "" },
            doc! { "db": "", "collection": "" },
            doc! { "anyResource": true },
        ] {
            let wide = status(vec![doc! {
                "resource": resource,
                "actions": ["find", "insert", "listIndexes", "update"],
            }]);
            assert_eq!(missing("wechat", &wide, NEEDED), None);
        }
        let root = status(vec![
            doc! { "resource": { "anyResource": true }, "actions": ["anyAction"] },
        ]);
        assert_eq!(missing("wechat", &root, NEEDED), None);
    }

    #[test]
    fn every_missing_action_is_named_with_its_collection() {
        let partial = status(vec![
            doc! { "resource": { "db": "wechat", "collection": "access_tokens" }, "actions": ["find"] },
            // Another database's grant does not count.
            doc! { "resource": { "db": "other", "collection": "" }, "actions": ["insert", "update"] },
            doc! { "resource": { "db": "wechat", "collection": "leases" }, "actions": ["find"] },
        ]);
        let missing = missing("wechat", &partial, NEEDED).expect("missing privileges");
        assert_eq!(
            missing.missing,
            [
                ("access_tokens", "insert"),
                ("access_tokens", "listIndexes"),
                ("leases", "update")
            ]
        );
        let text = missing.to_string();
        assert!(
            text.contains("insert, listIndexes on wechat.access_tokens; update on wechat.leases")
                && text.contains("role wxtokend"),
            "{text}"
        );
    }

    #[test]
    fn nothing_is_compared_without_a_user_or_without_a_list() {
        let no_user =
            doc! { "authInfo": { "authenticatedUsers": [], "authenticatedUserPrivileges": [] } };
        assert_eq!(missing("wechat", &no_user, NEEDED), None);
        // SecantusDB: a user, and no privileges listed.
        assert_eq!(missing("wechat", &status(vec![]), NEEDED), None);
        assert_eq!(missing("wechat", &doc! { "ok": 1.0 }, NEEDED), None);
    }
}
