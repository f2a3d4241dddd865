//! The `wxtokend` command: parses arguments and calls into the library.
//! Over 600 lines on purpose: every command's output and exit code, and the
//! tests of what it prints, read in one place (the exit codes are a contract).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::SystemTime;

use clap::{Parser, Subcommand, ValueEnum};
use mongodb::bson::DateTime;
use tokio_util::sync::CancellationToken;

use wxtokend::quota::{self, CgiPath, QuotaError, QuotaRequest};
use wxtokend::{
    check_store, connect_store, shutdown_signal, ConfigError, ConfigFile, Daemon, DaemonError,
    MongoSettings, Scope, Settings, StoreError,
};
use wxtokend_reader::requests::{self, NewRequest};
use wxtokend_reader::{
    AccountId, ConnectError, Credential, CredentialKind, Owner, QueryError, ReadError, Reader,
    RefreshReason, Refused,
};

/// Exit codes, documented in the README and in `--help`.
mod exit {
    pub const OK: u8 = 0;
    pub const FAILURE: u8 = 1;
    /// Also what clap exits with for a bad command line.
    pub const BAD_COMMAND_LINE: u8 = 2;
    pub const CONFIG: u8 = 3;
    pub const MONGODB: u8 = 4;
    pub const NO_VALID_CREDENTIAL: u8 = 5;
    pub const WECHAT: u8 = 6;
}

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  unexpected failure; health: not healthy (or not ready); check: a
     mirror's Redis does not answer
  2  bad command line (get, refresh: an authorizer kind without
     --component, or --component with another kind; sign: --component with
     --kind agent-config-ticket); quota: an account that is not configured
     or is WeCom's, or --clear not confirmed (answered no, or no terminal to
     ask and no --yes)
  3  invalid configuration (the message names the key); MongoDB refused
     the connection string's user or a privilege (the message names the
     action, the collection and the role to grant); check, run: an index in
     the way of wxtokend's (the message says which to drop); health: admin.listen
     is off or uses port 0; quota --clear: the account's secret is needed
     and cannot be read
  4  MongoDB unreachable or failing (quota --clear: also after WeChat
     cleared, when the daemon's own stops could not be lifted)
  5  get, sign, quota: no valid credential stored (none yet, or the newest
     has expired)
  6  quota: WeChat refused the call or did not answer (the message names
     the errcode and what it means)";

/// Keeps WeChat access tokens fresh in MongoDB for every service to read.
#[derive(Debug, Parser)]
#[command(version, about, after_help = EXIT_CODES)]
struct Cli {
    /// Configuration file (TOML) layered over the built-in defaults;
    /// WXTOKEND__SECTION__KEY environment variables override both.
    /// Without it, /etc/wxtokend/wxtokend.toml is read if it exists.
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
        /// The account id (the appid) as configured; with --component, the
        /// appid of an account that authorized that Open Platform component.
        account: String,
        /// Which credential.
        #[arg(long, value_enum, default_value_t = Kind::AccessToken)]
        kind: Kind,
        #[command(flatten)]
        component: ComponentArg,
        /// Print a JSON object with generation and expiry instead of the bare value.
        #[arg(long)]
        json: bool,
    },
    /// Print the JS-SDK `wx.config` parameters for a page URL as JSON:
    /// {appId, timestamp, nonceStr, signature}, signed with the newest valid
    /// jsapi_ticket of ACCOUNT (exit 5 if there is none).
    Sign {
        /// The account id as configured; with --component, the appid of an
        /// account that authorized that Open Platform component.
        account: String,
        /// The full URL of the page (a #fragment is ignored).
        url: String,
        /// The ticket to sign with: jsapi-ticket (wx.config), or
        /// agent-config-ticket for WeCom's wx.agentConfig, which prints
        /// {corpid, agentid, timestamp, nonceStr, signature} for a
        /// "corpid/agentid" account.
        #[arg(long, value_enum, default_value_t = SignKind::JsapiTicket)]
        kind: SignKind,
        /// The Open Platform component (its appid) that ACCOUNT authorized:
        /// signs with ACCOUNT's authorizer_jsapi_ticket; appId is ACCOUNT.
        #[arg(long, value_name = "COMPONENT_APPID")]
        component: Option<String>,
    },
    /// Ask the daemon to refresh a credential of ACCOUNT now, even while it
    /// waits after a permanent error (you fixed the cause); never past a
    /// spent quota or refresh.forced_min_interval. Needs no WeChat secret.
    Refresh {
        /// The account id (the appid) as configured; with --component, the
        /// appid of an account that authorized that Open Platform component.
        account: String,
        /// Which credential.
        #[arg(long, value_enum, default_value_t = Kind::AccessToken)]
        kind: Kind,
        #[command(flatten)]
        component: ComponentArg,
    },
    /// Show every configured account and every account found in MongoDB,
    /// one line per credential kind, whether refreshed yet or not:
    /// generation, age, time left, lease holder, calls today of
    /// refresh.daily_call_limit, force_refresh calls today of 20
    /// (stable_token accounts), last error. Needs no WeChat secret.
    Status {
        /// Print JSON (an array, one object per account and kind; with
        /// --mirrors, one per replica and mirror) instead of a table.
        #[arg(long)]
        json: bool,
        /// Show only the Redis mirrors of every live replica: state, errors,
        /// last write, Redis's last error.
        #[arg(long)]
        mirrors: bool,
    },
    /// Show WeChat's own count of ACCOUNT's calls today to its token API (or
    /// --api PATH), or with --clear reset every API's count (10 a month).
    ///
    /// Uses the newest valid access token stored in MongoDB and never
    /// fetches one (that would rotate the token the daemon keeps), so it
    /// needs no running daemon and no WeChat secret; with no valid token
    /// stored, --clear uses the account's AppSecret instead (clear_quota/v2),
    /// read from its secret_env or secret_file only then. Official Accounts
    /// and Mini Programs (WeCom has no such API).
    Quota {
        /// The account id (the appid) as configured.
        account: String,
        /// The API to show, as WeChat names it (starting with /); default:
        /// the account's token API (/cgi-bin/token or /cgi-bin/stable_token).
        #[arg(long, value_name = "PATH")]
        api: Option<CgiPath>,
        /// Reset today's call counts of every API of the account, after a
        /// confirmation on the terminal (uses one of 10 clears a month).
        #[arg(long)]
        clear: bool,
        /// With --clear: do not ask (needed where there is no terminal).
        #[arg(long, requires = "clear")]
        yes: bool,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Validate the configuration, read every secret, reach MongoDB, read
    /// each collection the daemon uses and create its indexes (idempotent;
    /// what `run` does first): says which configuration file it used.
    Check,
    /// Print the effective configuration (defaults, file, environment)
    /// without secrets: passwords in mongodb.uri show as ****, secret_env,
    /// secret_file and mongodb.uri_file are named, never read.
    Config {
        /// Print JSON instead of TOML.
        #[arg(long)]
        json: bool,
    },
    /// Ask the running daemon's admin server whether it is alive (/healthz),
    /// or with --ready whether every account has a valid token (/readyz).
    /// Exit 0 if so, 1 if not, 3 if admin.listen is off or uses port 0.
    /// For container health checks.
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
    /// An Open Platform component's own token (ACCOUNT = the component
    /// appid); MongoDB gives it to the daemon's role and
    /// wxtokendComponentReader only.
    ComponentAccessToken,
    /// The token an Open Platform component holds for ACCOUNT, an account
    /// that authorized it (needs --component).
    AuthorizerAccessToken,
    /// ACCOUNT's JS-SDK ticket through the component (needs --component).
    AuthorizerJsapiTicket,
    /// ACCOUNT's WeChat Card ticket through the component (needs
    /// --component).
    AuthorizerWxCardTicket,
}

/// `--component` of `get` and `refresh`.
#[derive(Debug, clap::Args)]
struct ComponentArg {
    /// The Open Platform component (its appid) that ACCOUNT authorized:
    /// required with the authorizer kinds, refused with the others.
    #[arg(long, value_name = "COMPONENT_APPID")]
    component: Option<String>,
}

impl ComponentArg {
    /// Why `--component` does not go with `kind`, if it does not.
    fn problem(&self, kind: Kind) -> Option<String> {
        let kind = CredentialKind::from(kind);
        let name = kind.as_str().replace('_', "-");
        match (&self.component, kind.is_authorizer()) {
            (None, true) => Some(format!(
                "--kind {name} is a credential of an account that authorized an Open Platform \
                 component: name the component with --component COMPONENT_APPID"
            )),
            (Some(_), false) => Some(format!(
                "--component is for the authorizer kinds (authorizer-access-token, \
                 authorizer-jsapi-ticket, authorizer-wx-card-ticket); --kind {name} is not one"
            )),
            _ => None,
        }
    }

    /// Whose credential ACCOUNT names, once [`ComponentArg::problem`]
    /// found nothing wrong.
    fn owner(self, account: String) -> Owner {
        Owner {
            app_id: AccountId::new(account),
            component_appid: self.component.map(AccountId::new),
        }
    }
}

impl Command {
    /// What clap cannot check: `--component` with the right kinds only.
    fn usage_problem(&self) -> Option<String> {
        match self {
            Command::Get {
                kind, component, ..
            }
            | Command::Refresh {
                kind, component, ..
            } => component.problem(*kind),
            Command::Sign {
                kind: SignKind::AgentConfigTicket,
                component: Some(_),
                ..
            } => Some(
                "--component signs with an authorizer's jsapi ticket: it does not go with \
                 --kind agent-config-ticket (WeCom's)"
                    .to_owned(),
            ),
            _ => None,
        }
    }
}

/// The tickets a page signature is made with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum SignKind {
    JsapiTicket,
    AgentConfigTicket,
}

