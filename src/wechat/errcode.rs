//! The one table of WeChat errcodes this daemon knows, and what each means
//! for the refresh loop. Everything that reacts to an errcode asks here.

use std::fmt;
use std::time::Duration;

/// What a failure means for the refresh loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// Try again soon, with jittered exponential backoff.
    Transient,
    /// The account's daily quota for this call is spent: stop until it resets.
    DailyQuota,
    /// The configuration is wrong (secret, appid, IP whitelist...): log once,
    /// retry rarely, keep serving the last good token while it is valid.
    Permanent,
    /// The token used in a call is invalid or expired.
    InvalidToken,
}

impl ErrorClass {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Transient => "transient",
            Self::DailyQuota => "daily_quota",
            Self::Permanent => "permanent",
            Self::InvalidToken => "invalid_token",
        }
    }
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which kind of call returned the errcode: the same code can mean different
/// things (40001 is a wrong AppSecret when asking for a token, and a stale
/// token when using one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    /// A call that issues an access token (`token`, `stable_token`).
    IssueToken,
    /// A call made with an access token (tickets, business APIs).
    UseToken,
    /// WeCom's `gettoken`.
    WecomIssueToken,
    /// A WeCom call made with an access token.
    WecomUseToken,
    /// Showing or clearing an account's API quotas with its access token
    /// (`openapi/quota/get`, `clear_quota`).
    ManageQuota,
    /// Clearing an account's API quotas with its AppSecret (`clear_quota/v2`).
    ClearQuotaWithSecret,
    /// Open Platform: `api_component_token` (the component secret and a
    /// verify ticket).
    IssueComponentToken,
    /// Open Platform: `api_start_push_ticket` (the component secret).
    StartPushTicket,
    /// Open Platform: a call made with the component token on an
    /// authorizer's behalf or the platform's (`api_authorizer_token`,
    /// `api_query_auth`, `api_get_authorizer_list`): 40001/40014/42001 are
    /// that token's, the 6100x codes the authorizer's.
    ComponentUse,
}

/// What an errcode asks of the daemon besides its class: the Open
/// Platform's inputs that WeChat refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// The verify ticket was refused (61005 expired, 61006 invalid): never
    /// use it again, wait for the next push.
    TicketRejected,
    /// The authorizer's refresh token was refused (61023): replaced by a
    /// re-authorization, or lost. Look for the current one
    /// (`api_get_authorizer_list`); without one the account must
    /// authorize the platform again.
    RefreshTokenInvalid,
    /// The account does not (or no longer) authorize the platform (61003):
    /// stop refreshing it until it authorizes again.
    NotAuthorized,
    /// The authorization code cannot be exchanged (61009 invalid, 61010
    /// expired or used already): drop it, carry on with the refresh token
    /// if there is one.
    CodeUnusable,
}

struct Entry {
    code: i64,
    class: ErrorClass,
    effect: Option<Effect>,
    /// What it means and, for a refusal, what fixes it.
    meaning: &'static str,
    /// When to try again, if not as its class says (backoff for transient
    /// errors, `refresh.permanent_error_retry` for permanent ones).
    retry_after: Option<Duration>,
}

const fn entry(code: i64, class: ErrorClass, meaning: &'static str) -> Entry {
    Entry {
        code,
        class,
        effect: None,
        meaning,
        retry_after: None,
    }
}

/// A code that asks for `effect` (its class: transient, tried again once
/// the effect is done).
const fn with_effect(code: i64, effect: Effect, meaning: &'static str) -> Entry {
    Entry {
        code,
        class: Transient,
        effect: Some(effect),
        meaning,
        retry_after: None,
    }
}

/// A permanent refusal of an Open Platform input that asks for `effect`:
/// the same call with the same input would be refused again.
const fn refusal(code: i64, effect: Effect, meaning: &'static str) -> Entry {
    Entry {
        code,
        class: Permanent,
        effect: Some(effect),
        meaning,
        retry_after: None,
    }
}

