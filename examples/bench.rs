//! Benchmarks for BENCHMARKS.md. Run with `scripts/bench.sh [SECTION...]`
//! (sections: reader, cached, concurrent, footprint, coldstart, scale,
//! mirror, metrics, huge; default: all but huge). Needs MONGODB_URI (bench.sh starts the
//! test server) and a release build of the daemon (bench.sh builds it).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use fake_wechat::{AppConfig, FakeWechat};
use mongodb::bson::{doc, oid::ObjectId, DateTime, Document};
use mongodb::Client;
use secrecy::SecretString;
use wxtokend::Store;
use wxtokend_reader::{AccountId, ConnectOptions, CredentialKind, Reader};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    samples[((samples.len() as f64 - 1.0) * p).round() as usize]
}

fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

async fn fresh_store(uri: &str, db: &str) -> Result<Store> {
    Client::with_uri_str(uri).await?.database(db).drop().await?;
    let store = Store::connect(
        &SecretString::from(uri.to_owned()),
        db,
        ConnectOptions::default(),
    )
    .await?;
    store
        .ensure_indexes(&wxtokend::store::credential_indexes(Duration::from_secs(
            7 * 86_400,
        )))
        .await?;
    Ok(store)
}

/// `count` documents shaped like the daemon's for `account`; the newest is
/// valid, the others expired one second apart (all within the retention).
fn history(account: &str, count: usize) -> Vec<Document> {
    let now = SystemTime::now();
    (1..=count)
        .map(|g| {
            let age = Duration::from_secs((count - g) as u64 + if g == count { 0 } else { 7200 });
            let fetched = now - age;
            doc! {
                "app_id": account,
                "access_token": format!("{account}-token-{g:08}-{}", "x".repeat(100)),
                "expires_in": 7200_i32,
                "fetched_at": DateTime::from_system_time(fetched),
                "expires_at": DateTime::from_system_time(fetched + Duration::from_secs(7200)),
                "generation": g as i64,
                "reason": "scheduled",
                "fetched_by": "bench",
            }
        })
        .collect()
}

async fn reader_latency(uri: &str) -> Result<()> {
    println!(
        "\n## Reader latency (uncached latest vs bare find_one by _id, same run, interleaved)\n"
    );
    println!("| history docs (this account) | other accounts' docs | latest p50 | latest p99 | find_one(_id) p50 | find_one(_id) p99 | p50 ratio | naive newest-by-fetched_at p50 | naive p99 |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for size in [10usize, 1_000, 100_000] {
        let db_name = format!("bench_reader_{size}");
        fresh_store(uri, &db_name).await?;
        let client = Client::with_uri_str(uri).await?;
        let collection = client
            .database(&db_name)
            .collection::<Document>("access_tokens");
        let account = "wxbench0000000001";
        let mut docs = history(account, size);
        for other in 0..9 {
            docs.extend(history(&format!("wxother{other:010}"), (size / 10).max(1)));
        }
        let total_other = docs.len() - size;
        for chunk in docs.chunks(5000) {
            collection.insert_many(chunk.to_vec()).await?;
        }
        let newest_id: ObjectId = collection
            .find_one(doc! { "app_id": account, "generation": size as i64 })
            .await?
            .and_then(|d| d.get_object_id("_id").ok())
            .ok_or("no newest")?;
        let reader = Reader::connect(uri, &db_name).await?;
        let id = AccountId::new(account);
        let (mut latest, mut bare) = (Vec::new(), Vec::new());
        for i in 0..2200 {
            let t = Instant::now();
            let token = reader.latest(&id).await?;
            let took_latest = t.elapsed();
            assert_eq!(token.generation.0, size as i64);
            let t = Instant::now();
            collection
                .find_one(doc! { "_id": newest_id })
                .await?
                .ok_or("bare")?;
            let took_bare = t.elapsed();
            if i >= 200 {
                latest.push(took_latest);
                bare.push(took_bare);
            }
        }
        let naive_runs = if size >= 100_000 { 30 } else { 300 };
        let mut naive = Vec::new();
        for _ in 0..naive_runs {
            let t = Instant::now();
            collection
                .find_one(doc! { "app_id": account })
                .sort(doc! { "fetched_at": -1 })
                .await?
                .ok_or("naive")?;
            naive.push(t.elapsed());
        }
        let (l50, l99) = (percentile(&mut latest, 0.5), percentile(&mut latest, 0.99));
        let (b50, b99) = (percentile(&mut bare, 0.5), percentile(&mut bare, 0.99));
        let (n50, n99) = (percentile(&mut naive, 0.5), percentile(&mut naive, 0.99));
        println!(
            "| {size} | {total_other} | {} | {} | {} | {} | {:.2}x | {} | {} |",
            us(l50),
            us(l99),
            us(b50),
            us(b99),
            l50.as_secs_f64() / b50.as_secs_f64(),
            us(n50),
            us(n99)
        );
    }
    Ok(())
}