impl From<SignKind> for CredentialKind {
    fn from(kind: SignKind) -> Self {
        match kind {
            SignKind::JsapiTicket => CredentialKind::JsapiTicket,
            SignKind::AgentConfigTicket => CredentialKind::AgentConfigTicket,
        }
    }
}

impl From<Kind> for CredentialKind {
    fn from(kind: Kind) -> Self {
        match kind {
            Kind::AccessToken => CredentialKind::AccessToken,
            Kind::JsapiTicket => CredentialKind::JsapiTicket,
            Kind::WxCardTicket => CredentialKind::WxCardTicket,
            Kind::AgentConfigTicket => CredentialKind::AgentConfigTicket,
            Kind::ComponentAccessToken => CredentialKind::ComponentAccessToken,
            Kind::AuthorizerAccessToken => CredentialKind::AuthorizerAccessToken,
            Kind::AuthorizerJsapiTicket => CredentialKind::AuthorizerJsapiTicket,
            Kind::AuthorizerWxCardTicket => CredentialKind::AuthorizerWxCardTicket,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(problem) = cli.command.usage_problem() {
        return ExitCode::from(report(&problem, exit::BAD_COMMAND_LINE));
    }
    let file = ConfigFile::choose(cli.config);
    let scope = match cli.command {
        Command::Get { .. }
        | Command::Sign { .. }
        | Command::Refresh { .. }
        | Command::Status { .. }
        | Command::Quota { .. } => Scope::StoreOnly,
        Command::Health { .. } => Scope::Local,
        Command::Run | Command::Check => Scope::Daemon,
        Command::Config { json } => return ExitCode::from(show_config(&file, json)),
    };
    let settings = match Settings::load(file.path(), scope) {
        Ok(settings) => settings,
        Err(e) => return config_failure(&file, &e),
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
            Command::Run => run(settings, &file).await,
            Command::Get {
                account,
                kind,
                component,
                json,
            } => get(settings, &component.owner(account), kind.into(), json).await,
            Command::Sign {
                account,
                url,
                kind,
                component,
            } => {
                let owner = Owner {
                    app_id: AccountId::new(account),
                    component_appid: component.map(AccountId::new),
                };
                sign(settings, &owner, &url, kind).await
            }
            Command::Refresh {
                account,
                kind,
                component,
            } => refresh(settings, &component.owner(account), kind.into()).await,
            Command::Status { json, mirrors } => status(settings, json, mirrors).await,
            Command::Quota {
                account,
                api,
                clear,
                yes,
                json,
            } => {
                let request = QuotaRequest {
                    account: AccountId::new(account),
                    api,
                };
                quota(settings, &request, clear.then_some(yes), json).await
            }
            Command::Check => check(settings, &file).await,
            Command::Health { ready } => health(settings, ready).await,
            Command::Config { .. } => unreachable!("answered before loading"),
        }
    });
    ExitCode::from(code)
}

