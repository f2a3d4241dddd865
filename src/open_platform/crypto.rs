//! WeChat's message encryption (消息加解密, the `WXBizMsgCrypt` of WeChat's
//! samples), as the Open Platform uses it for every push to the callback URL.
//!
//! - The key is the platform's 43-character `EncodingAESKey`, base64 without
//!   its final `=`: 32 bytes of AES-256 key, whose first 16 are also the IV.
//! - `msg_signature` is the lower-case hex SHA-1 of the token, timestamp,
//!   nonce and `Encrypt`, sorted byte-wise and joined without a separator.
//! - `Encrypt` is the base64 of AES-256-CBC over
//!   `random[16] ‖ u32_be(msg_len) ‖ msg ‖ appid`, padded PKCS#7-style to a
//!   multiple of **32** bytes (not AES's 16); `appid` is the platform's own.
//!
//! Nothing here authenticates a message but the signature: a receiver checks
//! it first ([`MessageCrypto::signature_matches`]), then decrypts.

use std::fmt;

use aes::Aes256;
use base64::alphabet;
use base64::engine::general_purpose::STANDARD;
use base64::engine::{GeneralPurpose, GeneralPurposeConfig};
use base64::Engine as _;
use cbc::cipher::block_padding::NoPadding;
use cbc::cipher::{BlockModeDecrypt, BlockModeEncrypt, KeyIvInit};
use sha1::{Digest, Sha1};

/// Length of an `EncodingAESKey`.
pub const ENCODING_AES_KEY_LEN: usize = 43;

/// WeChat pads to multiples of 32 bytes (its samples' `PKCS7Encoder`).
const BLOCK: usize = 32;

/// The random prefix of every plaintext.
const RANDOM_LEN: usize = 16;

/// The random prefix and the big-endian `u32` message length.
const HEADER_LEN: usize = RANDOM_LEN + 4;

/// The `EncodingAESKey` decoder. WeChat's keys are 43 characters of base64
/// whose last one usually carries non-zero bits past the 256th: the
/// `STANDARD` engine refuses those (`InvalidLastSymbol`); this one ignores
/// them, as every SDK's decoder does.
const KEY_BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true),
);

type Encryptor = cbc::Encryptor<Aes256>;
type Decryptor = cbc::Decryptor<Aes256>;

/// Which of the two configured keys a problem is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRole {
    Current,
    /// The key before a change, tried when the current one fails (WeChat
    /// asks receivers to keep it for a while).
    Previous,
}

impl fmt::Display for KeyRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Current => "encoding_aes_key",
            Self::Previous => "previous_encoding_aes_key",
        })
    }
}

/// Why a key was refused or a message could not be read. No variant holds
/// the token, a key or any part of a plaintext.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    #[error("the {key} must be {ENCODING_AES_KEY_LEN} characters, not {len}")]
    KeyLength { key: KeyRole, len: usize },
    #[error("the {key} may hold only the letters A-Z and a-z and the digits 0-9")]
    KeyAlphabet { key: KeyRole },
    #[error("the message token is empty")]
    EmptyToken,
    #[error("the component appid is empty")]
    EmptyAppId,
    #[error("Encrypt is not base64")]
    NotBase64,
    #[error("the ciphertext is {0} bytes, not a non-zero multiple of {BLOCK}")]
    CiphertextLength(usize),
    #[error("the decrypted message has no valid padding")]
    Padding,
    #[error("the decrypted message is shorter than its length field says")]
    Truncated,
    #[error("the decrypted message is addressed to another appid")]
    OtherAppId,
    #[error("a message must be shorter than 4 GiB")]
    MessageTooLong,
}

/// One AES-256 key, which is also its own IV's source. `Debug` hides it.
#[derive(Clone)]
struct AesKey([u8; 32]);

impl AesKey {
    fn parse(encoding_aes_key: &str, role: KeyRole) -> Result<Self, CryptoError> {
        let len = encoding_aes_key.chars().count();
        if len != ENCODING_AES_KEY_LEN {
            return Err(CryptoError::KeyLength { key: role, len });
        }
        // WeChat draws keys from [A-Za-z0-9]; `+` and `/` would decode, but
        // no key WeChat issues holds them, so they are a typo.
        if !encoding_aes_key.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(CryptoError::KeyAlphabet { key: role });
        }
        let bytes = KEY_BASE64
            .decode(format!("{encoding_aes_key}="))
            .map_err(|_| CryptoError::KeyAlphabet { key: role })?;
        let key = <[u8; 32]>::try_from(bytes).map_err(|bytes| CryptoError::KeyLength {
            key: role,
            len: bytes.len(),
        })?;
        Ok(Self(key))
    }

    fn iv(&self) -> [u8; 16] {
        let mut iv = [0; 16];
        iv.copy_from_slice(&self.0[..16]);
        iv
    }

    /// Decrypts and unwraps one `Encrypt`, checking the tail `appid`.
    fn open(&self, encrypt: &str, appid: &str) -> Result<Opened, CryptoError> {
        let mut buf = STANDARD
            .decode(encrypt)
            .map_err(|_| CryptoError::NotBase64)?;
        if buf.is_empty() || buf.len() % BLOCK != 0 {
            return Err(CryptoError::CiphertextLength(buf.len()));
        }
        let len = buf.len();
        let plain = Decryptor::new(&self.0.into(), &self.iv().into())
            .decrypt_padded::<NoPadding>(&mut buf)
            .map_err(|_| CryptoError::CiphertextLength(len))?;
        unframe(unpad(plain)?, appid)
    }

    fn seal(
        &self,
        random: [u8; RANDOM_LEN],
        msg: &[u8],
        appid: &str,
    ) -> Result<String, CryptoError> {
        let msg_len = u32::try_from(msg.len()).map_err(|_| CryptoError::MessageTooLong)?;
        let mut buf = Vec::with_capacity(HEADER_LEN + msg.len() + appid.len() + BLOCK);
        buf.extend_from_slice(&random);
        buf.extend_from_slice(&msg_len.to_be_bytes());
        buf.extend_from_slice(msg);
        buf.extend_from_slice(appid.as_bytes());
        pad(&mut buf);
        let len = buf.len();
        let ciphertext = Encryptor::new(&self.0.into(), &self.iv().into())
            .encrypt_padded::<NoPadding>(&mut buf, len)
            .map_err(|_| CryptoError::CiphertextLength(len))?;
        Ok(STANDARD.encode(ciphertext))
    }
}

