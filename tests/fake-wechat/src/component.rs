//! A WeChat Open Platform component (第三方平台) as WeChat sees it: its
//! message token, EncodingAESKey and appid, and the pushes WeChat sends to
//! its callback URL (授权事件接收URL), encrypted as WeChat encrypts them.
//!
//! The crypto here is written apart from wxtokend's (`aes`, `cbc`, `sha1`
//! used directly), so that the receiver is tested against a second
//! implementation of WeChat's scheme, not against itself.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aes::Aes256;
use base64::alphabet;
use base64::engine::general_purpose::STANDARD;
use base64::engine::{GeneralPurpose, GeneralPurposeConfig};
use base64::Engine as _;
use cbc::cipher::block_padding::NoPadding;
use cbc::cipher::{BlockModeEncrypt, KeyIvInit};
use rand::Rng;
use sha1::{Digest, Sha1};

/// EncodingAESKey + "=" decodes to 32 bytes whose last symbol carries
/// spare bits: the decoder must allow them, as WeChat's SDKs do.
pub(crate) const KEY_BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true),
);

/// PKCS#7 to 32-byte blocks (WeChat's, not AES's 16).
const PAD_BLOCK: usize = 32;

/// A platform's message settings, as entered on the Open Platform.
#[derive(Debug, Clone)]
pub struct ComponentConfig {
    pub appid: String,
    /// 消息校验Token.
    pub token: String,
    /// 消息加解密Key: 43 characters of `[A-Za-z0-9]`.
    pub encoding_aes_key: String,
}

impl ComponentConfig {
    /// A component with a random token and key.
    pub fn random(appid: &str) -> Self {
        let mut rng = rand::rng();
        let alnum = |n: usize, rng: &mut rand::rngs::ThreadRng| -> String {
            (0..n)
                .map(|_| {
                    let chars = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
                    char::from(chars[rng.random_range(0..chars.len())])
                })
                .collect()
        };
        Self {
            appid: appid.to_owned(),
            token: format!("msgtoken{}", alnum(16, &mut rng)),
            encoding_aes_key: alnum(43, &mut rng),
        }
    }
}

/// One push: the query string and the body WeChat POSTs. Public so that
/// tests can spoil either.
#[derive(Debug, Clone)]
pub struct Push {
    /// `signature=…&timestamp=…&nonce=…&encrypt_type=aes&msg_signature=…`
    pub query: String,
    /// `<xml><AppId>…</AppId><Encrypt>…</Encrypt></xml>`
    pub body: String,
}

/// What a receiver answered a push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

impl Answer {
    /// What WeChat counts as delivered: 200 and `success`.
    pub fn delivered(&self) -> bool {
        self.status == 200 && self.body == "success"
    }
}

impl Push {
    /// POSTs it to `url` (the callback URL, without a query string).
    pub async fn send(&self, url: &str) -> Result<Answer, reqwest::Error> {
        self.send_as(reqwest::Method::POST, url).await
    }

    /// Sends it with another method (a receiver must refuse all but POST).
    pub async fn send_as(
        &self,
        method: reqwest::Method,
        url: &str,
    ) -> Result<Answer, reqwest::Error> {
        let response = reqwest::Client::new()
            .request(method, format!("{url}?{}", self.query))
            .timeout(Duration::from_secs(10))
            .header("content-type", "text/xml")
            .body(self.body.clone())
            .send()
            .await?;
        let status = response.status().as_u16();
        Ok(Answer {
            status,
            body: response.text().await?,
        })
    }
}

/// A component's sender: encrypts and signs pushes as WeChat does.
#[derive(Clone)]
pub struct Component {
    config: ComponentConfig,
    key: [u8; 32],
}

impl std::fmt::Debug for Component {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Component({})", self.config.appid)
    }
}

impl Component {
    /// Panics on a key that is not 43 characters of base64 for 32 bytes.
    pub fn new(config: ComponentConfig) -> Self {
        let bytes = KEY_BASE64
            .decode(format!("{}=", config.encoding_aes_key))
            .expect("EncodingAESKey is base64");
        let key = <[u8; 32]>::try_from(bytes).expect("EncodingAESKey decodes to 32 bytes");
        Self { config, key }
    }

    pub fn config(&self) -> &ComponentConfig {
        &self.config
    }