fn config_failure(file: &ConfigFile, error: &ConfigError) -> ExitCode {
    eprintln!("error: {error}");
    eprintln!("(configuration file: {file})");
    ExitCode::from(exit::CONFIG)
}

/// `config`: the effective configuration, without secrets.
fn show_config(file: &ConfigFile, json: bool) -> u8 {
    let effective = match wxtokend::effective_config(file.path()) {
        Ok(effective) => effective,
        Err(e) => {
            eprintln!("error: {e}");
            eprintln!("(configuration file: {file})");
            return exit::CONFIG;
        }
    };
    let text = if json {
        serde_json::to_string_pretty(&effective).map_err(|e| e.to_string())
    } else {
        toml::to_string(&effective).map_err(|e| e.to_string())
    };
    match text {
        Ok(text) => {
            // A TOML comment; JSON has none, so stderr says it there.
            if json {
                eprintln!("configuration file: {file}");
            } else {
                println!("# configuration file: {file}");
            }
            println!("{}", text.trim_end());
            exit::OK
        }
        Err(e) => report(&e, exit::FAILURE),
    }
}

async fn run(settings: Settings, file: &ConfigFile) -> u8 {
    wxtokend::init_logging(&settings.log);
    wxtokend::setup_failpoints();
    let mongodb = settings.mongodb.clone();
    let daemon = match Daemon::build(settings).await {
        Ok(daemon) => daemon,
        Err(DaemonError::Store(e)) if is_configuration(&e) => return store_failure(&mongodb, &e),
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            return exit::FAILURE;
        }
    };
    tracing::info!(config = %file, "configuration loaded");
    let shutdown = CancellationToken::new();
    let trigger = shutdown.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        trigger.cancel();
    });
    match daemon.run(shutdown).await {
        Ok(()) => exit::OK,
        // Logged where it happened. A refusal needs a change of user or
        // role (a restart cannot help); anything else, a restart.
        Err(
            DaemonError::Refused(_)
            | DaemonError::MissingPrivileges(_)
            | DaemonError::IndexConflict(_),
        ) => exit::CONFIG,
        Err(_) => exit::FAILURE,
    }
}

