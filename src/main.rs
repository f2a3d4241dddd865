//! The `wxtokend` command: parses arguments and calls into the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::SystemTime;

use clap::{Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;

use wxtokend::{connect_store, shutdown_signal, ConfigError, Daemon, Scope, Settings};
use wxtokend_reader::requests::{self, NewRequest};
use wxtokend_reader::{AccountId, Credential, CredentialKind, ReadError, Reader, RefreshReason};

/// Exit codes, documented in the README and in `--help`.
mod exit {
    pub const OK: u8 = 0;
    pub const FAILURE: u8 = 1;
    // 2 is clap's: bad command line.
    pub const CONFIG: u8 = 3;
    pub const MONGODB: u8 = 4;
    pub const NO_VALID_CREDENTIAL: u8 = 5;
}

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  unexpected failure
  2  bad command line
  3  invalid configuration (the message names the key)
  4  MongoDB unreachable or failing
  5  get: no valid credential stored (none yet, or the newest has expired)";

/// Keeps WeChat access tokens fresh in MongoDB for every service to read.
#[derive(Debug, Parser)]
#[command(version, about, after_help = EXIT_CODES)]
struct Cli {
    /// Configuration file (TOML) layered over the built-in defaults;
    /// WXTOKEND__SECTION__KEY environment variables override both.
    #[arg(
        long,
        short,
        global = true,
        env = "WXTOKEND_CONFIG",
        value_name = "FILE"
    )]
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon: refresh every configured account until SIGTERM/SIGINT.
    Run,
    /// Print the newest valid credential of ACCOUNT (exit 5 if there is none).
    Get {
        /// The account id (the appid) as configured.
        account: String,
        /// Which credential.
        #[arg(long, value_enum, default_value_t = Kind::AccessToken)]
        kind: Kind,
        /// Print a JSON object with generation and expiry instead of the bare value.
        #[arg(long)]
        json: bool,
    },
    /// Print the JS-SDK `wx.config` parameters for a page URL as JSON:
    /// {appId, timestamp, nonceStr, signature}, signed with the newest valid
    /// jsapi_ticket of ACCOUNT (exit 5 if there is none).
    Sign {
        /// The account id as configured.
        account: String,
        /// The full URL of the page (a #fragment is ignored).
        url: String,
        /// The ticket to sign with: jsapi_ticket, or agent-config-ticket for
        /// WeCom's wx.agentConfig.
        #[arg(long, value_enum, default_value_t = Kind::JsapiTicket)]
        kind: Kind,
    },
    /// Ask the daemon to refresh a credential of ACCOUNT now, even while it
    /// waits after a permanent error (you fixed the cause); never past a
    /// spent quota or refresh.forced_min_interval. Needs no WeChat secret.
    Refresh {
        /// The account id (the appid) as configured.
        account: String,
        /// Which credential.
        #[arg(long, value_enum, default_value_t = Kind::AccessToken)]
        kind: Kind,
    },
    /// Show every account: generation, age, time left, lease holder, calls
    /// today, last error.
    Status {
        /// Print JSON (an array, one object per account) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Validate the configuration, read every secret, and reach MongoDB.
    Check,
    /// Ask the running daemon's admin server whether it is alive (/healthz),
    /// or with --ready whether every account has a valid token (/readyz).
    /// Exit 0 if so, 1 if not. For container health checks.
    Health {
        #[arg(long)]
        ready: bool,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Kind {
    AccessToken,
    JsapiTicket,
    WxCardTicket,
    AgentConfigTicket,
}

impl From<Kind> for CredentialKind {
    fn from(kind: Kind) -> Self {
        match kind {
            Kind::AccessToken => CredentialKind::AccessToken,
            Kind::JsapiTicket => CredentialKind::JsapiTicket,
            Kind::WxCardTicket => CredentialKind::WxCardTicket,
            Kind::AgentConfigTicket => CredentialKind::AgentConfigTicket,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let scope = match cli.command {
        Command::Get { .. }
        | Command::Sign { .. }
        | Command::Refresh { .. }
        | Command::Status { .. }
        | Command::Health { .. } => Scope::StoreOnly,
        Command::Run | Command::Check => Scope::Daemon,
    };
    let settings = match Settings::load(cli.config.as_deref(), scope) {
        Ok(settings) => settings,
        Err(e) => return config_failure(&e),
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    let code = runtime.block_on(async move {
        match cli.command {
            Command::Run => run(settings).await,
            Command::Get {
                account,
                kind,
                json,
            } => get(settings, AccountId::new(account), kind.into(), json).await,
            Command::Sign { account, url, kind } => {
                sign(settings, AccountId::new(account), &url, kind.into()).await
            }
            Command::Refresh { account, kind } => {
                refresh(settings, AccountId::new(account), kind.into()).await
            }
            Command::Status { json } => status(settings, json).await,
            Command::Check => check(settings).await,
            Command::Health { ready } => health(settings, ready).await,
        }
    });
    ExitCode::from(code)
}

fn config_failure(error: &ConfigError) -> ExitCode {
    eprintln!("error: {error}");
    ExitCode::from(exit::CONFIG)
}

async fn run(settings: Settings) -> u8 {
    wxtokend::init_logging(&settings.log);
    let daemon = match Daemon::build(settings).await {
        Ok(daemon) => daemon,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            return exit::FAILURE;
        }
    };
    let shutdown = CancellationToken::new();
    let trigger = shutdown.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        trigger.cancel();
    });
    daemon.run(shutdown).await;
    exit::OK
}

async fn get(settings: Settings, account: AccountId, kind: CredentialKind, json: bool) -> u8 {
    let store = match connect_store(&settings).await {
        Ok(store) => store,
        Err(e) => return report(&format!("{e}"), exit::MONGODB),
    };
    match Reader::new(store.database().clone())
        .latest_of(kind, &account)
        .await
    {
        Ok(credential) if json => {
            println!("{}", credential_json(&credential));
            exit::OK
        }
        Ok(credential) => {
            println!("{}", credential.secret());
            exit::OK
        }
        Err(e @ (ReadError::NotFound { .. } | ReadError::Expired { .. })) => {
            report(&e.to_string(), exit::NO_VALID_CREDENTIAL)
        }
        Err(e) => report(&e.to_string(), exit::MONGODB),
    }
}

fn credential_json(c: &Credential) -> serde_json::Value {
    let now = SystemTime::now();
    serde_json::json!({
        "app_id": c.app_id,
        "kind": c.kind,
        c.kind.value_field(): c.secret(),
        "expires_in": c.expires_in.as_secs(),
        "fetched_at": humantime::format_rfc3339_seconds(c.fetched_at).to_string(),
        "expires_at": humantime::format_rfc3339_seconds(c.expires_at).to_string(),
        "time_left": c.time_left(now).as_secs(),
        "generation": c.generation,
        "reason": c.reason,
        "fetched_by": c.fetched_by,
    })
}

async fn sign(settings: Settings, account: AccountId, url: &str, kind: CredentialKind) -> u8 {
    let store = match connect_store(&settings).await {
        Ok(store) => store,
        Err(e) => return report(&e.to_string(), exit::MONGODB),
    };
    match Reader::new(store.database().clone())
        .signature_with(kind, &account, url)
        .await
    {
        Ok(config) => match serde_json::to_string(&config) {
            Ok(text) => {
                println!("{text}");
                exit::OK
            }
            Err(e) => report(&e.to_string(), exit::FAILURE),
        },
        Err(e @ (ReadError::NotFound { .. } | ReadError::Expired { .. })) => {
            report(&e.to_string(), exit::NO_VALID_CREDENTIAL)
        }
        Err(e) => report(&e.to_string(), exit::MONGODB),
    }
}

async fn refresh(settings: Settings, account: AccountId, kind: CredentialKind) -> u8 {
    let store = match connect_store(&settings).await {
        Ok(store) => store,
        Err(e) => return report(&e.to_string(), exit::MONGODB),
    };
    let request = NewRequest {
        app_id: &account,
        kind,
        reason: RefreshReason::Manual,
        generation: None,
        requested_by: "wxtokend refresh",
    };
    let filed = requests::file(store.database(), &request).await;
    match filed {
        Ok(()) => {
            println!(
                "refresh of the {kind} of {account} requested; the daemon holding its lease acts \
                 within refresh.request_poll_interval (see `wxtokend status`)"
            );
            exit::OK
        }
        Err(e) => report(&e.to_string(), exit::MONGODB),
    }
}

async fn status(settings: Settings, json: bool) -> u8 {
    let store = match connect_store(&settings).await {
        Ok(store) => store,
        Err(e) => return report(&e.to_string(), exit::MONGODB),
    };
    match wxtokend::collect_status(&store).await {
        Ok(lines) if json => match serde_json::to_string(&lines) {
            Ok(text) => {
                println!("{text}");
                exit::OK
            }
            Err(e) => report(&e.to_string(), exit::FAILURE),
        },
        Ok(lines) => {
            print!(
                "{}",
                wxtokend::render_status(&lines, settings.refresh.daily_call_limit)
            );
            exit::OK
        }
        Err(e) => report(&e.to_string(), exit::MONGODB),
    }
}

async fn health(settings: Settings, ready: bool) -> u8 {
    let Some(mut addr) = settings.admin.address().filter(|a| a.port() != 0) else {
        return report(
            "admin.listen is off or uses port 0: set a fixed address to use `health`",
            exit::CONFIG,
        );
    };
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let path = if ready { "/readyz" } else { "/healthz" };
    match wxtokend::probe(addr, path).await {
        Ok(()) => exit::OK,
        Err(e) => report(&e.to_string(), exit::FAILURE),
    }
}

async fn check(settings: Settings) -> u8 {
    let store = match connect_store(&settings).await {
        Ok(store) => store,
        Err(e) => return report(&format!("{e}"), exit::MONGODB),
    };
    if let Err(e) = store.ping().await {
        return report(&format!("MongoDB is unreachable: {e}"), exit::MONGODB);
    }
    println!(
        "configuration valid: {} account(s); every secret readable; MongoDB reachable (database {:?})",
        settings.accounts.len(),
        store.database_name()
    );
    exit::OK
}

fn report(message: &str, code: u8) -> u8 {
    eprintln!("error: {message}");
    code
}