impl fmt::Debug for AesKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("****")
    }
}

/// A decrypted message and the random prefix it was sent with.
struct Opened {
    /// Read by the tests, which re-encrypt WeChat's vectors with it.
    #[cfg_attr(not(test), allow(dead_code))]
    random: [u8; RANDOM_LEN],
    msg: Vec<u8>,
}

/// Pads `buf` to a multiple of [`BLOCK`] with `n` bytes of value `n`
/// (a whole block when it is already aligned).
fn pad(buf: &mut Vec<u8>) {
    let n = BLOCK - buf.len() % BLOCK;
    // n is 1..=32.
    buf.resize(buf.len() + n, n as u8);
}

/// Strips the padding [`pad`] adds, refusing anything else.
fn unpad(plain: &[u8]) -> Result<&[u8], CryptoError> {
    let n = usize::from(*plain.last().ok_or(CryptoError::Padding)?);
    if !(1..=BLOCK).contains(&n) || n > plain.len() {
        return Err(CryptoError::Padding);
    }
    let (rest, padding) = plain.split_at(plain.len() - n);
    if padding.iter().any(|&b| usize::from(b) != n) {
        return Err(CryptoError::Padding);
    }
    Ok(rest)
}

/// `random ‖ u32_be(len) ‖ msg ‖ appid`, from a message to `appid`.
fn unframe(unpadded: &[u8], appid: &str) -> Result<Opened, CryptoError> {
    let (header, rest) = unpadded
        .split_at_checked(HEADER_LEN)
        .ok_or(CryptoError::Truncated)?;
    let (random, len) = header.split_at(RANDOM_LEN);
    let random = <[u8; RANDOM_LEN]>::try_from(random).map_err(|_| CryptoError::Truncated)?;
    let len = <[u8; 4]>::try_from(len).map_err(|_| CryptoError::Truncated)?;
    let msg_len = usize::try_from(u32::from_be_bytes(len)).map_err(|_| CryptoError::Truncated)?;
    let (msg, tail) = rest
        .split_at_checked(msg_len)
        .ok_or(CryptoError::Truncated)?;
    if tail != appid.as_bytes() {
        return Err(CryptoError::OtherAppId);
    }
    Ok(Opened {
        random,
        msg: msg.to_vec(),
    })
}

/// Byte strings compared in a time that depends only on their lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The message crypto of one platform: its token, its `EncodingAESKey`
/// (and the previous one during a change), its appid. `Debug` shows only
/// the appid.
#[derive(Clone)]
pub struct MessageCrypto {
    token: String,
    key: AesKey,
    previous_key: Option<AesKey>,
    appid: String,
}

impl MessageCrypto {
    /// Checks both keys: 43 characters of `[A-Za-z0-9]` each (WeChat's
    /// alphabet), the token and appid not empty.
    pub fn new(
        token: &str,
        encoding_aes_key: &str,
        previous_encoding_aes_key: Option<&str>,
        component_appid: &str,
    ) -> Result<Self, CryptoError> {
        if token.is_empty() {
            return Err(CryptoError::EmptyToken);
        }
        if component_appid.is_empty() {
            return Err(CryptoError::EmptyAppId);
        }
        Ok(Self {
            token: token.to_owned(),
            key: AesKey::parse(encoding_aes_key, KeyRole::Current)?,
            previous_key: previous_encoding_aes_key
                .map(|key| AesKey::parse(key, KeyRole::Previous))
                .transpose()?,
            appid: component_appid.to_owned(),
        })
    }

    /// The platform's appid, which every message must carry.
    pub fn appid(&self) -> &str {
        &self.appid
    }