async fn get(settings: Settings, owner: &Owner, kind: CredentialKind, json: bool) -> u8 {
    let store = match connect_store(&settings).await {
        Ok(store) => store,
        Err(e) => return store_failure(&settings.mongodb, &e),
    };
    match Reader::new(store.database().clone())
        .latest_owned(kind, owner)
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
        Err(e) => read_failure(&e),
    }
}

/// `get --json`: an account's credential, or an authorizer's with its
/// `component_appid` too.
fn credential_json(c: &Credential) -> serde_json::Value {
    let now = SystemTime::now();
    let mut json = serde_json::json!({
        "app_id": c.app_id,
        "kind": c.kind,
        c.kind.value_field(): c.secret(),
        "expires_in": c.expires_in.as_secs(),
        "fetched_at": json_date(c.fetched_at),
        "expires_at": json_date(c.expires_at),
        "time_left": c.time_left(now).as_secs(),
        "generation": c.generation,
        "reason": c.reason,
        "fetched_by": c.fetched_by,
    });
    if let (Some(component), Some(object)) = (&c.component_appid, json.as_object_mut()) {
        object.insert("component_appid".into(), component.as_str().into());
    }
    json
}

/// First and last millisecond that RFC 3339 can write (years 0000 to 9999).
const RFC3339_MILLIS: std::ops::RangeInclusive<i64> = -62_167_219_200_000..=253_402_300_799_999;

