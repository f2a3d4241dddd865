//! The indexes wxtokend needs, compared with those in place before anything
//! is changed: a missing index is created, a TTL index of another retention
//! is changed in place (`collMod`), and an index in the way (the same name
//! with other keys or options, or the same keys under another name) is a
//! conflict only a person can resolve, said once and never retried.

use std::time::Duration;

use mongodb::bson::{doc, Bson, Document};
use mongodb::options::IndexOptions;
use mongodb::IndexModel;

use super::{server_code, Store, StoreError};

/// MongoDB's `NamespaceNotFound`: listing the indexes of a collection that
/// does not exist yet.
const NAMESPACE_NOT_FOUND: i32 = 26;
/// MongoDB's `IndexOptionsConflict` and `IndexKeySpecsConflict`.
const INDEX_CONFLICTS: [i32; 2] = [85, 86];
/// How many times indexes are planned when the server keeps finding one in
/// the way that the plan did not see.
const PLANS: usize = 3;

fn is_index_conflict(error: &mongodb::error::Error) -> bool {
    server_code(error).is_some_and(|code| INDEX_CONFLICTS.contains(&code))
}

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
pub enum IndexConflict {
    #[error(
        "the index {existing} on {database}.{collection} is in the way of the index wxtokend \
         needs, {wanted}: drop it (in mongosh: \
         db.getSiblingDB({}).getCollection({}).dropIndex({})) and start wxtokend again, \
         which creates its own (or use another mongodb.database)",
        json(database),
        json(collection),
        json(existing_name)
    )]
    InTheWay {
        database: String,
        collection: &'static str,
        wanted: String,
        existing: String,
        existing_name: String,
    },
    /// The server kept refusing an index the plan found no obstacle to.
    #[error(
        "MongoDB keeps refusing the indexes of {database} as in the way of others, although \
         listIndexes shows none: compare db.<collection>.getIndexes() with the README's list"
    )]
    Unresolved { database: String },
}

/// `text` as a JavaScript (JSON) string, for a mongosh line to paste.
fn json(text: &str) -> serde_json::Value {
    serde_json::Value::from(text)
}

/// An index as `listIndexes` shows it (read field by field: other tools
/// write numbers where the driver's types expect booleans or integers).
#[derive(Debug, Clone, PartialEq)]
struct Existing {
    name: String,
    keys: Vec<(String, f64)>,
    unique: bool,
    /// `expireAfterSeconds`, as stored (a double, say, from the old shell).
    ttl: Option<f64>,
    /// Options that change what the index holds or how it compares:
    /// `sparse`, `partialFilterExpression`, `collation`.
    narrowed: Vec<&'static str>,
}

/// The options of an index that change which documents it holds or how it
/// compares keys: one of ours must have none.
const NARROWING: [&str; 3] = ["sparse", "partialFilterExpression", "collation"];

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
            ttl: spec.ttl.map(|ttl| ttl.as_secs_f64().floor()),
            narrowed: Vec::new(),
        }
    }
}

impl Existing {
    fn of(index: &Document) -> Existing {
        Existing {
            name: index.get_str("name").unwrap_or_default().to_owned(),
            keys: index
                .get_document("key")
                .map(|keys| {
                    keys.iter()
                        .map(|(key, order)| (key.clone(), number(order)))
                        .collect()
                })
                .unwrap_or_default(),
            unique: index.get("unique").is_some_and(truthy),
            ttl: index.get("expireAfterSeconds").map(number),
            narrowed: NARROWING
                .into_iter()
                .filter(|option| match index.get(*option) {
                    Some(
                        value @ (Bson::Boolean(_)
                        | Bson::Int32(_)
                        | Bson::Int64(_)
                        | Bson::Double(_)),
                    ) => truthy(value),
                    Some(Bson::Null) | None => false,
                    Some(_) => true,
                })
                .collect(),
        }
    }

    /// Its `expireAfterSeconds` as a whole number of seconds, if it is one
    /// MongoDB acts on.
    fn ttl_seconds(&self) -> Option<u64> {
        self.ttl
            .filter(|ttl| ttl.is_finite() && *ttl >= 0.0)
            .map(|ttl| ttl as u64)
    }
}