fn cached_reads(uri: &str) -> Result<()> {
    println!("\n## Cached reader (one core: a current-thread runtime on one OS thread)\n");
    let uri = uri.to_owned();
    let result = std::thread::spawn(move || -> std::result::Result<(u64, Duration), String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(async {
            let store = fresh_store(&uri, "bench_cached")
                .await
                .map_err(|e| e.to_string())?;
            let client = Client::with_uri_str(&uri)
                .await
                .map_err(|e| e.to_string())?;
            client
                .database("bench_cached")
                .collection::<Document>("access_tokens")
                .insert_many(history("wxcached000000001", 3))
                .await
                .map_err(|e| e.to_string())?;
            drop(store);
            let reader = Reader::connect(&uri, "bench_cached")
                .await
                .map_err(|e| e.to_string())?
                .with_cache(Duration::from_secs(60));
            let id = AccountId::new("wxcached000000001");
            reader.latest(&id).await.map_err(|e| e.to_string())?;
            let start = Instant::now();
            let mut reads = 0u64;
            while start.elapsed() < Duration::from_secs(3) {
                for _ in 0..10_000 {
                    let token = reader.latest(&id).await.map_err(|e| e.to_string())?;
                    std::hint::black_box(&token);
                }
                reads += 10_000;
            }
            Ok((reads, start.elapsed()))
        })
    })
    .join()
    .map_err(|_| "bench thread panicked")??;
    let (reads, took) = result;
    println!(
        "{reads} cached reads in {took:.2?}: **{:.1} million reads/s** on one core",
        reads as f64 / took.as_secs_f64() / 1e6
    );
    Ok(())
}

/// Throughput and latency of `tasks` concurrent tasks, each running `op`
/// `per_task` times: (operations per second, p50, p99).
async fn concurrently<F, Fut>(
    tasks: usize,
    per_task: usize,
    op: F,
) -> Result<(f64, Duration, Duration)>
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = std::result::Result<(), String>> + Send,
{
    let start = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|_| {
            let op = op.clone();
            tokio::spawn(async move {
                let mut took = Vec::with_capacity(per_task);
                for _ in 0..per_task {
                    let t = Instant::now();
                    op().await?;
                    took.push(t.elapsed());
                }
                Ok::<_, String>(took)
            })
        })
        .collect();
    let mut all = Vec::with_capacity(tasks * per_task);
    for handle in handles {
        all.extend(handle.await??);
    }
    let elapsed = start.elapsed();
    let rate = all.len() as f64 / elapsed.as_secs_f64();
    Ok((rate, percentile(&mut all, 0.5), percentile(&mut all, 0.99)))
}