    /// `msg_signature` for one message: the lower-case hex SHA-1 of the
    /// token, `timestamp`, `nonce` and `encrypt`, sorted byte-wise and
    /// concatenated.
    pub fn signature(&self, timestamp: &str, nonce: &str, encrypt: &str) -> String {
        let mut parts = [self.token.as_str(), timestamp, nonce, encrypt];
        parts.sort_unstable();
        let mut sha1 = Sha1::new();
        for part in parts {
            sha1.update(part.as_bytes());
        }
        format!("{:x}", sha1.finalize())
    }

    /// Whether `msg_signature` is this message's, compared in constant time.
    pub fn signature_matches(
        &self,
        msg_signature: &str,
        timestamp: &str,
        nonce: &str,
        encrypt: &str,
    ) -> bool {
        let expected = self.signature(timestamp, nonce, encrypt);
        constant_time_eq(expected.as_bytes(), msg_signature.as_bytes())
    }

    /// The message inside `encrypt`, with the current key or else the
    /// previous one. Checks the padding, the length field and that the
    /// message is addressed to this platform's appid; the error is the
    /// current key's. Does not check the signature.
    pub fn decrypt(&self, encrypt: &str) -> Result<Vec<u8>, CryptoError> {
        self.open(encrypt).map(|opened| opened.msg)
    }

    fn open(&self, encrypt: &str) -> Result<Opened, CryptoError> {
        let current = self.key.open(encrypt, &self.appid);
        match (&current, &self.previous_key) {
            (Err(_), Some(previous)) => previous.open(encrypt, &self.appid).or(current),
            _ => current,
        }
    }

    /// `Encrypt` for `msg` with the current key and the given random
    /// prefix, as WeChat would send it: for tests and the fake WeChat (a
    /// sender draws `random` afresh for each message).
    pub fn encrypt_with(&self, random: [u8; 16], msg: &[u8]) -> Result<String, CryptoError> {
        self.key.seal(random, msg, &self.appid)
    }
}

impl fmt::Debug for MessageCrypto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MessageCrypto")
            .field("token", &"****")
            .field("key", &self.key)
            .field("previous_key", &self.previous_key.as_ref().map(|_| "****"))
            .field("appid", &self.appid)
            .finish()
    }
}

#[cfg(test)]
pub(super) mod tests {
    use proptest::prelude::*;

    use super::*;

    /// One published message and everything needed to read it.
    pub(in crate::open_platform) struct Vector {
        pub token: &'static str,
        pub encoding_aes_key: &'static str,
        pub appid: &'static str,
        pub timestamp: &'static str,
        pub nonce: &'static str,
        pub msg_signature: &'static str,
        pub encrypt: &'static str,
        pub msg: &'static str,
    }

    impl Vector {
        pub fn crypto(&self) -> MessageCrypto {
            MessageCrypto::new(self.token, self.encoding_aes_key, None, self.appid)
                .expect("valid settings")
        }
    }

    /// A: WeChat's official WXBizMsgCrypt sample (公众平台).
    pub(in crate::open_platform) const A: Vector = Vector {
        token: "spamtest",
        encoding_aes_key: "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG",
        appid: "wx2c2769f8efd9abc2",
        timestamp: "1409735669",
        nonce: "1320562132",
        msg_signature: "5d197aaffba7e9b25a30732f161a50dee96bd5fa",
        encrypt: "hyzAe4OzmOMbd6TvGdIOO6uBmdJoD0Fk53REIHvxYtJlE2B655HuD0m8KUePWB3+LrPXo87wzQ1QLvbeUgmBM4x6F8PGHQHFVAFmOD2LdJF9FrXpbUAh0B5GIItb52sn896wVsMSHGuPE328HnRGBcrS7C41IzDWyWNlZkyyXwon8T332jisa+h6tEDYsVticbSnyU8dKOIbgU6ux5VTjg3yt+WGzjlpKn6NPhRjpA912xMezR4kw6KWwMrCVKSVCZciVGCgavjIQ6X8tCOp3yZbGpy0VxpAe+77TszTfRd5RJSVO/HTnifJpXgCSUdUue1v6h0EIBYYI1BD1DlD+C0CR8e6OewpusjZ4uBl9FyJvnhvQl+q5rv1ixrcpCumEPo5MJSgM9ehVsNPfUM669WuMyVWQLCzpu9GhglF2PE=",
        msg: "<xml><ToUserName><![CDATA[gh_10f6c3c3ac5a]]></ToUserName>\n\
              <FromUserName><![CDATA[oyORnuP8q7ou2gfYjqLzSIWZf0rs]]></FromUserName>\n\
              <CreateTime>1409735668</CreateTime>\n\
              <MsgType><![CDATA[text]]></MsgType>\n\
              <Content><![CDATA[abcdteT]]></Content>\n\
              <MsgId>6054768590064713728</MsgId>\n\
              </xml>",
    };