/// A permanent refusal that WeChat lifts by itself after `after`.
const fn retry(code: i64, after: Duration, meaning: &'static str) -> Entry {
    Entry {
        code,
        class: Permanent,
        effect: None,
        meaning,
        retry_after: Some(after),
    }
}

const MINUTE: u64 = 60;
const HOUR: u64 = 3600;

/// Where an Official Account's IP whitelist is set (Mini Programs: 开发管理 →
/// 开发设置 → IP白名单).
const IP_WHITELIST: &str =
    "caller IP is not whitelisted: add this server's IP (in WeChat's errmsg) to the \
     account's IP whitelist (mp.weixin.qq.com: 设置与开发 → 基本配置 → IP白名单)";

use ErrorClass::{DailyQuota, InvalidToken, Permanent, Transient};

/// Codes returned by calls that issue a credential.
const ISSUE_TOKEN: &[Entry] = &[
    entry(-1, Transient, "system busy"),
    entry(45011, Transient, "API minute quota reached"),
    entry(45009, DailyQuota, "API daily quota reached"),
    entry(40001, Permanent, "AppSecret is wrong: check the account's secret_env or secret_file"),
    entry(40125, Permanent, "AppSecret is invalid: check the account's secret_env or secret_file"),
    entry(40243, Permanent, "AppSecret is frozen: unfreeze it in the account's admin console"),
    entry(40002, Permanent, "invalid grant_type"),
    entry(40013, Permanent, "invalid appid: check the account's id"),
    entry(40164, Permanent, IP_WHITELIST),
    entry(61004, Permanent, IP_WHITELIST),
    retry(
        89501,
        Duration::from_secs(5 * MINUTE),
        "this IP awaits an administrator's confirmation (WeChat asked them in its app); retrying every 5 minutes",
    ),
    retry(
        89503,
        Duration::from_secs(5 * MINUTE),
        "this IP needs an administrator's confirmation (WeChat asks them in its app); retrying every 5 minutes",
    ),
    retry(
        89506,
        Duration::from_secs(24 * HOUR),
        "an administrator refused this IP twice in 24 hours: no call from it for 24 hours; retrying then",
    ),
    retry(
        89507,
        Duration::from_secs(HOUR),
        "an administrator refused this IP within the hour: no call from it for an hour; retrying then",
    ),
    entry(41002, Permanent, "appid missing"),
    entry(41004, Permanent, "secret missing"),
    entry(48001, Permanent, "this account is not authorized for the API"),
    entry(50002, Permanent, "this account is restricted by WeChat"),
    entry(61024, Permanent, "this call is not allowed for this account (see errmsg)"),
];

/// Where an Open Platform's own IP whitelist is set.
const PLATFORM_IP_WHITELIST: &str =
    "caller IP is not whitelisted for the platform: add this server's IP (in WeChat's errmsg) \
     to the platform's whitelist (open.weixin.qq.com: 第三方平台 → 开发资料 → 白名单)";

/// Codes returned by `api_component_token` (DOC component_access_token).
const ISSUE_COMPONENT_TOKEN: &[Entry] = &[
    entry(-1, Transient, "system busy"),
    entry(45011, Transient, "API minute quota reached"),
    entry(45009, DailyQuota, "API daily quota reached"),
    with_effect(
        61005,
        Effect::TicketRejected,
        "component_verify_ticket expired: waiting for WeChat's next push (every 10 minutes)",
    ),
    with_effect(
        61006,
        Effect::TicketRejected,
        "component_verify_ticket invalid: waiting for WeChat's next push (every 10 minutes)",
    ),
    entry(61004, Permanent, PLATFORM_IP_WHITELIST),
    entry(
        61011,
        Permanent,
        "not a third-party platform: check open_platform.component_appid",
    ),
    entry(
        40125,
        Permanent,
        "component_appsecret is invalid: check open_platform.component_secret_env or _file",
    ),
    entry(
        40001,
        Permanent,
        "component_appsecret is wrong: check open_platform.component_secret_env or _file",
    ),
    entry(
        41004,
        Permanent,
        "component_appsecret missing: check open_platform.component_secret_env or _file",
    ),
    entry(
        40013,
        Permanent,
        "invalid appid: check open_platform.component_appid",
    ),
    entry(
        47001,
        Permanent,
        "WeChat could not read the request (data format error): check \
         open_platform.component_appid and verify tickets written by another service",
    ),
    entry(
        48001,
        Permanent,
        "the platform is not authorized for the API: check its state on open.weixin.qq.com",
    ),
];

