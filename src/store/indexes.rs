//! The indexes wxtokend needs, compared with those in place before anything
//! is changed: a missing index is created, a TTL index of another retention
//! is changed in place (`collMod`), and an index in the way (the same name
//! with other keys or options, or the same keys under another name) is a
//! conflict only a person can resolve, said once and never retried.

use std::time::Duration;

use futures_util::TryStreamExt;
use mongodb::bson::{doc, Bson, Document};
use mongodb::options::IndexOptions;
use mongodb::IndexModel;

use super::{server_code, Store, StoreError};

/// MongoDB's `NamespaceNotFound`: listing the indexes of a collection that
/// does not exist yet.
const NAMESPACE_NOT_FOUND: i32 = 26;

/// An index wxtokend needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexSpec {
    pub collection: &'static str,
    pub name: &'static str,
    pub keys: &'static [(&'static str, i32)],
    pub unique: bool,
    /// Documents are deleted this long after the date in the (single) key.
    pub ttl: Option<Duration>,
}

impl IndexSpec {
    fn model(&self) -> IndexModel {
        let keys: Document = self
            .keys
            .iter()
            .map(|(key, order)| ((*key).to_owned(), Bson::Int32(*order)))
            .collect();
        let mut options = IndexOptions::builder().name(self.name.to_owned()).build();
        if self.unique {
            options.unique = Some(true);
        }
        options.expire_after = self.ttl;
        IndexModel::builder().keys(keys).options(options).build()
    }
}

impl std::fmt::Display for IndexSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        Existing::from(self).fmt(f)
    }
}

/// What bringing one index in line takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IndexStep {
    /// Not there: `createIndexes`.
    Create(IndexSpec),
    /// There with another retention: `collMod` changes it in place.
    ChangeTtl { spec: IndexSpec, from: Duration },
}

impl std::fmt::Display for IndexStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Create(spec) => write!(f, "create {} on {}", spec.name, spec.collection),
            Self::ChangeTtl { spec, from } => write!(
                f,
                "change the TTL of {} on {} from {} to {} (collMod)",
                spec.name,
                spec.collection,
                humantime::format_duration(*from),
                humantime::format_duration(spec.ttl.unwrap_or_default()),
            ),
        }
    }
}

/// An index in place that stands where one wxtokend needs must be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the index {existing} on {database}.{collection} is in the way of the index wxtokend needs, \
     {wanted}: drop it (in mongosh: db.getSiblingDB(\"{database}\").{collection}.dropIndex(\"{existing_name}\")) \
     and start wxtokend again, which creates its own (or use another mongodb.database)"
)]
pub struct IndexConflict {
    pub database: String,
    pub collection: &'static str,
    pub wanted: String,
    pub existing: String,
    pub existing_name: String,
}

/// An index as `listIndexes` shows it.
#[derive(Debug, Clone, PartialEq)]
struct Existing {
    name: String,
    keys: Vec<(String, f64)>,
    unique: bool,
    ttl: Option<Duration>,
}

impl From<&IndexSpec> for Existing {
    fn from(spec: &IndexSpec) -> Existing {
        Existing {
            name: spec.name.to_owned(),
            keys: spec
                .keys
                .iter()
                .map(|(key, order)| ((*key).to_owned(), f64::from(*order)))
                .collect(),
            unique: spec.unique,
            ttl: spec.ttl,
        }
    }
}

impl Existing {
    fn of(model: &IndexModel) -> Existing {
        let options = model.options.as_ref();
        Existing {
            name: options.and_then(|o| o.name.clone()).unwrap_or_default(),
            keys: model
                .keys
                .iter()
                .map(|(key, order)| (key.clone(), number(order)))
                .collect(),
            unique: options.and_then(|o| o.unique).unwrap_or(false),
            ttl: options.and_then(|o| o.expire_after),
        }
    }
}

impl std::fmt::Display for Existing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.name, keys_text(&self.keys))?;
        if self.unique {
            f.write_str(" unique")?;
        }
        if let Some(ttl) = self.ttl {
            write!(f, " expireAfterSeconds {}", ttl.as_secs())?;
        }
        Ok(())
    }
}

