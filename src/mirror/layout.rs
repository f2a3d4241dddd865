//! Where and how each SDK reads a credential from Redis: the key, the
//! encoding of the value, and the companion keys it reads beside it. Read
//! from the SDKs' own sources (the README lists the versions verified);
//! nothing here does I/O or holds a credential.
//!
//! Every key is written with the credential's remaining life as its TTL (see
//! `writer.rs` for why the SDKs' own early expiries are not copied).

use wxtokend_reader::{AccountId, CredentialKind};

use crate::config::Platform;

/// An SDK whose Redis token cache wxtokend can fill.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Layout {
    /// WxJava (`weixin-java-mp`, `-miniapp`, `-cp`) with its RedisTemplate
    /// or Jedis storage (not Redisson's, whose codec is binary).
    Wxjava,
    /// silenceper/wechat (Go) with its Redis cache.
    Silenceper,
    /// wechatpy with `RedisStorage`.
    Wechatpy,
}

impl Layout {
    pub const ALL: [Layout; 3] = [Self::Wxjava, Self::Silenceper, Self::Wechatpy];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Wxjava => "wxjava",
            Self::Silenceper => "silenceper",
            Self::Wechatpy => "wechatpy",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|l| l.as_str() == name)
    }
}

impl std::fmt::Display for Layout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The key prefixes an SDK lets its user choose (`[mirrors.key_prefix]`),
/// with the SDKs' defaults. silenceper's prefixes are constants of the SDK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPrefixes {
    /// WxJava Official Accounts: `wx.mp.config-storage.key-prefix`.
    pub wxjava: String,
    /// WxJava Mini Programs: `wx.miniapp.config-storage.key-prefix`.
    pub wxjava_miniapp: String,
    /// WxJava WeCom: `wx.cp.config-storage.key-prefix`.
    pub wxjava_wecom: String,
    /// wechatpy: `RedisStorage(redis, prefix=...)`.
    pub wechatpy: String,
}

impl Default for KeyPrefixes {
    fn default() -> Self {
        Self {
            wxjava: "wx".into(),
            wxjava_miniapp: "wa".into(),
            wxjava_wecom: "wx:cp".into(),
            wechatpy: "wechatpy".into(),
        }
    }
}

/// What a key holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value {
    /// The credential as is (Java's `StringRedisTemplate`, Go's `SetEX`).
    Raw,
    /// The credential as a JSON string, quotes included (wechatpy's
    /// `json.dumps`).
    Json,
    /// The expiry as a JSON number of Unix seconds (wechatpy's
    /// `…_expires_at` companion keys).
    JsonExpiresAt,
}

/// One key an SDK reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub value: Value,
}

fn raw(key: String) -> Vec<Entry> {
    vec![Entry {
        key,
        value: Value::Raw,
    }]
}

/// The keys `layout` reads for `kind` of `account`; empty where the SDK has
/// no key for it (or one wxtokend must not write, see the README).
pub fn entries(
    layout: Layout,
    prefixes: &KeyPrefixes,
    platform: Platform,
    account: &AccountId,
    kind: CredentialKind,
) -> Vec<Entry> {
    match layout {
        Layout::Wxjava => wxjava(prefixes, platform, account, kind),
        Layout::Silenceper => silenceper(platform, account, kind),
        Layout::Wechatpy => wechatpy(prefixes, platform, account, kind),
    }
}

