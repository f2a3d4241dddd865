//! `[[accounts]]`: each entry's id and shape checked (in every scope), and
//! its secret read from the environment or a file, for the daemon at load
//! time, for `quota --clear` only when it needs it.

use std::collections::HashSet;
use std::path::PathBuf;

use secrecy::SecretString;
use serde::Deserialize;
use wxtokend_reader::AccountId;

use super::secrets::read_secret;
use super::validate::Problems;
use super::{
    Account, AccountSpec, EnvSource, Platform, Problem, SecretSource, TicketName, TokenEndpoint,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAccount {
    id: String,
    platform: Platform,
    #[serde(default = "default_endpoint")]
    endpoint: TokenEndpoint,
    /// Accepted only to reject it with a helpful message.
    secret: Option<serde::de::IgnoredAny>,
    secret_env: Option<String>,
    secret_file: Option<PathBuf>,
    #[serde(default)]
    tickets: Vec<TicketName>,
}

fn default_endpoint() -> TokenEndpoint {
    TokenEndpoint::Token
}

/// Every `[[accounts]]` entry as a spec, its id and shape checked (in both
/// scopes: `status` lists these). An inline `secret` is refused everywhere,
/// as a config file must never hold one; reading the secret is left to
/// [`resolve_secrets`].
pub(super) fn account_specs(raw: &[RawAccount], p: &mut Problems) -> Vec<AccountSpec> {
    let mut seen = HashSet::new();
    let mut specs = Vec::with_capacity(raw.len());
    for (i, account) in raw.iter().enumerate() {
        let key = |field: &str| format!("accounts[{i}].{field}");
        if account.id.trim().is_empty() {
            p.add(key("id"), "must not be empty");
        } else if !seen.insert(account.id.clone()) {
            p.add(
                key("id"),
                format!("duplicate id {:?}; each account appears once", account.id),
            );
        }
        check_account_shape(account, i, p);
        if account.secret.is_some() {
            p.add(
                key("secret"),
                "inline secrets are not allowed; use secret_env or secret_file",
            );
        }
        specs.push(AccountSpec {
            id: AccountId::new(account.id.clone()),
            platform: account.platform,
            endpoint: account.endpoint,
            tickets: account.tickets.iter().map(|t| t.kind()).collect(),
            secret: SecretSource {
                index: i,
                env: account.secret_env.clone(),
                file: account.secret_file.clone(),
            },
        });
    }
    specs
}

/// The daemon's accounts: each spec with its secret read from the
/// environment or a file.
pub(super) fn resolve_secrets(
    specs: &[AccountSpec],
    env: &dyn EnvSource,
    p: &mut Problems,
) -> Vec<Account> {
    if specs.is_empty() {
        p.add(
            "accounts",
            "no account configured; add an [[accounts]] table to your --config file",
        );
    }
    let mut accounts = Vec::with_capacity(specs.len());
    for spec in specs {
        match spec.secret.read(env) {
            Ok(secret) => accounts.push(Account {
                id: spec.id.clone(),
                platform: spec.platform,
                endpoint: spec.endpoint,
                secret,
                tickets: spec.tickets.clone(),
            }),
            Err(problem) => p.add(problem.key, problem.message),
        }
    }
    accounts
}

impl SecretSource {
    /// Reads the secret; a problem names the key to fix.
    pub(super) fn read(&self, env: &dyn EnvSource) -> Result<SecretString, Problem> {
        read_secret(
            &format!("accounts[{}]", self.index),
            "secret",
            self.env.as_deref(),
            self.file.as_deref(),
            env,
        )
    }
}

/// Platform rules: WeCom ids are `corpid/agentid` and use `gettoken`; each
/// platform has its own tickets.
fn check_account_shape(account: &RawAccount, i: usize, p: &mut Problems) {
    let key = |field: &str| format!("accounts[{i}].{field}");
    // `:` separates the parts of the Open Platform's lease ids
    // (`open:{component}:{authorizer}`); no appid or corpid holds one.
    if account.id.contains(':') {
        p.add(
            key("id"),
            "must not contain ':' (an appid, or \"corpid/agentid\" for wecom)",
        );
    }
    if account.platform == Platform::Wecom {
        let shaped = account
            .id
            .split_once('/')
            .is_some_and(|(corp, agent)| !corp.is_empty() && !agent.is_empty());
        if !shaped {
            p.add(
                key("id"),
                "a wecom account id is \"corpid/agentid\", e.g. \"ww0123456789abcdef/1000002\"",
            );
        }
        if account.endpoint == TokenEndpoint::StableToken {
            p.add(
                key("endpoint"),
                "stable_token exists only for official_account and mini_program",
            );
        }
    }
    let mut seen = Vec::new();
    for ticket in &account.tickets {
        if !ticket.allowed_on(account.platform) {
            p.add(
                key("tickets"),
                format!(
                    "{ticket:?} tickets do not exist for {:?} (official_account: jsapi, wx_card; wecom: jsapi, agent_config)",
                    account.platform
                ),
            );
        }
        if seen.contains(ticket) {
            p.add(key("tickets"), format!("{ticket:?} is listed twice"));
        }
        seen.push(*ticket);
    }
}