/// A stored date as RFC 3339 in whole seconds (UTC), or, for a date outside
/// the years 0000 to 9999 (only a hand-made document has one), the stored
/// milliseconds since 1970 as a number. Never panics: any BSON date the
/// reader returns is printable.
fn json_date(at: SystemTime) -> serde_json::Value {
    let millis = DateTime::from_system_time(at).timestamp_millis();
    if RFC3339_MILLIS.contains(&millis) {
        let seconds = DateTime::from_millis(millis - millis.rem_euclid(1000));
        if let Ok(text) = seconds.try_to_rfc3339_string() {
            return text.into();
        }
    }
    millis.into()
}

/// `sign`; an owner with a component signs with its authorizer jsapi
/// ticket (`kind` is then jsapi-ticket: checked before).
async fn sign(settings: Settings, owner: &Owner, url: &str, kind: SignKind) -> u8 {
    // wx.agentConfig names the app: only a "corpid/agentid" account has one.
    let agent =
        match (kind, owner.app_id.as_str().split_once('/')) {
            (SignKind::AgentConfigTicket, Some((corp, agent))) => {
                Some((corp.to_owned(), agent.to_owned()))
            }
            (SignKind::AgentConfigTicket, None) => return report(
                "--kind agent-config-ticket signs for a WeCom app: give its id as corpid/agentid",
                exit::BAD_COMMAND_LINE,
            ),
            (SignKind::JsapiTicket, _) => None,
        };
    let store = match connect_store(&settings).await {
        Ok(store) => store,
        Err(e) => return store_failure(&settings.mongodb, &e),
    };
    let reader = Reader::new(store.database().clone());
    let signed = match &owner.component_appid {
        Some(component) => {
            reader
                .authorizer_signature(component, &owner.app_id, url)
                .await
        }
        None => reader.signature_with(kind.into(), &owner.app_id, url).await,
    };
    let signed = signed.map(|config| match agent {
        // What wx.agentConfig takes, with its own field names.
        Some((corpid, agentid)) => serde_json::json!({
            "corpid": corpid,
            "agentid": agentid,
            "timestamp": config.timestamp,
            "nonceStr": config.nonce_str,
            "signature": config.signature,
        }),
        None => serde_json::json!(config),
    });
    match signed {
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
        Err(e) => read_failure(&e),
    }
}

async fn refresh(settings: Settings, owner: &Owner, kind: CredentialKind) -> u8 {
    let store = match connect_store(&settings).await {
        Ok(store) => store,
        Err(e) => return store_failure(&settings.mongodb, &e),
    };
    let request = NewRequest {
        app_id: &owner.app_id,
        component_appid: owner.component_appid.as_ref(),
        kind,
        reason: RefreshReason::Manual,
        generation: None,
        requested_by: "wxtokend refresh",
    };
    let filed = requests::file(store.database(), &request).await;
    match filed {
        Ok(()) => {
            println!(
                "refresh of the {kind} of {owner} requested; the daemon holding its lease acts \
                 within refresh.request_poll_interval (see `wxtokend status`)"
            );
            exit::OK
        }
        Err(QueryError::Refused(refused)) => refused_failure(&refused),
        Err(e) => report(&e.to_string(), exit::MONGODB),
    }
}