/// `WxMpRedisConfigImpl`, `WxMaRedisBetterConfigImpl` (`%s:access_token:%s`,
/// `%s:ticket:key:%s:%s` with `TicketType.getCode()`) and
/// `AbstractWxCpInRedisConfigImpl` (`{prefix:}wechat_cp_…_key:{corpid}:{agentid}`).
fn wxjava(
    prefixes: &KeyPrefixes,
    platform: Platform,
    account: &AccountId,
    kind: CredentialKind,
) -> Vec<Entry> {
    use CredentialKind::{AccessToken, AgentConfigTicket, JsapiTicket, WxCardTicket};
    let id = account.as_str();
    match (platform, kind) {
        (Platform::OfficialAccount, AccessToken) => {
            raw(format!("{}:access_token:{id}", prefixes.wxjava))
        }
        (Platform::OfficialAccount, JsapiTicket) => {
            raw(format!("{}:ticket:key:{id}:jsapi", prefixes.wxjava))
        }
        (Platform::OfficialAccount, WxCardTicket) => {
            raw(format!("{}:ticket:key:{id}:wx_card", prefixes.wxjava))
        }
        (Platform::MiniProgram, AccessToken) => {
            raw(format!("{}:access_token:{id}", prefixes.wxjava_miniapp))
        }
        (Platform::Wecom, AccessToken | JsapiTicket | AgentConfigTicket) => {
            let name = match kind {
                AccessToken => "wechat_cp_access_token_key",
                JsapiTicket => "wechat_cp_jsapi_ticket_key",
                _ => "wechat_cp_agent_jsapi_ticket_key",
            };
            // WxJava: a blank prefix is none, else it ends with one colon.
            let prefix = prefixes.wxjava_wecom.trim();
            let prefix = match prefix {
                "" => String::new(),
                p if p.ends_with(':') => p.to_owned(),
                p => format!("{p}:"),
            };
            // corpid/agentid → corpid:agentid
            let unique = id.replacen('/', ":", 1);
            raw(format!("{prefix}{name}:{unique}"))
        }
        _ => Vec::new(),
    }
}

/// `credential.DefaultAccessToken` and `DefaultJsTicket`:
/// `{CacheKey…Prefix}_access_token_{appid}`, the prefixes ending in `_`.
/// WeCom is left out: its key (`gowechat_work__access_token_{corpid}`)
/// has no agent id, so two apps of one corporation would share it.
fn silenceper(platform: Platform, account: &AccountId, kind: CredentialKind) -> Vec<Entry> {
    let id = account.as_str();
    match (platform, kind) {
        (Platform::OfficialAccount, CredentialKind::AccessToken) => {
            raw(format!("gowechat_officialaccount__access_token_{id}"))
        }
        (Platform::OfficialAccount, CredentialKind::JsapiTicket) => {
            raw(format!("gowechat_officialaccount__jsapi_ticket_{id}"))
        }
        (Platform::MiniProgram, CredentialKind::AccessToken) => {
            raw(format!("gowechat_miniprogram__access_token_{id}"))
        }
        _ => Vec::new(),
    }
}