/// Codes returned by `api_start_push_ticket`.
const START_PUSH_TICKET: &[Entry] = &[
    entry(-1, Transient, "system busy"),
    entry(45009, DailyQuota, "API daily quota reached"),
    entry(
        40013,
        Permanent,
        "invalid appid: check open_platform.component_appid",
    ),
    entry(
        40125,
        Permanent,
        "component_appsecret is invalid: check open_platform.component_secret_env or _file",
    ),
    entry(
        41004,
        Permanent,
        "component_appsecret missing: check open_platform.component_secret_env or _file",
    ),
    entry(61004, Permanent, PLATFORM_IP_WHITELIST),
];

/// Codes returned by calls made with the component token
/// (`api_authorizer_token`, `api_query_auth`, `api_get_authorizer_list`).
/// Sources: design-issue15 §1.5 (WeChat's docs, staff answers, wechatpy's
/// constants).
const COMPONENT_USE: &[Entry] = &[
    entry(-1, Transient, "system busy"),
    entry(45011, Transient, "API minute quota reached"),
    entry(45009, DailyQuota, "API daily quota reached"),
    entry(
        40001,
        InvalidToken,
        "component_access_token is invalid or not the latest: the component's refresher \
         mints a new one",
    ),
    entry(
        40014,
        InvalidToken,
        "component_access_token is not valid: the component's refresher mints a new one",
    ),
    entry(
        42001,
        InvalidToken,
        "component_access_token expired: the component's refresher mints a new one",
    ),
    refusal(
        61023,
        Effect::RefreshTokenInvalid,
        "the authorizer's refresh token is invalid (a re-authorization replaced it, or it was \
         lost): the daemon looks for the current one with api_get_authorizer_list; if WeChat \
         lists none, the account must authorize the platform again",
    ),
    refusal(
        61003,
        Effect::NotAuthorized,
        "the account does not authorize the platform (it withdrew, or never did): no more calls \
         for it until it authorizes again",
    ),
    with_effect(
        61009,
        Effect::CodeUnusable,
        "the authorization code is invalid: dropped; the stored refresh token (or the one \
         api_get_authorizer_list gives) is used, else the account must authorize again",
    ),
    with_effect(
        61010,
        Effect::CodeUnusable,
        "the authorization code expired (it lives an hour) or was exchanged already: dropped; \
         the stored refresh token (or the one api_get_authorizer_list gives) is used, else \
         the account must authorize again",
    ),
    entry(61004, Permanent, PLATFORM_IP_WHITELIST),
    entry(
        61007,
        Permanent,
        "the account has not granted this API to the platform (its authorization's permission \
         set)",
    ),
    entry(
        40013,
        Permanent,
        "invalid appid: check open_platform.component_appid (and the authorizer's appid)",
    ),
    entry(41002, Permanent, "appid missing"),
    entry(
        40097,
        Permanent,
        "invalid arguments (api_get_authorizer_list takes at most 500 a page)",
    ),
    entry(
        47001,
        Permanent,
        "WeChat could not read the request (data format error): check \
         open_platform.component_appid and the authorizer's appid",
    ),
    entry(
        48001,
        Permanent,
        "the platform is not authorized for the API: check its state on open.weixin.qq.com",
    ),
];

