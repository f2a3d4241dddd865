//! JS-SDK permission signatures (`wx.config` / WeCom `wx.agentConfig`), as
//! WeChat documents them: sha1 over
//! `jsapi_ticket=…&noncestr=…&timestamp=…&url=…` (keys in ASCII order, raw
//! values, the URL without its `#fragment`).

use rand::distr::{Alphanumeric, SampleString};
use serde::Serialize;
use sha1::{Digest, Sha1};

/// What a page passes to `wx.config`, with WeChat's own field names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JsSdkConfig {
    /// The appid (WeCom: the corpid).
    pub app_id: String,
    pub timestamp: u64,
    pub nonce_str: String,
    pub signature: String,
}

/// The page URL as signed: everything before `#`.
pub fn signed_url(url: &str) -> &str {
    url.split('#').next().unwrap_or(url)
}

/// The signature of one page load.
pub fn sign(ticket: &str, nonce_str: &str, timestamp: u64, url: &str) -> String {
    let url = signed_url(url);
    let string1 =
        format!("jsapi_ticket={ticket}&noncestr={nonce_str}&timestamp={timestamp}&url={url}");
    format!("{:x}", Sha1::digest(string1.as_bytes()))
}

/// A fresh random `nonceStr` (16 letters and digits).
pub fn nonce() -> String {
    Alphanumeric.sample_string(&mut rand::rng(), 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// WeChat's published example (JS-SDK documentation, appendix 1).
    #[test]
    fn matches_wechats_published_example() {
        let signature = sign(
            "sM4AOVdWfPE4DxkXGEs8VMCPGGVi4C3VM0P37wVUCFvkVAy_90u5h9nbSlYy3-Sl-HhTdfl2fzFy1AOcHKP7qg",
            "Wm3WZYTPz0wzccnW",
            1414587457,
            "http://mp.weixin.qq.com?params=value",
        );
        assert_eq!(signature, "0f9de62fce790f9a083d5c99e95740ceb90c27ed");
    }

    #[test]
    fn the_fragment_is_not_signed() {
        let ticket = "T";
        assert_eq!(
            sign(ticket, "n", 1, "https://example.com/page?a=1#section"),
            sign(ticket, "n", 1, "https://example.com/page?a=1")
        );
        assert_eq!(signed_url("https://e.com/#/route"), "https://e.com/");
    }

    #[test]
    fn nonces_differ() {
        assert_ne!(nonce(), nonce());
        assert_eq!(nonce().len(), 16);
    }
}