async fn status(settings: Settings, json: bool, mirrors: bool) -> u8 {
    let store = match connect_store(&settings).await {
        Ok(store) => store,
        Err(e) => return store_failure(&settings.mongodb, &e),
    };
    if mirrors {
        return match wxtokend::mirror_status(&store).await {
            Ok(mirrors) if json => {
                let lines = wxtokend::mirror_lines(&mirrors, std::time::SystemTime::now());
                match serde_json::to_string(&lines) {
                    Ok(text) => {
                        println!("{text}");
                        exit::OK
                    }
                    Err(e) => report(&e.to_string(), exit::FAILURE),
                }
            }
            Ok(mirrors) if mirrors.is_empty() => {
                println!("no live replica has a mirror");
                exit::OK
            }
            Ok(mirrors) => {
                print!("{}", wxtokend::render_mirrors(&mirrors).trim_start());
                exit::OK
            }
            Err(e) => store_failure(&settings.mongodb, &e),
        };
    }
    match wxtokend::collect_status(&store, &settings).await {
        Ok(lines) if json => match serde_json::to_string(&lines) {
            Ok(text) => {
                println!("{text}");
                exit::OK
            }
            Err(e) => report(&e.to_string(), exit::FAILURE),
        },
        Ok(lines) => {
            print!("{}", wxtokend::render_status(&lines));
            // Best effort: an older reader role cannot read `instances`.
            match wxtokend::mirror_status(&store).await {
                Ok(mirrors) => print!("{}", wxtokend::render_mirrors(&mirrors)),
                Err(e) => tracing::debug!(error = %e, "cannot read the replicas' mirror states"),
            }
            exit::OK
        }
        Err(e) => store_failure(&settings.mongodb, &e),
    }
}

/// `quota`; `clear` is `Some(yes)` with --clear.
async fn quota(settings: Settings, request: &QuotaRequest, clear: Option<bool>, json: bool) -> u8 {
    let store = match connect_store(&settings).await {
        Ok(store) => store,
        Err(e) => return store_failure(&settings.mongodb, &e),
    };
    // WeChat cleared but MongoDB failed after: the result is printed, and
    // the exit code says MongoDB.
    let mut daemon_reset_failed = false;
    let printed = match clear {
        None => quota::show(&store, &settings, request).await.map(|shown| {
            if json {
                serde_json::to_string(&shown)
            } else {
                Ok(quota::render(&[&shown]))
            }
        }),
        Some(yes) => {
            let confirm = |account: &AccountId| confirm_clear(account, yes);
            quota::clear(&store, &settings, request, confirm)
                .await
                .map(|cleared| {
                    for warning in &cleared.warnings {
                        eprintln!("warning: {warning}");
                    }
                    if !cleared.daemon_reset_done {
                        daemon_reset_failed = true;
                    }
                    if json {
                        serde_json::to_string(&cleared)
                    } else {
                        Ok(quota::render_cleared(&cleared))
                    }
                })
        }
    };
    match printed {
        Ok(Ok(text)) => {
            println!("{}", text.trim_end());
            if daemon_reset_failed {
                exit::MONGODB
            } else {
                exit::OK
            }
        }
        Ok(Err(e)) => report(&e.to_string(), exit::FAILURE),
        Err(e) => {
            let code = match &e {
                QuotaError::NotConfigured(_)
                | QuotaError::Wecom(_)
                | QuotaError::NotConfirmed(_) => exit::BAD_COMMAND_LINE,
                QuotaError::Secret(_) => exit::CONFIG,
                QuotaError::Store(e) => return store_failure(&settings.mongodb, e),
                QuotaError::NoValidToken(_) => exit::NO_VALID_CREDENTIAL,
                QuotaError::Wechat { .. } => exit::WECHAT,
                QuotaError::Client(_) => exit::FAILURE,
            };
            report(&e.to_string(), code)
        }
    }
}