/// `BaseWeChatClient.access_token_key` (`{appid}_access_token`) and the
/// JS-SDK tickets of `WeChatJSAPI`, each with its `…_expires_at` companion,
/// under `RedisStorage`'s `{prefix}:`. WeCom is left out: wechatpy's key
/// holds the first 10 characters of the app's secret.
fn wechatpy(
    prefixes: &KeyPrefixes,
    platform: Platform,
    account: &AccountId,
    kind: CredentialKind,
) -> Vec<Entry> {
    let name = match (platform, kind) {
        (Platform::OfficialAccount | Platform::MiniProgram, CredentialKind::AccessToken) => {
            "access_token"
        }
        (Platform::OfficialAccount, CredentialKind::JsapiTicket) => "jsapi_ticket",
        (Platform::OfficialAccount, CredentialKind::WxCardTicket) => "jsapi_card_ticket",
        _ => return Vec::new(),
    };
    let key = format!("{}:{}_{name}", prefixes.wechatpy, account.as_str());
    vec![
        Entry {
            key: format!("{key}_expires_at"),
            value: Value::JsonExpiresAt,
        },
        Entry {
            key,
            value: Value::Json,
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(layout: Layout, platform: Platform, id: &str, kind: CredentialKind) -> Vec<String> {
        entries(
            layout,
            &KeyPrefixes::default(),
            platform,
            &AccountId::new(id),
            kind,
        )
        .into_iter()
        .map(|e| e.key)
        .collect()
    }

    #[test]
    fn wxjava_keys_are_the_storages_own() {
        use CredentialKind::*;
        use Platform::*;
        let wx = |p, id, k| keys(Layout::Wxjava, p, id, k);
        assert_eq!(
            wx(OfficialAccount, "wx1", AccessToken),
            ["wx:access_token:wx1"]
        );
        assert_eq!(
            wx(OfficialAccount, "wx1", JsapiTicket),
            ["wx:ticket:key:wx1:jsapi"]
        );
        assert_eq!(
            wx(OfficialAccount, "wx1", WxCardTicket),
            ["wx:ticket:key:wx1:wx_card"]
        );
        assert_eq!(wx(MiniProgram, "wx2", AccessToken), ["wa:access_token:wx2"]);
        assert_eq!(
            wx(Wecom, "ww1/1000002", AccessToken),
            ["wx:cp:wechat_cp_access_token_key:ww1:1000002"]
        );
        assert_eq!(
            wx(Wecom, "ww1/1000002", JsapiTicket),
            ["wx:cp:wechat_cp_jsapi_ticket_key:ww1:1000002"]
        );
        assert_eq!(
            wx(Wecom, "ww1/1000002", AgentConfigTicket),
            ["wx:cp:wechat_cp_agent_jsapi_ticket_key:ww1:1000002"]
        );
    }

    #[test]
    fn wxjava_wecom_prefix_gets_one_colon_and_blank_is_none() {
        let mut prefixes = KeyPrefixes::default();
        let key = |prefixes: &KeyPrefixes| {
            entries(
                Layout::Wxjava,
                prefixes,
                Platform::Wecom,
                &AccountId::new("ww1/7"),
                CredentialKind::AccessToken,
            )[0]
            .key
            .clone()
        };
        prefixes.wxjava_wecom = "cp:".into();
        assert_eq!(key(&prefixes), "cp:wechat_cp_access_token_key:ww1:7");
        prefixes.wxjava_wecom = String::new();
        assert_eq!(key(&prefixes), "wechat_cp_access_token_key:ww1:7");
    }

    #[test]
    fn silenceper_keys_have_the_double_underscore() {
        use CredentialKind::*;
        use Platform::*;
        let go = |p, id, k| keys(Layout::Silenceper, p, id, k);
        assert_eq!(
            go(OfficialAccount, "wx1", AccessToken),
            ["gowechat_officialaccount__access_token_wx1"]
        );
        assert_eq!(
            go(OfficialAccount, "wx1", JsapiTicket),
            ["gowechat_officialaccount__jsapi_ticket_wx1"]
        );
        assert_eq!(
            go(MiniProgram, "wx2", AccessToken),
            ["gowechat_miniprogram__access_token_wx2"]
        );
        assert!(go(OfficialAccount, "wx1", WxCardTicket).is_empty());
        assert!(go(Wecom, "ww1/7", AccessToken).is_empty());
    }

    #[test]
    fn wechatpy_keys_come_with_their_expires_at() {
        use CredentialKind::*;
        use Platform::*;
        let py = |p, id, k| keys(Layout::Wechatpy, p, id, k);
        assert_eq!(
            py(OfficialAccount, "wx1", AccessToken),
            [
                "wechatpy:wx1_access_token_expires_at",
                "wechatpy:wx1_access_token"
            ]
        );
        assert_eq!(
            py(OfficialAccount, "wx1", JsapiTicket),
            [
                "wechatpy:wx1_jsapi_ticket_expires_at",
                "wechatpy:wx1_jsapi_ticket"
            ]
        );
        assert_eq!(
            py(OfficialAccount, "wx1", WxCardTicket),
            [
                "wechatpy:wx1_jsapi_card_ticket_expires_at",
                "wechatpy:wx1_jsapi_card_ticket"
            ]
        );
        assert_eq!(py(MiniProgram, "wx2", AccessToken).len(), 2);
        assert!(py(Wecom, "ww1/7", AccessToken).is_empty());
    }
}
