//! One way to open the credential database, shared by the reader and the
//! daemon: the connection string is a secret, so no error quotes it.

use std::time::Duration;

use mongodb::error::{Error as MongoError, ErrorKind};
use mongodb::options::ClientOptions;
use mongodb::{Client, Database};
use secrecy::{ExposeSecret, SecretString};

/// Options for [`connect`].
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// How long an operation waits for a usable server before failing.
    pub server_selection_timeout: Duration,
    /// Reported to MongoDB as the client's application name.
    pub app_name: String,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            server_selection_timeout: Duration::from_secs(5),
            app_name: "wxtokend-reader".into(),
        }
    }
}

/// Why the database could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The driver's parse errors may quote the connection string, which can
    /// hold a password: only the kind of problem is kept.
    #[error("MongoDB connection string is invalid: {0}")]
    InvalidUri(String),
    #[error("cannot build the MongoDB client: {0}")]
    Client(#[source] MongoError),
}

/// Opens `database`. This does not contact the server: the first operation
/// does, so a process can start while MongoDB is down.
pub async fn connect(
    uri: &SecretString,
    database: &str,
    options: ConnectOptions,
) -> Result<Database, ConnectError> {
    let mut client_options = ClientOptions::parse(uri.expose_secret())
        .await
        .map_err(|e| ConnectError::InvalidUri(redacted_uri_error(&e)))?;
    client_options.server_selection_timeout = Some(options.server_selection_timeout);
    client_options.connect_timeout = Some(options.server_selection_timeout);
    client_options.app_name = Some(options.app_name);
    let client = Client::with_options(client_options).map_err(ConnectError::Client)?;
    Ok(client.database(database))
}

fn redacted_uri_error(error: &MongoError) -> String {
    match error.kind.as_ref() {
        ErrorKind::InvalidArgument { .. } => {
            "invalid argument (check the format of the connection string)".into()
        }
        _ => error.to_string(),
    }
}