/// Asks on the terminal before a clear spends one of the month's 10, unless
/// `yes`; without a terminal to ask, refuses.
fn confirm_clear(account: &AccountId, yes: bool) -> Result<(), &'static str> {
    use std::io::{BufRead, IsTerminal, Write};
    if yes {
        return Ok(());
    }
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return Err(
            "--clear asks for confirmation on a terminal; pass --yes to clear without asking",
        );
    }
    eprint!(
        "Reset today's call counts of every API of {account}? This uses one of the 10 clears \
         WeChat allows each account per month. [y/N] "
    );
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    let _ = stdin.lock().read_line(&mut answer);
    match answer.trim() {
        "y" | "Y" | "yes" | "YES" | "Yes" => Ok(()),
        _ => Err("not confirmed"),
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

async fn check(settings: Settings, file: &ConfigFile) -> u8 {
    let checked = async {
        let store = connect_store(&settings).await?;
        check_store(&store, &settings).await
    };
    match checked.await {
        Ok(indexes) => {
            println!("configuration file: {file}");
            println!(
                "configuration valid: {} account(s); every secret readable; MongoDB reachable \
                 (database {:?}): every collection readable, indexes in place",
                settings.accounts.len(),
                settings.mongodb.database
            );
            if !indexes.created.is_empty() {
                println!(
                    "created {} missing index(es), as `run` does at start",
                    indexes.created.len()
                );
            }
            for step in &indexes.left_for_run {
                println!(
                    "left for `run`, which does it at start: {step} \
                     (mongodb.history_retention differs from the index in place)"
                );
            }
            check_mirrors(&settings).await
        }
        Err(e) => {
            let code = match &e {
                StoreError::Mongo(m)
                    if matches!(
                        m.kind.as_ref(),
                        mongodb::error::ErrorKind::ServerSelection { .. }
                            | mongodb::error::ErrorKind::Io(_)
                    ) =>
                {
                    report(&format!("MongoDB is unreachable: {e}"), exit::MONGODB)
                }
                e => store_failure(&settings.mongodb, e),
            };
            eprintln!("(configuration file: {file})");
            code
        }
    }
}

/// `check`'s last step: every `[[mirrors]]` Redis answers.
async fn check_mirrors(settings: &Settings) -> u8 {
    let mut code = exit::OK;
    for mirror in &settings.mirrors {
        match wxtokend::ping_mirror(mirror).await {
            Ok(()) => println!("mirror {}: Redis answers", mirror.name),
            Err(e) => {
                code = report(
                    &format!("mirror {}: Redis does not answer: {e}", mirror.name),
                    exit::FAILURE,
                );
            }
        }
    }
    code
}

/// Whether the store could not be opened because of the configuration:
/// a connection string the driver refuses, or its TLS files.
fn is_configuration(error: &StoreError) -> bool {
    matches!(
        error,
        StoreError::Connect(ConnectError::InvalidUri(_) | ConnectError::Tls(_))
    )
}

/// Exit code and message for a store that could not be opened or used: a
/// connection string the driver cannot use is a configuration error (3,
/// worded like the others, naming the key and never quoting the string),
/// and so is MongoDB's refusal of its user or of a privilege; anything else
/// is MongoDB's (4).
fn store_failure(mongodb: &MongoSettings, error: &StoreError) -> u8 {
    let key = mongodb.uri_key();
    match error {
        StoreError::Connect(ConnectError::InvalidUri(why)) => report(
            &format!(
                "invalid configuration:\n  - {key}: {} is not shown, as it may hold a \
                 password; the MongoDB driver rejects it: {why}",
                mongodb.uri_described()
            ),
            exit::CONFIG,
        ),
        StoreError::Connect(ConnectError::Tls(why)) => report(
            &format!(
                "invalid configuration:\n  - {key}: {}: the TLS files it names cannot be \
                 used: {why}",
                mongodb.uri_described()
            ),
            exit::CONFIG,
        ),
        StoreError::Refused(refused) => refused_failure(refused),
        StoreError::IndexConflict(conflict) => report(&conflict.to_string(), exit::CONFIG),
        StoreError::MissingPrivileges(missing) => report(&missing.to_string(), exit::CONFIG),
        other => report(&other.to_string(), exit::MONGODB),
    }
}

/// Exit code and message for a failed read (`get`, `sign`).
fn read_failure(error: &ReadError) -> u8 {
    match error {
        ReadError::Query(QueryError::Refused(refused)) => refused_failure(refused),
        other => report(&other.to_string(), exit::MONGODB),
    }
}

/// MongoDB refused the user or a privilege: the connection string or the
/// user's role must change.
fn refused_failure(refused: &Refused) -> u8 {
    report(&refused.to_string(), exit::CONFIG)
}

fn report(message: &str, code: u8) -> u8 {
    eprintln!("error: {message}");
    code
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use proptest::prelude::*;
    use secrecy::SecretString;
    use wxtokend_reader::Generation;

    use super::*;

    /// A credential as the reader returns it from a stored document whose
    /// dates are `fetched_at` and `expires_at` milliseconds since 1970.
    fn stored(fetched_at: i64, expires_at: i64) -> Credential {
        Credential {
            component_appid: None,
            app_id: AccountId::new("wx1234567890abcdef"),
            kind: CredentialKind::AccessToken,
            value: SecretString::from("TOKEN"),
            expires_in: Duration::from_secs(7200),
            fetched_at: DateTime::from_millis(fetched_at).to_system_time(),
            expires_at: DateTime::from_millis(expires_at).to_system_time(),
            generation: Generation(1),
            reason: None,
            fetched_by: "test".into(),
        }
    }

    /// What `get --json` must print for a stored date of `millis`.
    fn expected(millis: i64) -> serde_json::Value {
        if RFC3339_MILLIS.contains(&millis) {
            let seconds = millis.div_euclid(1000);
            let at = if seconds >= 0 {
                // The format `get --json` always had for dates after 1970.
                humantime::format_rfc3339_seconds(
                    SystemTime::UNIX_EPOCH + Duration::from_secs(seconds.unsigned_abs()),
                )
                .to_string()
            } else {
                DateTime::from_millis(seconds * 1000)
                    .try_to_rfc3339_string()
                    .expect("in range")
            };
            at.into()
        } else {
            millis.into()
        }
    }

    /// Any BSON date, with the dates RFC 3339 can write and their edges
    /// drawn often enough to be checked too.
    fn stored_date() -> impl Strategy<Value = i64> {
        let (first, last) = (*RFC3339_MILLIS.start(), *RFC3339_MILLIS.end());
        prop_oneof![
            any::<i64>(),
            RFC3339_MILLIS,
            (first - 2000..first + 2000),
            (last - 2000..last + 2000),
            (-2000i64..2000),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(
            std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(2000)
        ))]

        /// A hostile document can carry any BSON date: `get --json` prints it
        /// without panicking, as RFC 3339 when it can, else as milliseconds.
        #[test]
        fn get_json_never_panics_on_stored_dates(
            fetched_at in stored_date(),
            expires_at in stored_date(),
        ) {
            let json = credential_json(&stored(fetched_at, expires_at));
            prop_assert_eq!(&json["fetched_at"], &expected(fetched_at));
            prop_assert_eq!(&json["expires_at"], &expected(expires_at));
        }
    }

    #[test]
    fn stored_dates_print_as_rfc3339_in_whole_seconds_or_as_milliseconds() {
        for (millis, printed) in [
            (1_800_000_000_123, serde_json::json!("2027-01-15T08:00:00Z")),
            (0, serde_json::json!("1970-01-01T00:00:00Z")),
            (-1, serde_json::json!("1969-12-31T23:59:59Z")),
            (
                -62_167_219_200_000,
                serde_json::json!("0000-01-01T00:00:00Z"),
            ),
            (
                -62_167_219_200_001,
                serde_json::json!(-62_167_219_200_001i64),
            ),
            (
                253_402_300_799_999,
                serde_json::json!("9999-12-31T23:59:59Z"),
            ),
            (
                253_402_300_800_000,
                serde_json::json!(253_402_300_800_000i64),
            ),
            (i64::MAX, serde_json::json!(i64::MAX)),
            (i64::MIN, serde_json::json!(i64::MIN)),
        ] {
            let at = DateTime::from_millis(millis).to_system_time();
            assert_eq!(json_date(at), printed, "{millis}");
        }
    }
}