/// Codes returned by calls made with an access token.
const USE_TOKEN: &[Entry] = &[
    entry(-1, Transient, "system busy"),
    entry(45011, Transient, "API minute quota reached"),
    entry(45009, DailyQuota, "API daily quota reached"),
    entry(
        40001,
        InvalidToken,
        "access_token is invalid or not the latest",
    ),
    entry(40014, InvalidToken, "access_token is not valid"),
    entry(42001, InvalidToken, "access_token expired"),
];

/// Why a quota clear is refused: WeChat allows 10 a month per account.
const CLEARS_SPENT: &str = "this month's 10 quota clears of the account are used (clears in the \
     admin console count too): wait for the daily reset at 00:00 Beijing time, or next month";

/// Codes returned by `openapi/quota/get` and `clear_quota`, made with an
/// access token, besides those of every call made with one ([`USE_TOKEN`]).
const MANAGE_QUOTA: &[Entry] = &[
    entry(48006, Permanent, CLEARS_SPENT),
    entry(
        76021,
        Permanent,
        "cgi_path not found: give --api as WeChat's path, such as /cgi-bin/token",
    ),
    entry(
        76022,
        Permanent,
        "no quota to show for this API with this account's token (never for /sns/ APIs)",
    ),
    entry(40013, Permanent, "invalid appid: check the account's id"),
    entry(
        48001,
        Permanent,
        "this account is not authorized for the API",
    ),
];

/// Codes returned by `clear_quota/v2`, made with the AppSecret, besides
/// those of the token call, which takes the same AppSecret ([`ISSUE_TOKEN`]).
const CLEAR_QUOTA_WITH_SECRET: &[Entry] = &[entry(48006, Permanent, CLEARS_SPENT)];

/// WeCom's codes when issuing a token. Its 45009 is a frequency limit that
/// lifts within the hour, not a daily quota.
const WECOM_ISSUE_TOKEN: &[Entry] = &[
    entry(-1, Transient, "system busy"),
    entry(45009, Transient, "API frequency limit"),
    entry(40001, Permanent, "corpsecret is wrong"),
    entry(40091, Permanent, "corpsecret is invalid"),
    entry(40013, Permanent, "invalid corpid"),
    entry(60020, Permanent, "caller IP is not trusted"),
    entry(41002, Permanent, "corpid missing"),
    entry(41004, Permanent, "corpsecret missing"),
    entry(48002, Permanent, "API forbidden for this app"),
];

/// WeCom's codes for calls made with an access token.
const WECOM_USE_TOKEN: &[Entry] = &[
    entry(-1, Transient, "system busy"),
    entry(45009, Transient, "API frequency limit"),
    entry(40014, InvalidToken, "access_token is not valid"),
    entry(42001, InvalidToken, "access_token expired"),
    entry(40001, InvalidToken, "access_token is invalid"),
    entry(60020, Permanent, "caller IP is not trusted"),
    entry(48002, Permanent, "API forbidden for this app"),
];

fn lookup(errcode: i64, call: Call) -> Option<&'static Entry> {
    let table = match call {
        Call::IssueToken => ISSUE_TOKEN,
        Call::UseToken => USE_TOKEN,
        Call::WecomIssueToken => WECOM_ISSUE_TOKEN,
        Call::WecomUseToken => WECOM_USE_TOKEN,
        Call::IssueComponentToken => ISSUE_COMPONENT_TOKEN,
        Call::StartPushTicket => START_PUSH_TICKET,
        Call::ComponentUse => COMPONENT_USE,
        Call::ManageQuota => {
            let own = MANAGE_QUOTA.iter().find(|e| e.code == errcode);
            return own.or_else(|| lookup(errcode, Call::UseToken));
        }
        Call::ClearQuotaWithSecret => {
            let own = CLEAR_QUOTA_WITH_SECRET.iter().find(|e| e.code == errcode);
            return own.or_else(|| lookup(errcode, Call::IssueToken));
        }
    };
    table.iter().find(|e| e.code == errcode)
}