    /// B: wechatpy `tests/test_crypto.py`, `test_decrypt_message` (the
    /// WeCom form of the same algorithm). The test checks Content and
    /// FromUserName; the whole message was read here with Python's
    /// `cryptography`.
    const B: Vector = Vector {
        token: "123456",
        encoding_aes_key: "kWxPEV2UEDyxWpmPdKC3F4dgPDmOvfKX1HGnEUDS1aR",
        appid: "wx49f0ab532d5d035a",
        timestamp: "1411525903",
        nonce: "461056294",
        msg_signature: "74d92dfeb87ba7c714f89d98870ae5eb62dff26d",
        encrypt: "RgqEoJj5A4EMYlLvWO1F86ioRjZfaex/gePD0gOXTxpsq5Yj4GNglrBb8I2BAJVODGajiFnXBu7mCPatfjsu6IHCrsTyeDXzF6Bv283dGymzxh6ydJRvZsryDyZbLTE7rhnus50qGPMfp2wASFlzEgMW9z1ef/RD8XzaFYgm7iTdaXpXaG4+BiYyolBug/gYNx410cvkKR2/nPwBiT+P4hIiOAQqGp/TywZBtDh1yCF2KOd0gpiMZ5jSw3e29mTvmUHzkVQiMS6td7vXUaWOMZnYZlF3So2SjHnwh4jYFxdgpkHHqIrH/54SNdshoQgWYEvccTKe7FS709/5t6NMxuGhcUGAPOQipvWTT4dShyqio7mlsl5noTrb++x6En749zCpQVhDpbV6GDnTbcX2e8K9QaNWHp91eBdCRxthuL0=",
        msg: "<xml><ToUserName><![CDATA[wx49f0ab532d5d035a]]></ToUserName>\n\
              <FromUserName><![CDATA[messense]]></FromUserName>\n\
              <CreateTime>1411525903</CreateTime>\n\
              <MsgType><![CDATA[text]]></MsgType>\n\
              <Content><![CDATA[test]]></Content>\n\
              <MsgId>4363689963896700987</MsgId>\n\
              <AgentID>1</AgentID>\n\
              </xml>",
    };

    /// B': wechatpy's `test_encrypt_message`: a reply encrypted with the
    /// random prefix `1234567890123456`.
    const B_REPLY: Vector = Vector {
        msg_signature: "407518b7649e86ef23978113f92d27afa9296533",
        encrypt: "9s4gMv99m88kKTh/H8IdkOiMg6bisoy3ypwy9H4hvSPe9nsGaqyw5hhSjdYbcrKk+j3nba4HMOTzHrluLBYqxgNcBqGsL8GqxlhZgURnAtObvesEl5nZ+uBE8bviY0LWke8Zy9V/QYKxNV2FqllNXcfmstttyIkMKCCmVbCFM2JTF5wY0nFhHZSjPUL2Q1qvSUCUld+/WIXrx0oyKQmpB6o8NRrrNrsDf03oxI1p9FxUgMnwKKZeOA/uu+2IEvEBtb7muXsVbwbgX05UPPJvFurDXafG0RQyPR+mf1nDnAtQmmNOuiR5MIkdQ39xn1vWwi1O5oazPoQJz0nTYjxxEE8kv3kFxtAGVRe3ypD3WeK2XeFYFMNMpatF9XiKzHo3",
        msg: "<xml>\n\
              <MsgType><![CDATA[text]]></MsgType>\n\
              <Content><![CDATA[test]]></Content>\n\
              <FromUserName><![CDATA[wx49f0ab532d5d035a]]></FromUserName>\n\
              <ToUserName><![CDATA[messense]]></ToUserName>\n\
              <AgentID>1</AgentID>\n\
              <CreateTime>1411525903</CreateTime>\n\
              </xml>",
        ..B
    };

    /// C: easywechat `tests/Kernel/EncryptorTest.php`; its padding is 21
    /// bytes, which only a 32-byte block gives. The test checks four
    /// fields; the whole message was read here with Python's `cryptography`.
    const C: Vector = Vector {
        token: "pamtest",
        encoding_aes_key: "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG",
        appid: "wxb11529c136998cb6",
        timestamp: "1458300676",
        nonce: "260774613",
        msg_signature: "4f3ad57b6989f09f4eb392acce4f9e93942ed890",
        encrypt: "rTNFcsut4LfGuAFKEUVVpwcaCOTJzOd9twZdIW910jb3k+iicx2uvhttIZ3Qg9Qgty3BEF2xbOrz6boTfb30dMomcgrkTqdFPwnhqbk+kIQ7rZiwny9D7NUrTgA5kpX3KsZvrXzUZyP2x9YOlxbgm572lmxKvM7HAQQhIQ/p6HBmoY30bGXFK0BtIu1pW9TjhOYrLQoU18nWYjWqDA1ynkmOytpv7QRI1P1+0NoxL0q2zO1DgeSvnE8CZGo/o5Ap/WHK5W2RAsinpzN4/LjPnmB6U01I5XCoJoC0GK/yMZycd2Oh8Nq6+wBkC1U85oy0ktOY4nLvsQMLrourmMGdZHuTbqpeJ8Ao/5PRYJ+WBvRUwPfGKBL2+2IKZF49vAJqkcGWSHGE76ZN2erXeuNazf/o9o3lIE3q739o4c8t9QGPe31GT2Go/rOz1BsrASwvauNulCh+++yz+CQzBIuikA==",
        msg: "<xml><URL><![CDATA[http://wechat.laravel.so/server]]></URL>\
              <ToUserName><![CDATA[asdasdasd]]></ToUserName>\
              <FromUserName><![CDATA[asdasdasdsadasd]]></FromUserName>\
              <CreateTime>1234567898</CreateTime>\
              <MsgType><![CDATA[text]]></MsgType>\
              <Content><![CDATA[hello]]></Content>\
              <MsgId>12345</MsgId></xml>",
    };

