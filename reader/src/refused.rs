//! MongoDB refusing this client: the connection string's user cannot log
//! in (authentication), or lacks a privilege for a command (authorization,
//! `Unauthorized`, code 13). Neither is fixed by trying again, so each is
//! said with what to change, and never with the server's own message, which
//! may quote the refused command and the documents it carried.

use mongodb::error::{Error as MongoError, ErrorKind, WriteFailure};

/// MongoDB's `Unauthorized`.
const UNAUTHORIZED: i32 = 13;
/// MongoDB's `AuthenticationFailed`.
const AUTHENTICATION_FAILED: i32 = 18;

/// Where the README explains users and roles.
const SEE: &str = "see the README, \"MongoDB: TLS, users and roles\"";

/// A refusal by MongoDB that only a change of user, password or role fixes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The user or password of the connection string is wrong, or the user
    /// does not exist in its `authSource` database.
    #[error(
        "MongoDB refused the user of the connection string ({reason}): check the user name, \
         the password and authSource, or create the user; {SEE}"
    )]
    Authentication {
        /// The driver's reason, which never holds the password.
        reason: String,
    },
    /// The server requires a user and the connection string names none.
    #[error(
        "MongoDB requires authentication to run {command}: put a user and its password in the \
         connection string (mongodb://USER:PASSWORD@HOST/?authSource=DATABASE); {SEE}"
    )]
    Unauthenticated { command: String },
    /// The user lacks the privilege a command needs.
    #[error(
        "MongoDB refused {command} on {namespace} (Unauthorized, code 13): the user lacks the \
         action {actions} on {namespace}; grant it the role wxtokend (the daemon) or \
         wxtokendReader (business hosts); {SEE}"
    )]
    Unauthorized {
        command: String,
        /// `database.collection`, or the database alone when the server's
        /// message names no collection.
        namespace: String,
        /// The privilege actions the command needs, as MongoDB names them.
        actions: &'static str,
    },
}

impl Refused {
    /// The refusal `error` is, if it is one.
    pub fn of(error: &MongoError) -> Option<Refused> {
        if let ErrorKind::Authentication { message, .. } = error.kind.as_ref() {
            // The driver reports any failed answer to the login as an
            // authentication error, a server shutting down or stepping
            // down included: only the server's AuthenticationFailed (or,
            // where it sent no code, its words for it) is a refusal.
            let code = std::error::Error::source(error)
                .and_then(|source| source.downcast_ref::<MongoError>())
                .and_then(server_error)
                .map(|(code, _)| code);
            let refused = match code {
                Some(code) => code == AUTHENTICATION_FAILED,
                None => message
                    .to_ascii_lowercase()
                    .contains("authentication failed"),
            };
            return refused.then(|| Refused::Authentication {
                reason: message.clone(),
            });
        }
        let (code, message) = server_error(error)?;
        match code {
            AUTHENTICATION_FAILED => Some(Refused::Authentication {
                reason: "AuthenticationFailed".into(),
            }),
            UNAUTHORIZED => Some(unauthorized(message)),
            _ => None,
        }
    }
}

/// The server's code and message, for command and write errors.
fn server_error(error: &MongoError) -> Option<(i32, &str)> {
    match error.kind.as_ref() {
        ErrorKind::Command(e) => Some((e.code, e.message.as_str())),
        ErrorKind::Write(WriteFailure::WriteError(e)) => Some((e.code, e.message.as_str())),
        ErrorKind::Write(WriteFailure::WriteConcernError(e)) => Some((e.code, e.message.as_str())),
        ErrorKind::InsertMany(e) => e
            .write_errors
            .as_ref()?
            .first()
            .map(|w| (w.code, w.message.as_str())),
        _ => None,
    }
}

/// Reads what was refused from MongoDB's two messages for code 13:
/// `Command NAME requires authentication`, and `not authorized on DB to
/// execute command { NAME: "COLLECTION", ... }` (only its start is read).
fn unauthorized(message: &str) -> Refused {
    let lower = message.to_ascii_lowercase();
    if let Some(command) = lower
        .strip_prefix("command ")
        .and_then(|rest| rest.strip_suffix(" requires authentication"))
    {
        // The name as the server wrote it (mongod capitalises "Command").
        let at = "command ".len();
        let command = message.get(at..at + command.len()).unwrap_or(command);
        return Refused::Unauthenticated {
            command: command.to_owned(),
        };
    }
    let parsed = message
        .strip_prefix("not authorized on ")
        .and_then(|rest| rest.split_once(" to execute command { "))
        .map(|(db, command)| {
            let (name, rest) = command.split_once(':').unwrap_or((command, ""));
            // mongod writes the name bare, SecantusDB in quotes.
            let name = name.trim().trim_matches('"');
            let collection = rest
                .trim_start()
                .strip_prefix('"')
                .and_then(|rest| rest.split_once('"'))
                .map(|(collection, _)| collection);
            (db, name, collection)
        });
    match parsed {
        Some((db, command, collection)) => Refused::Unauthorized {
            command: command.to_owned(),
            namespace: match collection {
                Some(collection) => format!("{db}.{collection}"),
                None => db.to_owned(),
            },
            actions: actions(command),
        },
        None => Refused::Unauthorized {
            command: "a command".into(),
            namespace: "this database".into(),
            actions: "that the command needs",
        },
    }
}

/// The privilege actions a command needs (MongoDB's "Privilege Actions").
fn actions(command: &str) -> &'static str {
    match command {
        "find" | "count" | "distinct" | "aggregate" | "getMore" => "find",
        "insert" => "insert",
        "update" => "update (and insert, for an upsert)",
        "delete" => "remove",
        "findAndModify" => "find and update (and insert, for an upsert)",
        "createIndexes" => "createIndex",
        "collMod" => "collMod",
        "listIndexes" => "listIndexes",
        _ => "that the command needs",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_command_the_collection_and_the_action() {
        let refused = unauthorized(
            "not authorized on wechat to execute command { createIndexes: \"access_tokens\", \
             indexes: [ { key: { app_id: 1 } } ], $db: \"wechat\" }",
        );
        assert_eq!(
            refused,
            Refused::Unauthorized {
                command: "createIndexes".into(),
                namespace: "wechat.access_tokens".into(),
                actions: "createIndex",
            }
        );
        let text = refused.to_string();
        assert!(
            text.contains("createIndex on wechat.access_tokens"),
            "{text}"
        );
        assert!(text.contains("role wxtokend"), "{text}");
    }

    #[test]
    fn reads_the_quoted_form_too() {
        assert_eq!(
            unauthorized(
                "not authorized on wechat to execute command { \"collMod\": \"jsapi_tickets\", \
                 \"index\": {} }"
            ),
            Refused::Unauthorized {
                command: "collMod".into(),
                namespace: "wechat.jsapi_tickets".into(),
                actions: "collMod",
            }
        );
    }

    #[test]
    fn never_quotes_the_rest_of_the_servers_message() {
        let refused = unauthorized(
            "not authorized on wechat to execute command { insert: \"access_tokens\", \
             documents: [ { access_token: \"TOKEN-VALUE\" } ] }",
        );
        assert!(!refused.to_string().contains("TOKEN-VALUE"));
        assert_eq!(
            unauthorized("something else entirely: TOKEN-VALUE").to_string(),
            unauthorized("").to_string()
        );
    }

    #[test]
    fn a_command_without_a_user_asks_for_one() {
        for message in [
            "Command find requires authentication",
            "command find requires authentication",
        ] {
            assert_eq!(
                unauthorized(message),
                Refused::Unauthenticated {
                    command: "find".into()
                }
            );
        }
    }
}