impl std::fmt::Display for Existing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.name, keys_text(&self.keys))?;
        if self.unique {
            f.write_str(" unique")?;
        }
        if let Some(ttl) = self.ttl {
            write!(f, " expireAfterSeconds {ttl}")?;
        }
        for option in &self.narrowed {
            write!(f, " {option}")?;
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

/// A boolean option as MongoDB reads it (`true`, or a non-zero number).
fn truthy(value: &Bson) -> bool {
    match value {
        Bson::Boolean(b) => *b,
        Bson::Int32(n) => *n != 0,
        Bson::Int64(n) => *n != 0,
        Bson::Double(n) => *n != 0.0,
        _ => false,
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
    let conflict = |index: &Existing| IndexConflict::InTheWay {
        database: database.to_owned(),
        collection: wanted.collection,
        wanted: wanted.to_string(),
        existing: index.to_string(),
        existing_name: index.name.clone(),
    };
    if let Some(index) = existing.iter().find(|index| index.name == wanted.name) {
        if index.keys != keys || index.unique != wanted.unique || !index.narrowed.is_empty() {
            return Err(conflict(index));
        }
        return match (wanted.ttl, index.ttl) {
            (None, None) => Ok(None),
            (Some(want), Some(_)) if index.ttl_seconds() == Some(want.as_secs()) => Ok(None),
            (Some(_), Some(_)) => Ok(Some(IndexStep::ChangeTtl {
                spec: wanted.clone(),
                from: Duration::from_secs(index.ttl_seconds().unwrap_or_default()),
            })),
            _ => Err(conflict(index)),
        };
    }
    // The same keys under another name: MongoDB refuses ours if that index
    // is the same kind of index (and creates ours beside it otherwise).
    let same = |index: &&Existing| {
        index.keys == keys && index.unique == wanted.unique && index.narrowed.is_empty()
    };
    if let Some(index) = existing.iter().find(same) {
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
        // One batch holds them all: a collection has at most 64 indexes.
        let listed = self
            .database()
            .run_command(doc! { "listIndexes": collection, "cursor": { "batchSize": 1000 } })
            .await;
        let answer = match listed {
            Ok(answer) => answer,
            Err(e) if server_code(&e) == Some(NAMESPACE_NOT_FOUND) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let batch = answer
            .get_document("cursor")
            .and_then(|cursor| cursor.get_array("firstBatch"))
            .map_err(|_| {
                StoreError::Unsupported("listIndexes answered without cursor.firstBatch")
            })?;
        Ok(batch
            .iter()
            .filter_map(Bson::as_document)
            .map(Existing::of)
            .collect())
    }

    /// Takes one step of a plan. `false`: the server found an index in the
    /// way that the plan did not see (another replica, or a person, changed
    /// the indexes meanwhile): plan again.
    pub async fn apply_index_step(&self, step: &IndexStep) -> Result<bool, StoreError> {
        match step {
            IndexStep::Create(spec) => {
                let created = self
                    .database()
                    .collection::<Document>(spec.collection)
                    .create_index(spec.model())
                    .await;
                match created {
                    Ok(_) => {}
                    Err(e) if is_index_conflict(&e) => return Ok(false),
                    Err(e) => return Err(e.into()),
                }
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
        Ok(true)
    }

    /// Brings the indexes in line with `wanted`: creates the missing ones
    /// and changes a TTL of another retention in place. An index in the way
    /// is an error ([`StoreError::IndexConflict`]).
    pub async fn ensure_indexes(&self, wanted: &[IndexSpec]) -> Result<(), StoreError> {
        self.ensure_indexes_with(wanted, |_| Ok(()))
            .await
            .map(|_| ())
    }

    /// [`Store::ensure_indexes`], with `approve` seeing each plan before it
    /// is carried out (to check the privileges it needs). Plans again when
    /// the server finds an index in the way the plan did not see, up to
    /// three times. Returns the steps taken.
    pub async fn ensure_indexes_with(
        &self,
        wanted: &[IndexSpec],
        approve: impl Fn(&[IndexStep]) -> Result<(), StoreError>,
    ) -> Result<Vec<IndexStep>, StoreError> {
        for _ in 0..PLANS {
            let steps = self.plan_indexes(wanted).await?;
            approve(&steps)?;
            let mut in_line = true;
            for step in &steps {
                if !self.apply_index_step(step).await? {
                    in_line = false;
                    break;
                }
            }
            if in_line {
                return Ok(steps);
            }
        }
        Err(StoreError::IndexConflict(Box::new(
            IndexConflict::Unresolved {
                database: self.database_name().to_owned(),
            },
        )))
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

    /// `plan` against indexes as `listIndexes` lists them.
    fn plan_on(
        wanted: &IndexSpec,
        listed: &[Document],
    ) -> Result<Option<IndexStep>, IndexConflict> {
        let existing: Vec<Existing> = listed.iter().map(Existing::of).collect();
        plan("wechat", wanted, &existing)
    }

    fn ours() -> Document {
        doc! { "v": 2, "key": { "app_id": 1, "generation": -1 }, "name": "app_id_1_generation_-1", "unique": true }
    }

    #[test]
    fn what_is_in_place_is_left_alone_whoever_wrote_it() {
        assert_eq!(plan_on(&GENERATION, &[ours()]), Ok(None));
        // mongosh writes doubles; an old server, a numeric `unique`.
        let shell = doc! { "v": 2, "key": { "app_id": 1.0, "generation": -1.0 }, "name": "app_id_1_generation_-1", "unique": 1.0 };
        assert_eq!(plan_on(&GENERATION, &[shell]), Ok(None));
        for ttl in [Bson::Int32(3600), Bson::Int64(3600), Bson::Double(3600.0)] {
            let index = doc! { "v": 2, "key": { "expires_at": 1 }, "name": "expires_at_ttl", "expireAfterSeconds": ttl };
            assert_eq!(plan_on(&TTL, &[index]), Ok(None));
        }
        // A sub-second retention is compared in whole seconds, as stored.
        let fine = IndexSpec {
            ttl: Some(Duration::from_millis(3_600_500)),
            ..TTL
        };
        let index = doc! { "key": { "expires_at": 1 }, "name": "expires_at_ttl", "expireAfterSeconds": 3600 };
        assert_eq!(plan_on(&fine, &[index]), Ok(None));
    }

    #[test]
    fn what_is_missing_is_created_and_another_retention_changed_in_place() {
        assert_eq!(
            plan_on(&GENERATION, &[]),
            Ok(Some(IndexStep::Create(GENERATION)))
        );
        for (stored, from) in [
            (Bson::Int32(60), 60),
            (Bson::Double(f64::NAN), 0),
            (Bson::Int64(-1), 0),
        ] {
            let index = doc! { "key": { "expires_at": 1 }, "name": "expires_at_ttl", "expireAfterSeconds": stored };
            assert_eq!(
                plan_on(&TTL, &[index]),
                Ok(Some(IndexStep::ChangeTtl {
                    spec: TTL,
                    from: Duration::from_secs(from)
                }))
            );
        }
        // Another kind of index on the same keys does not stand in the way.
        let narrower = doc! { "key": { "app_id": 1, "generation": -1 }, "name": "by_generation" };
        assert_eq!(
            plan_on(&GENERATION, &[narrower]),
            Ok(Some(IndexStep::Create(GENERATION)))
        );
    }

    #[test]
    fn an_index_in_the_way_is_a_conflict_naming_how_to_drop_it() {
        let cases = [
            // Same name, not unique.
            doc! { "key": { "app_id": 1, "generation": -1 }, "name": "app_id_1_generation_-1" },
            // Same name, other keys.
            doc! { "key": { "app_id": 1 }, "name": "app_id_1_generation_-1", "unique": true },
            // Same name, holding only some documents, or comparing otherwise.
            doc! { "key": { "app_id": 1, "generation": -1 }, "name": "app_id_1_generation_-1", "unique": true, "partialFilterExpression": { "app_id": { "$exists": true } } },
            doc! { "key": { "app_id": 1, "generation": -1 }, "name": "app_id_1_generation_-1", "unique": true, "collation": { "locale": "en" } },
            doc! { "key": { "app_id": 1, "generation": -1 }, "name": "app_id_1_generation_-1", "unique": true, "sparse": true },
            // The same index under another name.
            doc! { "key": { "app_id": 1, "generation": -1 }, "name": "by \"generation\"", "unique": true },
        ];
        for index in cases {
            let name = index.get_str("name").expect("name").to_owned();
            let conflict = plan_on(&GENERATION, &[index]).expect_err("a conflict");
            let text = conflict.to_string();
            let drop = format!("dropIndex({})", serde_json::Value::from(name.as_str()));
            assert!(
                text.contains(&drop)
                    && text
                        .contains("db.getSiblingDB(\"wechat\").getCollection(\"access_tokens\")")
                    && text.contains("app_id_1_generation_-1 { app_id: 1, generation: -1 } unique"),
                "{text}"
            );
        }
        // A TTL index where ours has none, and none where ours has one.
        let ttl_less = doc! { "key": { "expires_at": 1 }, "name": "expires_at_ttl" };
        assert!(plan_on(&TTL, &[ttl_less]).is_err());
        let mut with_ttl = ours();
        with_ttl.insert("expireAfterSeconds", 60);
        assert!(plan_on(&GENERATION, &[with_ttl]).is_err());
    }
}