    /// A `component_verify_ticket` push created at `create_time`, sent at
    /// `timestamp` (normally now).
    pub fn verify_ticket(
        &self,
        ticket: &str,
        create_time: SystemTime,
        timestamp: SystemTime,
    ) -> Push {
        let xml = format!(
            "<xml><AppId><![CDATA[{appid}]]></AppId><CreateTime>{created}</CreateTime>\
             <InfoType><![CDATA[component_verify_ticket]]></InfoType>\
             <ComponentVerifyTicket><![CDATA[{ticket}]]></ComponentVerifyTicket></xml>",
            appid = self.config.appid,
            created = unix(create_time),
        );
        self.push(&xml, timestamp)
    }

    /// An `authorized` event for `authorizer` with `code`.
    pub fn authorized(&self, authorizer: &str, code: &str, create_time: SystemTime) -> Push {
        self.authorization("authorized", authorizer, code, create_time)
    }

    /// An `updateauthorized` event (the permission set changed) for
    /// `authorizer` with a new `code`.
    pub fn update_authorized(&self, authorizer: &str, code: &str, create_time: SystemTime) -> Push {
        self.authorization("updateauthorized", authorizer, code, create_time)
    }

    fn authorization(
        &self,
        info_type: &str,
        authorizer: &str,
        code: &str,
        create_time: SystemTime,
    ) -> Push {
        let created = unix(create_time);
        let xml = format!(
            "<xml><AppId><![CDATA[{appid}]]></AppId><CreateTime>{created}</CreateTime>\
             <InfoType><![CDATA[{info_type}]]></InfoType>\
             <AuthorizerAppid><![CDATA[{authorizer}]]></AuthorizerAppid>\
             <AuthorizationCode><![CDATA[{code}]]></AuthorizationCode>\
             <AuthorizationCodeExpiredTime>{expires}</AuthorizationCodeExpiredTime>\
             <PreAuthCode><![CDATA[preauthcode@@@fake]]></PreAuthCode></xml>",
            appid = self.config.appid,
            expires = created + 3600,
        );
        self.push(&xml, create_time)
    }

    /// An `unauthorized` event: `authorizer` withdrew (no code).
    pub fn unauthorized(&self, authorizer: &str, create_time: SystemTime) -> Push {
        let xml = format!(
            "<xml><AppId><![CDATA[{appid}]]></AppId><CreateTime>{created}</CreateTime>\
             <InfoType><![CDATA[unauthorized]]></InfoType>\
             <AuthorizerAppid><![CDATA[{authorizer}]]></AuthorizerAppid></xml>",
            appid = self.config.appid,
            created = unix(create_time),
        );
        self.push(&xml, create_time)
    }

    /// Any decrypted message, encrypted, signed and wrapped.
    pub fn push(&self, xml: &str, timestamp: SystemTime) -> Push {
        let mut random = [0u8; 16];
        rand::rng().fill(&mut random);
        let encrypt = self.encrypt(random, xml.as_bytes(), &self.config.appid);
        let timestamp = unix(timestamp).to_string();
        let nonce = rand::rng()
            .random_range(100_000_000u64..1_000_000_000)
            .to_string();
        let msg_signature = self.signature(&timestamp, &nonce, &encrypt);
        let signature = self.signature(&timestamp, &nonce, "");
        Push {
            query: format!(
                "signature={signature}&timestamp={timestamp}&nonce={nonce}\
                 &encrypt_type=aes&msg_signature={msg_signature}"
            ),
            body: format!(
                "<xml><AppId><![CDATA[{}]]></AppId><Encrypt><![CDATA[{encrypt}]]></Encrypt></xml>",
                self.config.appid
            ),
        }
    }