    /// D: WeChat's official C# sample (Senparc
    /// `src/Senparc.Weixin.Open/Senparc.Weixin.Open/Tencent/Sample.cs`). The
    /// whole message was read here with Python's `cryptography`.
    const D: Vector = Vector {
        token: "QDG6eK",
        encoding_aes_key: "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C",
        appid: "wx5823bf96d3bd56c7",
        timestamp: "1409659813",
        nonce: "1372623149",
        msg_signature: "477715d11cdb4164915debcba66cb864d751f3e6",
        encrypt: "RypEvHKD8QQKFhvQ6QleEB4J58tiPdvo+rtK1I9qca6aM/wvqnLSV5zEPeusUiX5L5X/0lWfrf0QADHHhGd3QczcdCUpj911L3vg3W/sYYvuJTs3TUUkSUXxaccAS0qhxchrRYt66wiSpGLYL42aM6A8dTT+6k4aSknmPj48kzJs8qLjvd4Xgpue06DOdnLxAUHzM6+kDZ+HMZfJYuR+LtwGc2hgf5gsijff0ekUNXZiqATP7PF5mZxZ3Izoun1s4zG4LUMnvw2r+KqCKIw+3IQH03v+BCA9nMELNqbSf6tiWSrXJB3LAVGUcallcrw8V2t9EL4EhzJWrQUax5wLVMNS0+rUPA3k22Ncx4XXZS9o0MBH27Bo6BpNelZpS+/uh9KsNlY6bHCmJU9p8g7m3fVKn28H3KDYA5Pl/T8Z1ptDAVe0lXdQ2YoyyH2uyPIGHBZZIs2pDBS8R07+qN+E7Q==",
        msg: "<xml><ToUserName><![CDATA[wx5823bf96d3bd56c7]]></ToUserName>\n\
              <FromUserName><![CDATA[mycreate]]></FromUserName>\n\
              <CreateTime>1409659813</CreateTime>\n\
              <MsgType><![CDATA[text]]></MsgType>\n\
              <Content><![CDATA[hello]]></Content>\n\
              <MsgId>4561255354251345929</MsgId>\n\
              <AgentID>218</AgentID>\n\
              </xml>",
    };

    /// E: a component_verify_ticket push, computed (not published) with
    /// A's key, token and appid and the random prefix `1234567890123456`.
    pub(in crate::open_platform) const E: Vector = Vector {
        timestamp: "1413192605",
        nonce: "1320562132",
        msg_signature: "84cb3ae7b212d7393425dcae41cfe63a0705d9d2",
        encrypt: "QCTqNwyPmqRu4xuyqVsja7RCJhjnc46xAC9u+RtnbhdLiffNetfF9ELKF33dfHG5im8XJUd0sNBlig5cpDTMBznAu2NY30Phuh6Oj1cyMNUFfKTJzDZF5CcqSX1zoHOxQ7j0ANz7zHMvWv3vEN8Nuqw2VFRAb5Ry6XgscNvGxgPBPY9vSo0Fglu4SEm8zs5BTaQWPKbwRdy3WJmrHRYSpnf4H5n/3EQhucYJVrboz+ZcOmDbxCFMuZZc997hMXxRs+4tYtk17d/AZzWKaVawcCCRjN/f1/TD3r6vuyORFJ2COd1SwU4Zu6EPExOwv6OBcVkGhHODXa6tBd7lHZs7CYQ/pZkYtpTYLDeER8ZVPZIReBVGd2PIAjUdnv/lIAJf",
        msg: "<xml><AppId><![CDATA[wx2c2769f8efd9abc2]]></AppId><CreateTime>1413192605</CreateTime><InfoType><![CDATA[component_verify_ticket]]></InfoType><ComponentVerifyTicket><![CDATA[ticket@@@fake-ticket-0001]]></ComponentVerifyTicket></xml>",
        ..A
    };

    /// Signature, message, and the same `Encrypt` again from the message
    /// and the random prefix it carried.
    fn check(v: &Vector) {
        let crypto = v.crypto();
        assert_eq!(
            crypto.signature(v.timestamp, v.nonce, v.encrypt),
            v.msg_signature
        );
        assert!(crypto.signature_matches(v.msg_signature, v.timestamp, v.nonce, v.encrypt));
        let opened = crypto.open(v.encrypt).expect("decrypts");
        assert_eq!(String::from_utf8(opened.msg.clone()).expect("UTF-8"), v.msg);
        assert_eq!(
            crypto.decrypt(v.encrypt).expect("decrypts"),
            v.msg.as_bytes()
        );
        assert_eq!(
            crypto
                .encrypt_with(opened.random, &opened.msg)
                .expect("encrypts"),
            v.encrypt
        );
    }

