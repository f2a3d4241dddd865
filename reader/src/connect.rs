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
    /// The connection string's TLS files (`tlsCAFile`,
    /// `tlsCertificateKeyFile`) cannot be read or used.
    #[error("the TLS files of the MongoDB connection string cannot be used: {0}")]
    Tls(String),
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
    open(client_options(uri, options).await?, database)
}

/// The driver's options for `uri` with `options` applied, for a caller
/// that adds options of its own before [`open`] (the daemon watches the
/// commands MongoDB refuses).
pub async fn client_options(
    uri: &SecretString,
    options: ConnectOptions,
) -> Result<ClientOptions, ConnectError> {
    let mut client_options =
        ClientOptions::parse(uri.expose_secret())
            .await
            .map_err(|e| match e.kind.as_ref() {
                // A mongodb+srv:// string is resolved by DNS while it is parsed:
                // a lookup that fails is MongoDB's to retry, not the string's.
                ErrorKind::InvalidArgument { .. } => {
                    ConnectError::InvalidUri(redacted_uri_error(&e))
                }
                _ => ConnectError::Client(e),
            })?;
    client_options.server_selection_timeout = Some(options.server_selection_timeout);
    client_options.connect_timeout = Some(options.server_selection_timeout);
    client_options.app_name = Some(options.app_name);
    Ok(client_options)
}

/// Opens `database` with options made by [`client_options`].
pub fn open(options: ClientOptions, database: &str) -> Result<Database, ConnectError> {
    let client = Client::with_options(options).map_err(client_error)?;
    Ok(client.database(database))
}

/// The driver reads the TLS files when it builds the client: a problem
/// with one is the connection string's, said with the options to check.
fn client_error(error: MongoError) -> ConnectError {
    match error.kind.as_ref() {
        ErrorKind::InvalidTlsConfig { message, .. } => ConnectError::Tls(message.clone()),
        ErrorKind::Io(e) => ConnectError::Tls(format!(
            "{e} (check the paths in tlsCAFile and tlsCertificateKeyFile)"
        )),
        _ => ConnectError::Client(error),
    }
}

fn redacted_uri_error(error: &MongoError) -> String {
    match error.kind.as_ref() {
        ErrorKind::InvalidArgument { .. } => {
            "invalid argument (check the format of the connection string)".into()
        }
        _ => error.to_string(),
    }
}

/// What a connection failure most likely means, from what the driver saw,
/// as text to append to its message ("" when nothing is recognised). The
/// driver reports TLS mistakes as bare I/O errors of the server it could
/// not select.
pub fn connection_hint(error: &MongoError) -> &'static str {
    if !matches!(error.kind.as_ref(), ErrorKind::ServerSelection { .. }) {
        return "";
    }
    let text = error.to_string().to_ascii_lowercase();
    let hints: [(&[&str], &str); 6] = [
        (
            &["unexpected end of file", "connection reset"],
            " (the server closed the connection at once: if it requires TLS, put tls=true in \
             the connection string, with tlsCAFile=FILE for a private CA)",
        ),
        (
            &["certificaterequired"],
            " (the server requires a client certificate: put tlsCertificateKeyFile=FILE, the \
             certificate and its key in one PEM file, in the connection string)",
        ),
        (
            &["unknownissuer", "invalid peer certificate"],
            " (the server's certificate is not signed by a CA this host trusts: put \
             tlsCAFile=FILE, your CA's certificate, in the connection string)",
        ),
        (
            &["corrupt message", "invalidcontenttype"],
            " (the server does not speak TLS: remove tls=true from the connection string, or \
             enable TLS on the server)",
        ),
        (
            &["connection refused"],
            " (nothing listens there: is MongoDB running, and are the host and port right?)",
        ),
        (
            // No error recorded: the server never answered (a TLS client
            // and a plain server wait for each other, for one).
            &["type: unknown }", "i/o error: timed out"],
            " (no answer within mongodb.server_selection_timeout: are the host and port right, \
             and does tls=true match the server?)",
        ),
    ];
    hints
        .iter()
        .find(|(signs, _)| signs.iter().any(|sign| text.contains(sign)))
        .map_or("", |(_, hint)| hint)
}