    /// SHA-1 over the sorted, concatenated token, timestamp, nonce and
    /// `Encrypt` (the plain `signature` leaves `Encrypt` out: pass "").
    pub fn signature(&self, timestamp: &str, nonce: &str, encrypt: &str) -> String {
        let mut parts = vec![self.config.token.as_str(), timestamp, nonce];
        if !encrypt.is_empty() {
            parts.push(encrypt);
        }
        parts.sort_unstable();
        let digest = Sha1::digest(parts.concat().as_bytes());
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// `base64(AES-256-CBC(random ‖ u32_be(len) ‖ msg ‖ appid, PKCS#7/32))`,
    /// IV = the key's first 16 bytes; `appid` may be another's (tests).
    pub fn encrypt(&self, random: [u8; 16], msg: &[u8], appid: &str) -> String {
        let mut plain = random.to_vec();
        plain.extend_from_slice(&u32::try_from(msg.len()).expect("short").to_be_bytes());
        plain.extend_from_slice(msg);
        plain.extend_from_slice(appid.as_bytes());
        let n = PAD_BLOCK - plain.len() % PAD_BLOCK;
        plain.resize(plain.len() + n, u8::try_from(n).expect("n <= 32"));
        let len = plain.len();
        let iv: [u8; 16] = self.key[..16].try_into().expect("16 bytes");
        let encrypted = cbc::Encryptor::<Aes256>::new(&self.key.into(), &iv.into())
            .encrypt_padded::<NoPadding>(&mut plain, len)
            .expect("whole blocks");
        STANDARD.encode(encrypted)
    }
}

/// Seconds since the epoch.
fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Pushes a new verify ticket to a URL every `every`, as WeChat does every
/// 10 minutes; stops when dropped.
pub struct TicketPusher {
    task: tokio::task::JoinHandle<()>,
    sent: Arc<Mutex<Vec<(String, Answer)>>>,
}

impl TicketPusher {
    /// Starts pushing `ticket@@@fake-N` (N = 1, 2, …) to `url`.
    pub fn start(component: Component, url: String, every: Duration) -> Self {
        let sent = Arc::new(Mutex::new(Vec::new()));
        let log = sent.clone();
        let task = tokio::spawn(async move {
            let mut interval = tokio::time::interval(every);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            for n in 1u64.. {
                interval.tick().await;
                let ticket = format!(
                    "ticket@@@fake-{n}-{}",
                    rand::rng().random_range(0..u32::MAX)
                );
                let now = SystemTime::now();
                let answer = match component.verify_ticket(&ticket, now, now).send(&url).await {
                    Ok(answer) => answer,
                    Err(e) => Answer {
                        status: 0,
                        body: e.to_string(),
                    },
                };
                log.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push((ticket, answer));
            }
        });
        Self { task, sent }
    }

    /// Every ticket pushed so far, with the answer.
    pub fn sent(&self) -> Vec<(String, Answer)> {
        self.sent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

impl Drop for TicketPusher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// wechatpy's `test_encrypt_message` (tests/test_crypto.py): a reply
    /// encrypted with the random prefix `1234567890123456`, and its
    /// `msg_signature`. Checked here apart from wxtokend's own tests.
    #[test]
    fn encrypts_and_signs_as_wechatpy_s_published_vector() {
        let c = Component::new(ComponentConfig {
            appid: "wx49f0ab532d5d035a".into(),
            token: "123456".into(),
            encoding_aes_key: "kWxPEV2UEDyxWpmPdKC3F4dgPDmOvfKX1HGnEUDS1aR".into(),
        });
        let msg =
            "<xml>\n<MsgType><![CDATA[text]]></MsgType>\n<Content><![CDATA[test]]></Content>\n\
                   <FromUserName><![CDATA[wx49f0ab532d5d035a]]></FromUserName>\n\
                   <ToUserName><![CDATA[messense]]></ToUserName>\n<AgentID>1</AgentID>\n\
                   <CreateTime>1411525903</CreateTime>\n</xml>";
        let encrypt = c.encrypt(*b"1234567890123456", msg.as_bytes(), "wx49f0ab532d5d035a");
        assert_eq!(
            encrypt,
            "9s4gMv99m88kKTh/H8IdkOiMg6bisoy3ypwy9H4hvSPe9nsGaqyw5hhSjdYbcrKk+j3nba4HMOTzHrluLBYqxgNcBqGsL8GqxlhZgURnAtObvesEl5nZ+uBE8bviY0LWke8Zy9V/QYKxNV2FqllNXcfmstttyIkMKCCmVbCFM2JTF5wY0nFhHZSjPUL2Q1qvSUCUld+/WIXrx0oyKQmpB6o8NRrrNrsDf03oxI1p9FxUgMnwKKZeOA/uu+2IEvEBtb7muXsVbwbgX05UPPJvFurDXafG0RQyPR+mf1nDnAtQmmNOuiR5MIkdQ39xn1vWwi1O5oazPoQJz0nTYjxxEE8kv3kFxtAGVRe3ypD3WeK2XeFYFMNMpatF9XiKzHo3"
        );
        assert_eq!(
            c.signature("1411525903", "461056294", &encrypt),
            "407518b7649e86ef23978113f92d27afa9296533"
        );
    }
}