    #[test]
    fn reads_and_rewrites_the_official_sample() {
        check(&A);
        assert_eq!(
            A.crypto().key.0,
            [
                0x69, 0xb7, 0x1d, 0x79, 0xf8, 0x21, 0x8a, 0x39, 0x25, 0x9a, 0x7a, 0x29, 0xaa, 0xbb,
                0x2d, 0xba, 0xfc, 0x31, 0xcb, 0x3d, 0x35, 0xdb, 0x7e, 0x39, 0xeb, 0xbf, 0x3d, 0x00,
                0x10, 0x83, 0x10, 0x51,
            ]
        );
        assert_eq!(
            &A.crypto().open(A.encrypt).expect("decrypts").random,
            b"89465c840c5f116f"
        );
    }

    #[test]
    fn reads_and_rewrites_wechatpys_vectors() {
        check(&B);
        check(&B_REPLY);
        let crypto = B_REPLY.crypto();
        let encrypt = crypto
            .encrypt_with(*b"1234567890123456", B_REPLY.msg.as_bytes())
            .expect("encrypts");
        assert_eq!(encrypt, B_REPLY.encrypt);
    }

    #[test]
    fn reads_and_rewrites_easywechats_vector_padded_to_32_bytes() {
        check(&C);
        let ciphertext = STANDARD.decode(C.encrypt).expect("base64").len();
        let unpadded = HEADER_LEN + C.msg.len() + C.appid.len();
        assert_eq!(ciphertext - unpadded, 21);
    }

    #[test]
    fn reads_and_rewrites_the_official_csharp_sample() {
        check(&D);
    }

    #[test]
    fn reads_and_rewrites_a_verify_ticket_push() {
        check(&E);
        let crypto = E.crypto();
        let encrypt = crypto
            .encrypt_with(*b"1234567890123456", E.msg.as_bytes())
            .expect("encrypts");
        assert_eq!(encrypt, E.encrypt);
    }

    #[test]
    fn another_signature_does_not_match() {
        let crypto = A.crypto();
        let (ts, nonce, encrypt) = (A.timestamp, A.nonce, A.encrypt);
        // The last hex digit changed, upper case, the plain `signature`
        // (without Encrypt), empty.
        for wrong in [
            "5d197aaffba7e9b25a30732f161a50dee96bd5fb",
            "5D197AAFFBA7E9B25A30732F161A50DEE96BD5FA",
            "5d197aaffba7e9b25a30732f161a50dee96bd5f",
            "",
        ] {
            assert!(
                !crypto.signature_matches(wrong, ts, nonce, encrypt),
                "{wrong}"
            );
        }
        // The right signature over other inputs.
        let sig = A.msg_signature;
        assert!(!crypto.signature_matches(sig, "1409735670", nonce, encrypt));
        assert!(!crypto.signature_matches(sig, ts, "1320562133", encrypt));
        assert!(!crypto.signature_matches(sig, ts, nonce, E.encrypt));
        let other_token = MessageCrypto::new("spamtesT", A.encoding_aes_key, None, A.appid)
            .expect("valid settings");
        assert!(!other_token.signature_matches(sig, ts, nonce, encrypt));
    }

    #[test]
    fn a_message_for_another_appid_is_refused() {
        // Signed with the same token, so only the tail tells.
        let other = MessageCrypto::new(A.token, A.encoding_aes_key, None, "wx0000000000000000")
            .expect("valid settings");
        assert!(other.signature_matches(A.msg_signature, A.timestamp, A.nonce, A.encrypt));
        assert_eq!(other.decrypt(A.encrypt), Err(CryptoError::OtherAppId));
        // A prefix or an extension of the right appid is not it either.
        for appid in ["wx2c2769f8efd9abc", "wx2c2769f8efd9abc2x"] {
            let other = MessageCrypto::new(A.token, A.encoding_aes_key, None, appid)
                .expect("valid settings");
            assert_eq!(
                other.decrypt(A.encrypt),
                Err(CryptoError::OtherAppId),
                "{appid}"
            );
        }
    }

    /// `Encrypt` for any plaintext, padded or not as the test wants.
    fn seal_raw(crypto: &MessageCrypto, mut plain: Vec<u8>) -> String {
        let len = plain.len();
        let key = &crypto.key;
        let ciphertext = Encryptor::new(&key.0.into(), &key.iv().into())
            .encrypt_padded::<NoPadding>(&mut plain, len)
            .expect("whole blocks");
        STANDARD.encode(ciphertext)
    }

    /// `random ‖ u32_be(len_field) ‖ msg ‖ appid`, unpadded.
    fn layout(len_field: u32, msg: &[u8], appid: &str) -> Vec<u8> {
        let mut plain = b"0123456789abcdef".to_vec();
        plain.extend_from_slice(&len_field.to_be_bytes());
        plain.extend_from_slice(msg);
        plain.extend_from_slice(appid.as_bytes());
        plain
    }