/// 64 tasks on one client each: uncached `Reader::latest` against a bare
/// `find_one({_id})` of the same document, in alternating rounds; then the
/// cached reader on a 2-thread runtime.
async fn reader_concurrency(uri: &str) -> Result<()> {
    const TASKS: usize = 64;
    const PER_TASK: usize = 200;
    const ROUNDS: usize = 3;
    println!("\n## Reader under concurrency ({TASKS} tasks on one client, 1,000 history documents, {ROUNDS} alternating rounds of {PER_TASK} reads per task)\n");
    let db_name = "bench_reader_concurrent";
    fresh_store(uri, db_name).await?;
    let client = Client::with_uri_str(uri).await?;
    let collection = client
        .database(db_name)
        .collection::<Document>("access_tokens");
    let account = "wxbench0000000001";
    collection.insert_many(history(account, 1_000)).await?;
    let newest_id: ObjectId = collection
        .find_one(doc! { "app_id": account, "generation": 1_000_i64 })
        .await?
        .and_then(|d| d.get_object_id("_id").ok())
        .ok_or("no newest")?;
    let reader = std::sync::Arc::new(Reader::connect(uri, db_name).await?);
    let id = AccountId::new(account);
    let latest = {
        let (reader, id) = (reader.clone(), id.clone());
        move || {
            let (reader, id) = (reader.clone(), id.clone());
            async move {
                let token = reader.latest(&id).await.map_err(|e| e.to_string())?;
                (token.generation.0 == 1_000)
                    .then_some(())
                    .ok_or_else(|| "not the newest".to_owned())
            }
        }
    };
    let bare = {
        let collection = collection.clone();
        move || {
            let collection = collection.clone();
            async move {
                collection
                    .find_one(doc! { "_id": newest_id })
                    .await
                    .map_err(|e| e.to_string())?
                    .map(|_| ())
                    .ok_or_else(|| "no document".to_owned())
            }
        }
    };
    // The README's query for other languages, and the Reader's fallback
    // (the generation bounded in the query, for documents written by
    // hand), by hand: what each costs the server.
    let query = |bounded: bool| {
        let collection = collection.clone();
        move || {
            let collection = collection.clone();
            async move {
                let mut filter = doc! {
                    "app_id": account,
                    "expires_at": { "$gt": DateTime::now() },
                };
                if bounded {
                    filter.insert("generation", doc! { "$type": "number", "$lt": 1_i64 << 53 });
                }
                let docs: Vec<Document> = futures_util::TryStreamExt::try_collect(
                    collection
                        .find(filter)
                        .sort(doc! { "generation": -1 })
                        .limit(if bounded { 16 } else { 1 })
                        .await
                        .map_err(|e| e.to_string())?,
                )
                .await
                .map_err(|e| e.to_string())?;
                (!docs.is_empty())
                    .then_some(())
                    .ok_or_else(|| "nothing valid".to_owned())
            }
        }
    };
    // Warm the pools up.
    concurrently(TASKS, 20, latest.clone()).await?;
    concurrently(TASKS, 20, bare.clone()).await?;
    println!("| round | what | reads/s | p50 | p99 | find_one(_id) reads/s ÷ this |");
    println!("|---:|---|---:|---:|---:|---:|");
    for round in 1..=ROUNDS {
        let (br, b50, b99) = concurrently(TASKS, PER_TASK, bare.clone()).await?;
        println!(
            "| {round} | find_one(_id) | {br:.0} | {} | {} | 1.00x |",
            us(b50),
            us(b99)
        );
        let (lr, l50, l99) = concurrently(TASKS, PER_TASK, latest.clone()).await?;
        println!(
            "| {round} | `Reader::latest` (uncached) | {lr:.0} | {} | {} | **{:.2}x** |",
            us(l50),
            us(l99),
            br / lr
        );
        for (bounded, what) in [
            (false, "the README's query (`limit 1`)"),
            (true, "the Reader's fallback query (generation bounded)"),
        ] {
            let (qr, q50, q99) = concurrently(TASKS, PER_TASK, query(bounded)).await?;
            println!(
                "| {round} | {what} | {qr:.0} | {} | {} | {:.2}x |",
                us(q50),
                us(q99),
                br / qr
            );
        }
    }

    // The cached reader, two worker threads, four tasks, 3 s.
    let cached = std::sync::Arc::new(
        Reader::connect(uri, db_name)
            .await?
            .with_cache(Duration::from_secs(60)),
    );
    cached.latest(&id).await?;
    let (reads, took) =
        std::thread::spawn(move || -> std::result::Result<(u64, Duration), String> {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(async move {
                let start = Instant::now();
                let tasks: Vec<_> = (0..4)
                    .map(|_| {
                        let (cached, id) = (cached.clone(), id.clone());
                        tokio::spawn(async move {
                            let mut reads = 0u64;
                            while start.elapsed() < Duration::from_secs(3) {
                                for _ in 0..10_000 {
                                    let token =
                                        cached.latest(&id).await.map_err(|e| e.to_string())?;
                                    std::hint::black_box(&token);
                                }
                                reads += 10_000;
                            }
                            Ok::<u64, String>(reads)
                        })
                    })
                    .collect();
                let mut reads = 0;
                for task in tasks {
                    reads += task.await.map_err(|e| e.to_string())??;
                }
                Ok((reads, start.elapsed()))
            })
        })
        .join()
        .map_err(|_| "bench thread panicked")??;
    println!(
        "\nCached reader, 2 worker threads, 4 tasks: {reads} reads in {took:.2?}: **{:.1} million reads/s**",
        reads as f64 / took.as_secs_f64() / 1e6
    );
    Ok(())
}

/// The release daemon: `$CARGO_TARGET_DIR/release/wxtokend` when that is set
/// (as bench.sh passes it on), else the crate's `target/`.
fn daemon_binary() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"))
        .join("release/wxtokend")
}

