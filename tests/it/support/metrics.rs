//! The daemon's `/metrics` (Prometheus text), parsed for assertions. Names
//! and labels are the contract with dashboards (src/metrics.rs, README).
//! A counter that never moved has no series yet: it reads as 0 here.

/// One scrape.
pub struct Metrics {
    text: String,
    samples: Vec<Sample>,
}

struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

impl Metrics {
    pub fn parse(text: &str) -> Metrics {
        let samples = text
            .lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(parse_sample)
            .collect();
        Metrics {
            text: text.to_owned(),
            samples,
        }
    }

    /// The exposition as served.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The sample `name` whose labels are exactly `labels`, in any order.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|s| {
                s.name == name
                    && s.labels.len() == labels.len()
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.iter().any(|(sk, sv)| sk == k && sv == v))
            })
            .map(|s| s.value)
    }

    /// Calls to WeChat for access tokens that ended (answered, failed or
    /// timed out), all accounts of this replica together.
    pub fn access_token_calls_ended(&self) -> u64 {
        count(self.get(
            "wxtokend_upstream_duration_seconds_count",
            &[("kind", "access_token")],
        ))
    }

    /// Whether any series names `account`.
    pub fn names_account(&self, account: &str) -> bool {
        self.samples
            .iter()
            .any(|s| s.labels.iter().any(|(k, v)| k == "account" && v == account))
    }

    /// A per-credential series of the account's access token.
    pub fn token(&self, name: &str, account: &str) -> Option<f64> {
        self.get(name, &[("account", account), ("kind", "access_token")])
    }

    /// A per-(account, API) series (`wxtokend_quota_calls_today`,
    /// `wxtokend_quota_exhausted`).
    pub fn quota(&self, name: &str, account: &str, api: &str) -> Option<f64> {
        self.get(name, &[("account", account), ("api", api)])
    }

    /// A per-account series (`wxtokend_lease_held`).
    pub fn account(&self, name: &str, account: &str) -> Option<f64> {
        self.get(name, &[("account", account)])
    }

    /// Access-token refresh attempts of `account` with this outcome
    /// (`success`, `transient`, `permanent`, `daily_quota`).
    pub fn refreshes(&self, account: &str, outcome: &str) -> u64 {
        let labels = [
            ("account", account),
            ("kind", "access_token"),
            ("outcome", outcome),
        ];
        count(self.get("wxtokend_refresh_total", &labels))
    }

    /// Calls to WeChat's token endpoint for `account`.
    pub fn upstream_calls(&self, account: &str) -> u64 {
        count(self.token("wxtokend_upstream_calls_total", account))
    }

    /// The generation of the access token this replica relies on for `account`.
    pub fn generation(&self, account: &str) -> Option<i64> {
        self.token("wxtokend_token_generation", account)
            .map(|g| g as i64)
    }

    /// Whether this replica holds `account`'s lease.
    pub fn lease_held(&self, account: &str) -> bool {
        self.account("wxtokend_lease_held", account) == Some(1.0)
    }

    /// MongoDB operations of the refresh path (`permit`, `insert_credential`),
    /// failed ones included.
    pub fn mongodb_ops(&self, operation: &str) -> u64 {
        let labels = [("operation", operation)];
        count(self.get("wxtokend_mongodb_duration_seconds_count", &labels))
    }

    /// Failed MongoDB operations of the refresh path.
    pub fn mongodb_errors(&self, operation: &str) -> u64 {
        count(self.get("wxtokend_mongodb_errors_total", &[("operation", operation)]))
    }
}

fn count(value: Option<f64>) -> u64 {
    value.map_or(0, |v| v as u64)
}

/// `name{k="v",...} value` or `name value`.
fn parse_sample(line: &str) -> Option<Sample> {
    let (series, value) = line.rsplit_once(' ')?;
    let value = value.parse().ok()?;
    let (name, labels) = match series.split_once('{') {
        Some((name, rest)) => (name, rest.strip_suffix('}')?),
        None => (series, ""),
    };
    let labels = labels
        .split(',')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=')?;
            Some((k.to_owned(), v.trim_matches('"').to_owned()))
        })
        .collect::<Option<Vec<_>>>()?;
    Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}