    #[test]
    fn padding_other_than_1_to_32_equal_bytes_is_refused() {
        let crypto = A.crypto();
        // `msg` to A's appid, then `n - 1` bytes of `fill` and one of `last`.
        let decrypt = |msg: &[u8], n: usize, fill: u8, last: u8| {
            let len = u32::try_from(msg.len()).expect("short");
            let mut plain = layout(len, msg, A.appid);
            plain.resize(plain.len() + n - 1, fill);
            plain.push(last);
            crypto.decrypt(&seal_raw(&crypto, plain))
        };
        // 16 + 4 + 3 + 18 = 41 bytes, and 23 of 23 make 64.
        assert_eq!(decrypt(b"abc", 23, 23, 23), Ok(b"abc".to_vec()));
        assert_eq!(decrypt(b"abc", 23, 0, 0), Err(CryptoError::Padding));
        assert_eq!(decrypt(b"abc", 23, 255, 255), Err(CryptoError::Padding));
        // 16 + 4 + 25 + 18 = 63 bytes, and 33 of 33 make 96: aligned, equal,
        // but longer than a block.
        assert_eq!(decrypt(&[b'x'; 25], 33, 33, 33), Err(CryptoError::Padding));
        // The last byte says 23, the 22 before it say 22.
        assert_eq!(decrypt(b"abc", 23, 22, 23), Err(CryptoError::Padding));
        // A whole block of padding, and nothing before it.
        let mut all_padding = vec![32; 32];
        assert_eq!(
            crypto.decrypt(&seal_raw(&crypto, all_padding.clone())),
            Err(CryptoError::Truncated)
        );
        all_padding[0] = 0;
        assert_eq!(
            crypto.decrypt(&seal_raw(&crypto, all_padding)),
            Err(CryptoError::Padding)
        );
    }

    #[test]
    fn a_length_field_beyond_the_message_is_refused() {
        let crypto = A.crypto();
        for len_field in [4 + 18 + 1, u32::MAX] {
            let mut plain = layout(len_field, b"abcd", A.appid);
            pad(&mut plain);
            assert_eq!(
                crypto.decrypt(&seal_raw(&crypto, plain)),
                Err(CryptoError::Truncated),
                "{len_field}"
            );
        }
        // The whole rest as message: no appid left.
        let mut plain = layout(4 + 18, b"abcd", A.appid);
        pad(&mut plain);
        assert_eq!(
            crypto.decrypt(&seal_raw(&crypto, plain)),
            Err(CryptoError::OtherAppId)
        );
        // Shorter than the header.
        let mut plain = b"0123456789abcdef".to_vec();
        pad(&mut plain);
        assert_eq!(
            crypto.decrypt(&seal_raw(&crypto, plain)),
            Err(CryptoError::Truncated)
        );
    }

    #[test]
    fn ciphertexts_not_a_multiple_of_32_bytes_are_refused() {
        let crypto = A.crypto();
        for len in [0, 16, 48, 33, 31] {
            let encrypt = STANDARD.encode(vec![7u8; len]);
            assert_eq!(
                crypto.decrypt(&encrypt),
                Err(CryptoError::CiphertextLength(len)),
                "{len}"
            );
        }
    }

    #[test]
    fn encrypt_that_is_not_base64_is_refused() {
        let crypto = A.crypto();
        let unpadded = A.encrypt.trim_end_matches('=');
        let url_safe = A.encrypt.replace('+', "-");
        let with_newline = format!("{}\n", A.encrypt);
        // `…PE=` → `…PF=`: the same bytes, but with a bit set past them.
        let trailing_bits = A.encrypt.replace("PE=", "PF=");
        for bad in [
            "not base64!",
            unpadded,
            &url_safe,
            &with_newline,
            &trailing_bits,
            "ä",
        ] {
            assert_eq!(crypto.decrypt(bad), Err(CryptoError::NotBase64), "{bad}");
        }
    }

    #[test]
    fn keys_must_be_43_letters_or_digits() {
        let key = A.encoding_aes_key;
        let cases = [
            (
                &key[..42],
                CryptoError::KeyLength {
                    key: KeyRole::Current,
                    len: 42,
                },
            ),
            (
                &format!("{key}A")[..],
                CryptoError::KeyLength {
                    key: KeyRole::Current,
                    len: 44,
                },
            ),
            (
                &format!("{key}=")[..],
                CryptoError::KeyLength {
                    key: KeyRole::Current,
                    len: 44,
                },
            ),
            (
                "",
                CryptoError::KeyLength {
                    key: KeyRole::Current,
                    len: 0,
                },
            ),
            (
                &format!("+{}", &key[1..])[..],
                CryptoError::KeyAlphabet {
                    key: KeyRole::Current,
                },
            ),
            (
                &format!("{}/", &key[..42])[..],
                CryptoError::KeyAlphabet {
                    key: KeyRole::Current,
                },
            ),
            (
                &format!("{}é", &key[..42])[..],
                CryptoError::KeyAlphabet {
                    key: KeyRole::Current,
                },
            ),
            (
                &format!("{} ", &key[..42])[..],
                CryptoError::KeyAlphabet {
                    key: KeyRole::Current,
                },
            ),
        ];
        for (bad, expected) in cases {
            let current = MessageCrypto::new(A.token, bad, None, A.appid);
            assert_eq!(current.map(|_| ()), Err(expected), "{bad}");
            let previous = MessageCrypto::new(A.token, key, Some(bad), A.appid);
            let expected = match expected {
                CryptoError::KeyLength { len, .. } => CryptoError::KeyLength {
                    key: KeyRole::Previous,
                    len,
                },
                _ => CryptoError::KeyAlphabet {
                    key: KeyRole::Previous,
                },
            };
            assert_eq!(previous.map(|_| ()), Err(expected), "{bad}");
        }
        assert_eq!(
            MessageCrypto::new("", key, None, A.appid).map(|_| ()),
            Err(CryptoError::EmptyToken)
        );
        assert_eq!(
            MessageCrypto::new(A.token, key, None, "").map(|_| ()),
            Err(CryptoError::EmptyAppId)
        );
    }

