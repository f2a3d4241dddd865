//! Reads the newest valid access token the way a Rust business service would.
//!
//! ```sh
//! MONGODB_URI=mongodb://127.0.0.1:27017 cargo run --example read_token -- wx1234567890abcdef
//! ```
//! (With `scripts/sandbox.sh` running, its URI is in `.sandbox/wxtokend.toml`.)

use std::time::{Duration, SystemTime};

use wxtokend_reader::{AccountId, ReadError, Reader};

#[tokio::main]
async fn main() -> Result<(), ReadError> {
    let uri = std::env::var("MONGODB_URI").unwrap_or_else(|_| "mongodb://127.0.0.1:27017".into());
    let account = AccountId::new(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "wxsandbox00000001".into()),
    );
    // One reader per process; the cache spares MongoDB a query per request.
    let reader = Reader::connect(&uri, "wechat")
        .await?
        .with_cache(Duration::from_secs(30));
    let token = reader.latest(&account).await?;
    println!(
        "{account}: generation {}, {} s left, {} characters (use token.secret() in the request)",
        token.generation,
        token.time_left(SystemTime::now()).as_secs(),
        token.secret().len()
    );
    Ok(())
}