/// Classifies an errcode. Codes not in the table are treated as transient:
/// retrying with capped backoff costs little, giving up on an unknown code
/// could leave an account without a token.
pub fn classify(errcode: i64, call: Call) -> ErrorClass {
    lookup(errcode, call).map_or(Transient, |e| e.class)
}

/// A short English meaning for logs, naming the fix where there is one,
/// or "unknown errcode".
pub fn meaning(errcode: i64, call: Call) -> &'static str {
    lookup(errcode, call).map_or("unknown errcode", |e| e.meaning)
}

/// What the errcode asks of the daemon besides its class.
pub fn effect(errcode: i64, call: Call) -> Option<Effect> {
    lookup(errcode, call).and_then(|e| e.effect)
}

/// When to try again after this errcode, where WeChat says (the IP
/// confirmation codes); `None`: as the class says.
pub fn retry_after(errcode: i64, call: Call) -> Option<Duration> {
    lookup(errcode, call).and_then(|e| e.retry_after)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issuing_codes_follow_the_contract() {
        for code in [-1, 45011] {
            assert_eq!(classify(code, Call::IssueToken), Transient, "{code}");
        }
        assert_eq!(classify(45009, Call::IssueToken), DailyQuota);
        for code in [40001, 40125, 40013, 40164, 89503, 41002, 41004] {
            assert_eq!(classify(code, Call::IssueToken), Permanent, "{code}");
        }
    }

    #[test]
    fn ip_confirmation_codes_retry_when_wechat_lifts_them() {
        assert_eq!(
            retry_after(89501, Call::IssueToken),
            Some(Duration::from_secs(300))
        );
        assert_eq!(
            retry_after(89503, Call::IssueToken),
            Some(Duration::from_secs(300))
        );
        assert_eq!(
            retry_after(89506, Call::IssueToken),
            Some(Duration::from_secs(86_400))
        );
        assert_eq!(
            retry_after(89507, Call::IssueToken),
            Some(Duration::from_secs(3600))
        );
        for code in [40001, 40243, 40164, 61004, 48001, 50002, 61024] {
            assert_eq!(classify(code, Call::IssueToken), Permanent, "{code}");
            assert_eq!(retry_after(code, Call::IssueToken), None, "{code}");
        }
        assert!(meaning(61004, Call::IssueToken).contains("IP白名单"));
    }

    #[test]
    fn using_a_stale_token_is_not_a_config_error() {
        for code in [40001, 40014, 42001] {
            assert_eq!(classify(code, Call::UseToken), InvalidToken, "{code}");
        }
    }

    #[test]
    fn wecom_frequency_limit_is_not_a_daily_stop() {
        assert_eq!(classify(45009, Call::WecomIssueToken), Transient);
        assert_eq!(classify(60020, Call::WecomIssueToken), Permanent);
        assert_eq!(classify(42001, Call::WecomUseToken), InvalidToken);
    }

    #[test]
    fn quota_codes_name_the_monthly_clear_limit_and_the_path() {
        for call in [Call::ManageQuota, Call::ClearQuotaWithSecret] {
            assert_eq!(classify(48006, call), Permanent);
            assert!(meaning(48006, call).contains("10 quota clears"));
        }
        assert!(meaning(76021, Call::ManageQuota).contains("--api"));
        assert_eq!(classify(42001, Call::ManageQuota), InvalidToken);
        // With the AppSecret, 40001 is the secret, not a token.
        assert_eq!(classify(40001, Call::ClearQuotaWithSecret), Permanent);
    }

    #[test]
    fn a_refused_verify_ticket_is_dropped_not_a_configuration_error() {
        for code in [61005, 61006] {
            let call = Call::IssueComponentToken;
            assert_eq!(classify(code, call), Transient, "{code}");
            assert_eq!(effect(code, call), Some(Effect::TicketRejected), "{code}");
            assert!(meaning(code, call).contains("next push"));
        }
        for code in [61004, 61011, 40125, 40001, 41004, 40013, 47001] {
            assert_eq!(
                classify(code, Call::IssueComponentToken),
                Permanent,
                "{code}"
            );
            assert_eq!(effect(code, Call::IssueComponentToken), None, "{code}");
        }
        assert!(meaning(61004, Call::IssueComponentToken).contains("第三方平台"));
        assert_eq!(classify(45009, Call::IssueComponentToken), DailyQuota);
        // The same codes mean nothing of the kind elsewhere.
        assert_eq!(effect(61005, Call::IssueToken), None);
        assert_eq!(classify(40013, Call::StartPushTicket), Permanent);
    }

    #[test]
    fn calls_with_the_component_token_tell_its_staleness_from_the_authorizers_state() {
        let call = Call::ComponentUse;
        for code in [40001, 40014, 42001] {
            assert_eq!(classify(code, call), InvalidToken, "{code}");
            assert_eq!(effect(code, call), None, "{code}");
            assert!(meaning(code, call).contains("component_access_token"));
        }
        let effects = [
            (
                61023,
                Effect::RefreshTokenInvalid,
                "api_get_authorizer_list",
            ),
            (61003, Effect::NotAuthorized, "authorizes again"),
            (61009, Effect::CodeUnusable, "refresh token"),
            (61010, Effect::CodeUnusable, "an hour"),
        ];
        for (code, wanted, fix) in effects {
            // A dropped code is no reason to wait: the refresh token is
            // tried at once.
            let class = match wanted {
                Effect::CodeUnusable => Transient,
                _ => Permanent,
            };
            assert_eq!(classify(code, call), class, "{code}");
            assert_eq!(effect(code, call), Some(wanted), "{code}");
            assert!(meaning(code, call).contains(fix), "{code}");
            assert_eq!(retry_after(code, call), None, "{code}");
        }
        for code in [61004, 61007, 40013, 41002, 40097, 47001, 48001] {
            assert_eq!(classify(code, call), Permanent, "{code}");
            assert_eq!(effect(code, call), None, "{code}");
        }
        assert!(meaning(61004, call).contains("第三方平台"));
        assert_eq!(classify(45009, call), DailyQuota);
        for code in [-1, 45011, 99999] {
            assert_eq!(classify(code, call), Transient, "{code}");
        }
        // The authorizer's codes mean nothing of the kind on other calls.
        for other in [Call::IssueToken, Call::UseToken, Call::IssueComponentToken] {
            for code in [61023, 61003, 61009, 61010] {
                assert_eq!(effect(code, other), None, "{code} {other:?}");
            }
        }
        // 40001 with the component secret is the secret, with its token the token.
        assert_eq!(classify(40001, Call::IssueComponentToken), Permanent);
    }

    #[test]
    fn an_authorizers_codes_say_what_became_of_it() {
        let call = Call::ComponentUse;
        assert_eq!(effect(61023, call), Some(Effect::RefreshTokenInvalid));
        assert_eq!(classify(61023, call), Permanent);
        assert_eq!(effect(61003, call), Some(Effect::NotAuthorized));
        assert_eq!(classify(61003, call), Permanent);
        for code in [61009, 61010] {
            assert_eq!(effect(code, call), Some(Effect::CodeUnusable), "{code}");
            assert_eq!(classify(code, call), Transient, "{code}");
        }
        for code in [40001, 40014, 42001] {
            assert_eq!(classify(code, call), InvalidToken, "{code}");
        }
        assert_eq!(classify(45009, call), DailyQuota);
        assert_eq!(effect(61023, Call::IssueToken), None);
    }

    #[test]
    fn unknown_codes_are_retried() {
        assert_eq!(classify(99999, Call::IssueToken), Transient);
        assert_eq!(meaning(99999, Call::IssueToken), "unknown errcode");
    }
}