    #[test]
    fn the_previous_key_reads_what_the_current_one_cannot() {
        let old = A.crypto();
        let new_key = D.encoding_aes_key;
        let during_change = MessageCrypto::new(A.token, new_key, Some(A.encoding_aes_key), A.appid)
            .expect("valid settings");
        let after_change =
            MessageCrypto::new(A.token, new_key, None, A.appid).expect("valid settings");

        assert_eq!(
            during_change.decrypt(A.encrypt).expect("decrypts"),
            A.msg.as_bytes()
        );
        assert!(after_change.decrypt(A.encrypt).is_err());
        // New messages use the new key; the old one cannot read them.
        let encrypt = during_change
            .encrypt_with([1; 16], b"<xml/>")
            .expect("encrypts");
        assert_eq!(after_change.decrypt(&encrypt).expect("decrypts"), b"<xml/>");
        assert!(old.decrypt(&encrypt).is_err());
        // When both fail, the error is the current key's.
        assert_eq!(
            during_change.decrypt("AAAA"),
            Err(CryptoError::CiphertextLength(3))
        );
    }

    #[test]
    fn secrets_stay_out_of_debug_and_errors() {
        let crypto = MessageCrypto::new(
            A.token,
            A.encoding_aes_key,
            Some(D.encoding_aes_key),
            A.appid,
        )
        .expect("valid settings");
        let debug = format!("{crypto:?}");
        assert!(debug.contains(A.appid), "{debug}");
        for secret in [
            A.token,
            A.encoding_aes_key,
            D.encoding_aes_key,
            "69b71d79",
            "105, 183",
        ] {
            assert!(!debug.contains(secret), "{debug}");
        }
        let errors = [
            MessageCrypto::new(A.token, &A.encoding_aes_key[..42], None, A.appid)
                .expect_err("refused"),
            MessageCrypto::new(
                A.token,
                &format!("{}+", &A.encoding_aes_key[..42]),
                None,
                A.appid,
            )
            .expect_err("refused"),
            MessageCrypto::new(A.token, A.encoding_aes_key, None, "wx0")
                .expect("valid settings")
                .decrypt(A.encrypt)
                .expect_err("refused"),
        ];
        for error in errors {
            let shown = format!("{error} {error:?}");
            for secret in [
                A.token,
                &A.encoding_aes_key[..42],
                "gh_10f6c3c3ac5a",
                A.appid,
            ] {
                assert!(!shown.contains(secret), "{shown}");
            }
        }
    }

    fn encoding_aes_key() -> impl Strategy<Value = String> {
        "[A-Za-z0-9]{43}"
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(crate::test_cases(256)))]

        #[test]
        fn decrypt_reads_what_encrypt_wrote(
            token in "[A-Za-z0-9]{3,32}",
            key in encoding_aes_key(),
            appid in "[a-z0-9]{1,32}",
            random in any::<[u8; 16]>(),
            msg in proptest::collection::vec(any::<u8>(), 0..=4096),
        ) {
            let crypto = MessageCrypto::new(&token, &key, None, &appid).expect("valid settings");
            let encrypt = crypto.encrypt_with(random, &msg).expect("encrypts");
            prop_assert_eq!(STANDARD.decode(&encrypt).expect("base64").len() % BLOCK, 0);
            prop_assert_eq!(crypto.decrypt(&encrypt).expect("decrypts"), msg);
        }

        #[test]
        fn a_changed_byte_of_encrypt_is_refused(
            key in encoding_aes_key(),
            random in any::<[u8; 16]>(),
            msg in proptest::collection::vec(any::<u8>(), 0..=512),
            at in any::<proptest::sample::Index>(),
            new in proptest::sample::select(
                b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=-_ !".to_vec()
            ),
        ) {
            let crypto = MessageCrypto::new(A.token, &key, None, A.appid).expect("valid settings");
            let encrypt = crypto.encrypt_with(random, &msg).expect("encrypts");
            let signature = crypto.signature(A.timestamp, A.nonce, &encrypt);
            let mut changed = encrypt.clone().into_bytes();
            let at = at.index(changed.len());
            prop_assume!(changed[at] != new);
            changed[at] = new;
            let changed = String::from_utf8(changed).expect("UTF-8");

            let accepted = crypto.signature_matches(&signature, A.timestamp, A.nonce, &changed)
                && crypto.decrypt(&changed).is_ok();
            prop_assert!(!accepted);
        }
    }
}