struct Daemon {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

/// Starts the release daemon for `accounts` (secret of account i: "bench-secret-i").
fn spawn_daemon(
    uri: &str,
    db: &str,
    wechat: &str,
    n: usize,
    margin: &str,
    instance: &str,
) -> Result<Daemon> {
    spawn_daemon_with(uri, db, wechat, n, margin, instance, "")
}

/// A free port on loopback (for a daemon's admin server).
fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// [`spawn_daemon`] with more TOML (before the accounts).
fn spawn_daemon_with(
    uri: &str,
    db: &str,
    wechat: &str,
    n: usize,
    margin: &str,
    instance: &str,
    extra: &str,
) -> Result<Daemon> {
    let dir = tempfile::tempdir()?;
    let mut toml = format!(
        "[daemon]\ninstance_id = \"{instance}\"\n[mongodb]\nuri = \"{uri}\"\ndatabase = \"{db}\"\n\
         [wechat]\nbase_url = \"{wechat}\"\nallow_http = true\n[refresh]\nmargin = \"{margin}\"\n\
         [log]\nlevel = \"warn\"\n{extra}"
    );
    if !extra.contains("[admin]") {
        toml.push_str("[admin]\nlisten = \"\"\n");
    }
    for i in 0..n {
        toml.push_str(&format!(
            "[[accounts]]\nid = \"{}\"\nplatform = \"official_account\"\nsecret_file = \"{}\"\n",
            account_id(i),
            dir.path().join("secret").display()
        ));
    }
    std::fs::write(dir.path().join("secret"), "bench-secret")?;
    let path = dir.path().join("wxtokend.toml");
    std::fs::write(&path, toml)?;
    let child = Command::new(daemon_binary())
        .arg("--config")
        .arg(&path)
        .arg("run")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()?;
    Ok(Daemon { child, _dir: dir })
}

fn account_id(i: usize) -> String {
    format!("wxscale{i:010}")
}

/// (RSS in KiB, CPU ticks used so far) of a process.
fn usage(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit(')').next()?.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some((rss, ticks))
}

/// A process watched for `seconds`: (its largest RSS in KiB, sampled every
/// second; its average CPU in percent of one core).
async fn watch(pid: u32, seconds: u64) -> Result<(u64, f64)> {
    let (_, ticks_start) = usage(pid).ok_or("no /proc")?;
    let mut rss_max = 0;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(seconds) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        rss_max = rss_max.max(usage(pid).ok_or("daemon died")?.0);
    }
    let (_, ticks_end) = usage(pid).ok_or("daemon died")?;
    let cpu =
        (ticks_end - ticks_start) as f64 / clock_ticks() / start.elapsed().as_secs_f64() * 100.0;
    Ok((rss_max, cpu))
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

async fn fake_with(n: usize, lifetime: Duration) -> Result<FakeWechat> {
    let fake = FakeWechat::start().await?;
    for i in 0..n {
        fake.add_app(
            AppConfig::new(&account_id(i), "bench-secret")
                .expires_in(lifetime)
                .overlap(Duration::from_secs(300)),
        );
    }
    Ok(fake)
}

async fn wait_all_valid(store: &Store, n: usize, limit: Duration) -> Result<Duration> {
    let start = Instant::now();
    loop {
        let valid = store
            .credentials()
            .accounts_with_valid(CredentialKind::AccessToken, SystemTime::now())
            .await?;
        if valid.len() >= n {
            return Ok(start.elapsed());
        }
        if start.elapsed() > limit {
            return Err(format!(
                "only {} of {n} accounts have a token after {limit:?}",
                valid.len()
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn footprint(uri: &str, n: usize, seconds: u64) -> Result<()> {
    let db = format!("bench_footprint_{n}");
    let store = fresh_store(uri, &db).await?;
    let fake = fake_with(n, Duration::from_secs(7200)).await?;
    let daemon = spawn_daemon(uri, &db, &fake.url(), n, "10m", "footprint")?;
    let pid = daemon.child.id();
    let ready = wait_all_valid(&store, n, Duration::from_secs(300)).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (rss_max, cpu) = watch(pid, seconds).await?;
    println!(
        "| {n} | {:.1} s | {:.1} MB | {cpu:.2} % | {} |",
        ready.as_secs_f64(),
        rss_max as f64 / 1024.0,
        fake.token_calls(&account_id(0))
    );
    Ok(())
}

/// A Redis server of the benchmark's own (scripts/test-redis.sh), stopped
/// on drop.
struct BenchRedis {
    url: String,
    dir: tempfile::TempDir,
}

impl BenchRedis {
    fn start() -> Result<BenchRedis> {
        let dir = tempfile::tempdir()?;
        let url = Self::serve(dir.path(), "0")?;
        Ok(BenchRedis { url, dir })
    }

    fn serve(dir: &std::path::Path, port: &str) -> Result<String> {
        let out = Command::new("scripts/test-redis.sh")
            .arg("start")
            .arg(dir)
            .arg(port)
            .stderr(Stdio::inherit())
            .output()?;
        if !out.status.success() {
            return Err("cannot start Redis (scripts/test-redis.sh)".into());
        }
        Ok(String::from_utf8(out.stdout)?.trim().to_owned())
    }

    /// Stops the server and starts an empty one on the same port (no
    /// persistence): a restart as the mirror sees it, a new `run_id`.
    fn restart(&self) -> Result<()> {
        let port = self
            .url
            .rsplit_once(':')
            .and_then(|(_, rest)| rest.split('/').next())
            .ok_or("no port in the Redis URL")?
            .to_owned();
        let stopped = Command::new("scripts/test-redis.sh")
            .arg("stop")
            .arg(self.dir.path())
            .status()?;
        if !stopped.success() {
            return Err("cannot stop Redis (scripts/test-redis.sh)".into());
        }
        Self::serve(self.dir.path(), &port).map(|_| ())
    }
}

impl Drop for BenchRedis {
    fn drop(&mut self) {
        let _ = Command::new("scripts/test-redis.sh")
            .arg("stop")
            .arg(self.dir.path())
            .status();
    }
}

/// A Redis mirror of `n` accounts (every layout: 4 SDK keys and the
/// generation key per account): how long after MongoDB every key is in
/// Redis, then `seconds` of repair passes every 5 s: Redis's time per pass
/// (its own `EVALSHA` statistics) and the daemon's CPU meanwhile; last, a
/// Redis restart (emptied): how long until every key is back.
async fn mirror(uri: &str, n: usize, seconds: u64) -> Result<()> {
    const KEYS_PER_ACCOUNT: i64 = 5;
    const REPAIR: u64 = 5;
    let db = format!("bench_mirror_{n}");
    let store = fresh_store(uri, &db).await?;
    let redis = BenchRedis::start()?;
    let mut connection = redis::Client::open(redis.url.as_str())?
        .get_multiplexed_async_connection()
        .await?;
    let fake = fake_with(n, Duration::from_secs(7200)).await?;
    let extra = format!(
        "[[mirrors]]\nurl = \"{}\"\nlayouts = [\"wxjava\", \"silenceper\", \"wechatpy\"]\n\
         repair_interval = \"{REPAIR}s\"\n",
        redis.url
    );
    let started = Instant::now();
    let daemon = spawn_daemon_with(uri, &db, &fake.url(), n, "10m", "mirror", &extra)?;
    let pid = daemon.child.id();
    let in_mongodb = wait_all_valid(&store, n, Duration::from_secs(300)).await?;
    let in_redis = all_keys(&mut connection, n as i64 * KEYS_PER_ACCOUNT, started).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut connection)
        .await?;
    let (rss_max, cpu) = watch(pid, seconds).await?;
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut connection)
        .await?;
    let evalsha = stats
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_evalsha:"))
        .unwrap_or_default();
    let stat = |name: &str| -> f64 {
        evalsha
            .split(',')
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    let passes = (seconds / REPAIR).max(1) as f64;
    println!(
        "| {n} | {:.1} s | {:.1} s | {:.0} | {:.1} ms | {:.1} µs | {cpu:.2} % | {:.1} MB |",
        in_mongodb.as_secs_f64(),
        in_redis.as_secs_f64(),
        stat("calls") / passes,
        stat("usec") / passes / 1000.0,
        stat("usec_per_call"),
        rss_max as f64 / 1024.0,
    );
    let restarted = Instant::now();
    redis.restart()?;
    let mut connection = redis::Client::open(redis.url.as_str())?
        .get_multiplexed_async_connection()
        .await?;
    let back = all_keys(&mut connection, n as i64 * KEYS_PER_ACCOUNT, restarted).await?;
    println!(
        "  - {n} accounts: every key back {:.1} s after a Redis restart began (stop, start, emptied)",
        back.as_secs_f64()
    );
    drop(daemon);
    Ok(())
}

/// Waits until Redis holds `keys` keys; the time since `since`.
async fn all_keys(
    connection: &mut redis::aio::MultiplexedConnection,
    keys: i64,
    since: Instant,
) -> Result<Duration> {
    loop {
        let held: i64 = redis::cmd("DBSIZE").query_async(connection).await?;
        if held >= keys {
            return Ok(since.elapsed());
        }
        if since.elapsed() > Duration::from_secs(300) {
            return Err(format!("{held} keys in Redis after 300 s").into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `/metrics` of a daemon holding `n` accounts: size, lines naming an
/// account, scrape time (20 scrapes, after all tokens are stored), with
/// `admin.account_series` = `series`.
async fn metrics_scrape(uri: &str, n: usize, series: &str) -> Result<()> {
    let db = format!("bench_metrics_{n}");
    let store = fresh_store(uri, &db).await?;
    let fake = fake_with(n, Duration::from_secs(7200)).await?;
    let port = free_port()?;
    let extra = format!("[admin]\nlisten = \"127.0.0.1:{port}\"\naccount_series = \"{series}\"\n");
    let daemon = spawn_daemon_with(uri, &db, &fake.url(), n, "10m", "metrics", &extra)?;
    wait_all_valid(&store, n, Duration::from_secs(300)).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let http = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/metrics");
    let (mut times, mut size, mut lines, mut naming) = (Vec::new(), 0, 0, 0);
    for _ in 0..20 {
        let t = Instant::now();
        let text = http
            .get(&url)
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        times.push(t.elapsed());
        size = text.len();
        lines = text.lines().filter(|l| !l.starts_with('#')).count();
        naming = text
            .lines()
            .filter(|l| !l.starts_with('#') && l.contains("account=\""))
            .count();
    }
    println!(
        "| {n} | `{series}` | {:.1} KB | {lines} | {naming} | {} | {} |",
        size as f64 / 1024.0,
        us(percentile(&mut times, 0.5)),
        us(percentile(&mut times, 0.99)),
    );
    drop(daemon);
    Ok(())
}

/// Each replica's MongoDB commands so far (`wxtokend_mongodb_commands_total`,
/// every command name added up), read from its `/metrics`.
async fn mongodb_commands(ports: &[u16]) -> Result<Vec<f64>> {
    let http = reqwest::Client::new();
    let mut all = Vec::new();
    for port in ports {
        let text = http
            .get(format!("http://127.0.0.1:{port}/metrics"))
            .send()
            .await?
            .text()
            .await?;
        all.push(
            text.lines()
                .filter(|l| l.starts_with("wxtokend_mongodb_commands_total{"))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum(),
        );
    }
    Ok(all)
}

/// MongoDB's operation counters (all kinds added up): a benchmark's
/// round trips, give or take the few of its own polling.
async fn server_operations(client: &Client) -> Result<i64> {
    let status = client
        .database("admin")
        .run_command(doc! { "serverStatus": 1 })
        .await?;
    let counters = status.get_document("opcounters")?;
    Ok(counters
        .values()
        .filter_map(|v| match v {
            mongodb::bson::Bson::Int32(n) => Some(i64::from(*n)),
            mongodb::bson::Bson::Int64(n) => Some(*n),
            mongodb::bson::Bson::Double(n) => Some(*n as i64),
            _ => None,
        })
        .sum())
}

/// The naive refresher the issue compares with: `concurrency` tasks, each
/// taking the next account, calling WeChat's token endpoint and inserting
/// one document. No leases, no permits, no fencing.
async fn naive_loop(uri: &str, wechat: &str, n: usize, concurrency: usize) -> Result<Duration> {
    let db = "bench_coldstart_naive";
    fresh_store(uri, db).await?;
    let collection = Client::with_uri_str(uri)
        .await?
        .database(db)
        .collection::<Document>("access_tokens");
    let http = reqwest::Client::new();
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (next, http, collection) = (next.clone(), http.clone(), collection.clone());
            let url = format!("{wechat}/cgi-bin/token");
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= n {
                        return Ok::<(), String>(());
                    }
                    let id = account_id(i);
                    let answer: serde_json::Value = http
                        .get(&url)
                        .query(&[
                            ("grant_type", "client_credential"),
                            ("appid", id.as_str()),
                            ("secret", "bench-secret"),
                        ])
                        .send()
                        .await
                        .map_err(|e| e.to_string())?
                        .json()
                        .await
                        .map_err(|e| e.to_string())?;
                    let token = answer["access_token"].as_str().ok_or("no token")?;
                    let now = SystemTime::now();
                    collection
                        .insert_one(doc! {
                            "app_id": &id,
                            "access_token": token,
                            "expires_in": 7200,
                            "fetched_at": DateTime::from_system_time(now),
                            "expires_at": DateTime::from_system_time(now + Duration::from_secs(7200)),
                            "generation": 1_i64,
                        })
                        .await
                        .map_err(|e| e.to_string())?;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await?.map_err(|e| format!("naive loop: {e}"))?;
    }
    Ok(started.elapsed())
}

/// Cold start: `n` accounts, an empty database, `replicas` daemons started
/// at once; the time to the last first token, and MongoDB operations per
/// account meanwhile.
struct ColdStart {
    all: Duration,
    operations_per_account: f64,
    /// WeChat token calls beyond one per account.
    extra_calls: i64,
    /// Leases per replica once every account has its token, and 20 s later.
    spread: String,
    settled: String,
}

async fn cold_start(uri: &str, n: usize, replicas: usize) -> Result<ColdStart> {
    let db = format!("bench_coldstart_{n}_{replicas}");
    let store = fresh_store(uri, &db).await?;
    let fake = fake_with(n, Duration::from_secs(7200)).await?;
    let client = Client::with_uri_str(uri).await?;
    let before = server_operations(&client).await?;
    let daemons: Vec<Daemon> = (0..replicas)
        .map(|r| spawn_daemon(uri, &db, &fake.url(), n, "10m", &format!("replica-{r}")))
        .collect::<Result<_>>()?;
    let all = wait_all_valid(&store, n, Duration::from_secs(600)).await?;
    let operations = server_operations(&client).await? - before;
    let spread = lease_spread(&store).await?;
    tokio::time::sleep(Duration::from_secs(20)).await;
    let settled = lease_spread(&store).await?;
    let calls: i64 = (0..n)
        .map(|i| i64::from(fake.token_calls(&account_id(i))))
        .sum();
    drop(daemons);
    Ok(ColdStart {
        all,
        operations_per_account: operations as f64 / n as f64,
        extra_calls: calls - n as i64,
        spread,
        settled,
    })
}

/// Valid leases per holder, as "a / b / c".
async fn lease_spread(store: &Store) -> Result<String> {
    let infos = wxtokend::Leases::new(store.clone()).infos(&[]).await?;
    let now = SystemTime::now();
    let mut counts: std::collections::BTreeMap<String, usize> = Default::default();
    for info in infos.into_iter().filter(|i| i.expires_at > now) {
        *counts.entry(info.holder).or_default() += 1;
    }
    Ok(counts
        .values()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(" / "))
}

async fn scale(uri: &str, n: usize, replicas: usize) -> Result<()> {
    scale_with(
        uri,
        n,
        replicas,
        Duration::from_secs(120),
        Duration::from_secs(30),
        "",
    )
    .await
}

/// `n` accounts over `replicas` daemons, tokens living `lifetime`,
/// refreshed `margin` before expiry: one full cycle, then what each
/// account's history and each replica's `/metrics` say.
async fn scale_with(
    uri: &str,
    n: usize,
    replicas: usize,
    lifetime: Duration,
    margin: Duration,
    settings: &str,
) -> Result<()> {
    let db = format!("bench_scale_{n}_{replicas}");
    let store = fresh_store(uri, &db).await?;
    let fake = fake_with(n, lifetime).await?;
    let started = Instant::now();
    let ports: Vec<u16> = (0..replicas).map(|_| free_port()).collect::<Result<_>>()?;
    let daemons: Vec<Daemon> = ports
        .iter()
        .enumerate()
        .map(|(r, port)| {
            spawn_daemon_with(
                uri,
                &db,
                &fake.url(),
                n,
                &format!("{}s", margin.as_secs()),
                &format!("replica-{r}"),
                &format!("[admin]\nlisten = \"127.0.0.1:{port}\"\n{settings}"),
            )
        })
        .collect::<Result<_>>()?;
    let first = wait_all_valid(&store, n, Duration::from_secs(900)).await?;
    let commands_at_first = mongodb_commands(&ports).await?;
    // One full cycle for every account, plus slack.
    tokio::time::sleep(lifetime - margin + Duration::from_secs(25)).await;
    let cycle = started.elapsed() - first;
    let commands: Vec<String> = mongodb_commands(&ports)
        .await?
        .iter()
        .zip(&commands_at_first)
        .map(|(end, start)| format!("{:.0}", (end - start) / cycle.as_secs_f64()))
        .collect();
    let rss: Vec<String> = daemons
        .iter()
        .filter_map(|d| usage(d.child.id()))
        .map(|(kib, _)| format!("{:.0}", kib as f64 / 1024.0))
        .collect();
    let client = Client::with_uri_str(uri).await?;
    let docs: Vec<Document> = {
        use futures_util::TryStreamExt;
        client
            .database(&db)
            .collection::<Document>("access_tokens")
            .find(doc! {})
            .sort(doc! { "app_id": 1, "generation": 1 })
            .await?
            .try_collect()
            .await?
    };
    let mut by_account: std::collections::HashMap<String, Vec<&Document>> = Default::default();
    for d in &docs {
        by_account
            .entry(d.get_str("app_id")?.to_string())
            .or_default()
            .push(d);
    }
    let (mut refreshed, mut late, mut min_left) = (0, 0, Duration::MAX);
    let (mut in_flight, mut duplicate_calls) = (0, 0i64);
    for i in 0..n {
        let id = account_id(i);
        let history = by_account.get(&id).cloned().unwrap_or_default();
        let calls = fake.token_calls(&id) as i64;
        let stored = history.len() as i64;
        // One call may be in flight (its token not stored yet); more would be duplicates.
        in_flight += usize::from(calls == stored + 1);
        duplicate_calls += (calls - stored - 1).max(0);
        refreshed += usize::from(history.len() >= 2);
        for pair in history.windows(2) {
            let expires = pair[0].get_datetime("expires_at")?.to_system_time();
            let next = pair[1].get_datetime("fetched_at")?.to_system_time();
            let left = expires.duration_since(next).unwrap_or_default();
            min_left = min_left.min(left);
            if left + Duration::from_secs(5) < margin {
                late += 1;
            }
        }
    }
    let holders: Vec<String> = {
        let infos = wxtokend::Leases::new(store.clone()).infos(&[]).await?;
        let mut counts: std::collections::BTreeMap<String, usize> = Default::default();
        for info in infos {
            *counts.entry(info.holder).or_default() += 1;
        }
        counts.values().map(|c| c.to_string()).collect()
    };
    println!(
        "| {n} | {replicas} | {:.1} s | {refreshed} of {n} | {late} | {:.1} s | {duplicate_calls} | {in_flight} | {} | {} MB | {} |",
        first.as_secs_f64(),
        min_left.as_secs_f64(),
        holders.join(" / "),
        rss.join(" / "),
        commands.join(" / "),
    );
    let _ = started;
    drop(daemons);
    Ok(())
}

/// The header of the table [`scale_with`] prints a row of.
const SCALE_TABLE: &str = "| accounts | replicas | all first tokens after | accounts refreshed | refreshes late (>5 s into the margin) | least time left at refresh | duplicate calls | calls in flight at the end | leases per replica | RSS per replica | MongoDB commands/s per replica over the cycle |\n|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---|";

/// The number in environment variable `name`, or `default` when it is
/// unset or not a number.
fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() -> Result<()> {
    let uri =
        std::env::var("MONGODB_URI").map_err(|_| "set MONGODB_URI (scripts/bench.sh does)")?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let wants = |s: &str| (args.is_empty() && s != "huge") || args.iter().any(|a| a == s);
    println!(
        "# wxtokend benchmarks ({} cores)",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    if wants("reader") {
        reader_latency(&uri).await?;
    }
    if wants("cached") {
        cached_reads(&uri)?;
    }
    if wants("concurrent") {
        reader_concurrency(&uri).await?;
    }
    if wants("footprint") {
        println!("\n## Daemon footprint (release build, tokens valid 2 h, so idle after start)\n");
        println!("| accounts | all tokens stored after | max RSS | CPU (avg over 30 s idle) | calls for account 0 |");
        println!("|---:|---:|---:|---:|---:|");
        footprint(&uri, 1, 30).await?;
        footprint(&uri, 10_000, 30).await?;
    }
    if wants("coldstart") {
        let n = env_or("BENCH_ACCOUNTS", 10_000);
        println!("\n## Cold start: {n} accounts, empty database, to the last first token\n");
        let fake = fake_with(n, Duration::from_secs(7200)).await?;
        let naive = naive_loop(&uri, &fake.url(), n, 16).await?;
        println!("| what | time to the last first token | vs the naive loop | MongoDB operations per account | WeChat calls beyond one per account | leases per replica then | 20 s later |");
        println!("|---|---:|---:|---:|---:|---|---|");
        println!(
            "| naive loop (16 tasks: GET /cgi-bin/token + insert_one) | {:.1} s | 1.00x | 1 | 0 | | |",
            naive.as_secs_f64()
        );
        drop(fake);
        for replicas in [1, 3] {
            let c = cold_start(&uri, n, replicas).await?;
            println!(
                "| wxtokend, {replicas} replica(s) | {:.1} s | **{:.2}x** | {:.1} | {} | {} | {} |",
                c.all.as_secs_f64(),
                c.all.as_secs_f64() / naive.as_secs_f64(),
                c.operations_per_account,
                c.extra_calls,
                c.spread,
                c.settled,
            );
        }
    }
    if wants("metrics") {
        println!("\n## /metrics at scale (tokens valid 2 h, 20 scrapes once all are stored)\n");
        println!("| accounts | account_series | size | series | naming an account | scrape p50 | scrape p99 |");
        println!("|---:|---|---:|---:|---:|---:|---:|");
        for series in ["alerting", "all"] {
            metrics_scrape(&uri, 1, series).await?;
            metrics_scrape(&uri, 10_000, series).await?;
        }
    }
    if wants("mirror") {
        println!("\n## Redis mirror: every layout, repair every 5 s, 30 s idle\n");
        println!("| accounts | all tokens in MongoDB after | all keys in Redis after | EVALSHA per repair pass | Redis time per pass | per call | daemon CPU (avg) | max RSS |");
        println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
        mirror(&uri, 1, 30).await?;
        mirror(&uri, 10_000, 30).await?;
    }
    if wants("huge") {
        let n = env_or("BENCH_HUGE_ACCOUNTS", 100_000);
        let life = env_or("BENCH_HUGE_LIFETIME_S", 600);
        // Renewals are one statement per lease each renew interval: at
        // 100,000 leases the default 10 s is 10,000 statements a second.
        let lease = env_or("BENCH_HUGE_LEASE_S", 300u64);
        println!("\n## Scale: {n} accounts over 5 replicas, tokens live {life} s, margin {} s, lease {lease} s renewed every {} s, one full cycle\n", life / 2, lease / 3);
        println!("{SCALE_TABLE}");
        scale_with(
            &uri,
            n,
            5,
            Duration::from_secs(life),
            Duration::from_secs(life / 2),
            &format!(
                "[lease]\nduration = \"{lease}s\"\nrenew_interval = \"{}s\"\n",
                lease / 3
            ),
        )
        .await?;
    }
    if wants("scale") {
        println!("\n## Scale: 10,000 accounts, tokens live 120 s, margin 30 s, one full cycle\n");
        println!("{SCALE_TABLE}");
        scale(&uri, 10_000, 1).await?;
        scale(&uri, 10_000, 3).await?;
    }
    Ok(())
}