/// An index key's order as a number (1, -1; mongosh writes doubles, and a
/// special index a string, which matches nothing of ours).
fn number(order: &Bson) -> f64 {
    match order {
        Bson::Int32(n) => f64::from(*n),
        Bson::Int64(n) => *n as f64,
        Bson::Double(n) => *n,
        _ => f64::NAN,
    }
}

fn keys_text(keys: &[(String, f64)]) -> String {
    let keys: Vec<String> = keys
        .iter()
        .map(|(key, order)| format!("{key}: {order}"))
        .collect();
    format!("{{ {} }}", keys.join(", "))
}

/// Compares what `wanted` needs with what is in place: the steps to take,
/// or the first index in the way.
fn plan(
    database: &str,
    wanted: &IndexSpec,
    existing: &[Existing],
) -> Result<Option<IndexStep>, IndexConflict> {
    let keys = Existing::from(wanted).keys;
    let conflict = |index: &Existing| IndexConflict {
        database: database.to_owned(),
        collection: wanted.collection,
        wanted: wanted.to_string(),
        existing: index.to_string(),
        existing_name: index.name.clone(),
    };
    if let Some(index) = existing.iter().find(|index| index.name == wanted.name) {
        if index.keys != keys || index.unique != wanted.unique {
            return Err(conflict(index));
        }
        return match (wanted.ttl, index.ttl) {
            (None, None) => Ok(None),
            (Some(want), Some(have)) if want == have => Ok(None),
            (Some(_), Some(have)) => Ok(Some(IndexStep::ChangeTtl {
                spec: wanted.clone(),
                from: have,
            })),
            _ => Err(conflict(index)),
        };
    }
    // MongoDB keeps one index per key pattern: another name on the same
    // keys refuses ours.
    if let Some(index) = existing.iter().find(|index| index.keys == keys) {
        return Err(conflict(index));
    }
    Ok(Some(IndexStep::Create(wanted.clone())))
}

impl Store {
    /// What bringing the indexes in line with `wanted` takes, without
    /// changing anything (`listIndexes` on each collection).
    pub async fn plan_indexes(&self, wanted: &[IndexSpec]) -> Result<Vec<IndexStep>, StoreError> {
        let mut steps = Vec::new();
        let mut listed: Vec<(&str, Vec<Existing>)> = Vec::new();
        for spec in wanted {
            if !listed.iter().any(|(name, _)| *name == spec.collection) {
                listed.push((spec.collection, self.list_indexes(spec.collection).await?));
            }
            let existing = listed
                .iter()
                .find(|(name, _)| *name == spec.collection)
                .map(|(_, existing)| existing.as_slice())
                .unwrap_or_default();
            if let Some(step) = plan(self.database_name(), spec, existing)
                .map_err(|conflict| StoreError::IndexConflict(Box::new(conflict)))?
            {
                steps.push(step);
            }
        }
        Ok(steps)
    }

    async fn list_indexes(&self, collection: &str) -> Result<Vec<Existing>, StoreError> {
        let listed = self
            .database()
            .collection::<Document>(collection)
            .list_indexes()
            .await;
        let cursor = match listed {
            Ok(cursor) => cursor,
            Err(e) if server_code(&e) == Some(NAMESPACE_NOT_FOUND) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let models: Vec<IndexModel> = cursor.try_collect().await?;
        Ok(models.iter().map(Existing::of).collect())
    }

    /// Takes one step of a plan.
    pub async fn apply_index_step(&self, step: &IndexStep) -> Result<(), StoreError> {
        match step {
            IndexStep::Create(spec) => {
                self.database()
                    .collection::<Document>(spec.collection)
                    .create_index(spec.model())
                    .await?;
            }
            IndexStep::ChangeTtl { spec, .. } => {
                let seconds = spec.ttl.unwrap_or_default().as_secs();
                self.database()
                    .run_command(doc! {
                        "collMod": spec.collection,
                        "index": {
                            "name": spec.name,
                            "expireAfterSeconds": i64::try_from(seconds).unwrap_or(i64::MAX),
                        },
                    })
                    .await?;
            }
        }
        Ok(())
    }

    /// Brings the indexes in line with `wanted`: creates the missing ones
    /// and changes a TTL of another retention in place. An index in the way
    /// is an error ([`StoreError::IndexConflict`]).
    pub async fn ensure_indexes(&self, wanted: &[IndexSpec]) -> Result<(), StoreError> {
        for step in self.plan_indexes(wanted).await? {
            self.apply_index_step(&step).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GENERATION: IndexSpec = IndexSpec {
        collection: "access_tokens",
        name: "app_id_1_generation_-1",
        keys: &[("app_id", 1), ("generation", -1)],
        unique: true,
        ttl: None,
    };
    const TTL: IndexSpec = IndexSpec {
        collection: "access_tokens",
        name: "expires_at_ttl",
        keys: &[("expires_at", 1)],
        unique: false,
        ttl: Some(Duration::from_secs(3600)),
    };

    fn existing(name: &str, keys: &[(&str, f64)], unique: bool, ttl: Option<u64>) -> Existing {
        Existing {
            name: name.to_owned(),
            keys: keys.iter().map(|(k, o)| ((*k).to_owned(), *o)).collect(),
            unique,
            ttl: ttl.map(Duration::from_secs),
        }
    }

    #[test]
    fn what_is_in_place_is_left_alone_and_what_is_missing_is_created() {
        let same = existing(
            "app_id_1_generation_-1",
            &[("app_id", 1.0), ("generation", -1.0)],
            true,
            None,
        );
        assert_eq!(plan("wechat", &GENERATION, &[same]), Ok(None));
        assert_eq!(
            plan("wechat", &GENERATION, &[]),
            Ok(Some(IndexStep::Create(GENERATION)))
        );
        let ttl = existing("expires_at_ttl", &[("expires_at", 1.0)], false, Some(3600));
        assert_eq!(plan("wechat", &TTL, &[ttl]), Ok(None));
    }

    #[test]
    fn another_retention_is_changed_in_place() {
        let ttl = existing("expires_at_ttl", &[("expires_at", 1.0)], false, Some(60));
        assert_eq!(
            plan("wechat", &TTL, &[ttl]),
            Ok(Some(IndexStep::ChangeTtl {
                spec: TTL,
                from: Duration::from_secs(60)
            }))
        );
    }

    #[test]
    fn an_index_in_the_way_is_a_conflict_naming_how_to_drop_it() {
        let cases = [
            // Same name, not unique.
            existing(
                "app_id_1_generation_-1",
                &[("app_id", 1.0), ("generation", -1.0)],
                false,
                None,
            ),
            // Same name, other keys.
            existing("app_id_1_generation_-1", &[("app_id", 1.0)], true, None),
            // Same keys, another name.
            existing(
                "by_generation",
                &[("app_id", 1.0), ("generation", -1.0)],
                true,
                None,
            ),
        ];
        for index in cases {
            let conflict =
                plan("wechat", &GENERATION, std::slice::from_ref(&index)).expect_err("a conflict");
            let text = conflict.to_string();
            assert!(
                text.contains(&format!("dropIndex(\"{}\")", index.name))
                    && text.contains("wechat.access_tokens")
                    && text.contains("app_id_1_generation_-1 { app_id: 1, generation: -1 } unique"),
                "{text}"
            );
        }
        // A TTL index where ours has none, and none where ours has one.
        let ttl_less = existing("expires_at_ttl", &[("expires_at", 1.0)], false, None);
        assert!(plan("wechat", &TTL, &[ttl_less]).is_err());
        let with_ttl = existing(
            "app_id_1_generation_-1",
            &[("app_id", 1.0), ("generation", -1.0)],
            true,
            Some(60),
        );
        assert!(plan("wechat", &GENERATION, &[with_ttl]).is_err());
    }
}
