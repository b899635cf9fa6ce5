//! The browser's block store: IndexedDB, through `indexed_db_futures`.
//!
//! Layout (database `cairn-<name>`, version 1):
//!
//! | object store | key | value |
//! |---|---|---|
//! | `blocks` | the binary CID (a byte-string key, so keys sort by CID bytes) | the block's bytes |
//! | `meta` | `"stat"` | `[blocks, bytes]` |
//! | `meta` | `"pins"` | the pinned roots, an array of CID strings |
//! | `meta` | `"identity"` | the node's libp2p key (protobuf encoding), so its peer id outlives reloads |
//! | `meta` | `"transfers"` | the transfer queue's journal (a string: [`cairn_core::transfer::Journal`]) |
//! | `meta` | `"replicas"` | the copies kept on other peers, what is wanted of each root, trust (a string) |
//!
//! Cost is per transaction, not per byte, so [`IdbStore::put_many`] writes a whole batch,
//! its existence checks and the byte count in **one** readwrite transaction: all of it
//! lands or none of it does (a transaction that is not committed is rolled back, and one
//! the browser refuses, for example over its storage quota, is aborted whole). Reads
//! verify the bytes against their CID, as every cairn store does.

use std::collections::HashSet;

use cairn_core::block::Block;
use cairn_core::cid::Cid;
use cairn_core::store::{BlockStore, Error, Result, Stat};
use indexed_db_futures::KeyRange;
use indexed_db_futures::database::Database;
use indexed_db_futures::internals::SystemRepr;
use indexed_db_futures::prelude::*;
use indexed_db_futures::transaction::TransactionMode;
use wasm_bindgen::{JsCast, JsValue};

const BLOCKS: &str = "blocks";
const META: &str = "meta";
const STAT: &str = "stat";
const PINS: &str = "pins";
const IDENTITY: &str = "identity";
/// The `meta` key of the transfer queue's journal.
pub const TRANSFERS: &str = "transfers";
/// The `meta` key of the replicas' record.
pub const REPLICAS: &str = "replicas";

/// A block store in the browser's IndexedDB.
#[derive(Debug, Clone)]
pub struct IdbStore {
    db: Database,
    name: String,
    quota: Option<u64>,
}

fn backend(op: &'static str, e: impl std::fmt::Display) -> Error {
    Error::Backend {
        op,
        source: cairn_core::Reason::msg(format!("IndexedDB: {e}")),
    }
}

fn key(cid: &Cid) -> JsValue {
    js_sys::Uint8Array::from(&cid.to_bytes()[..]).into()
}

fn bytes(v: &JsValue) -> Vec<u8> {
    js_sys::Uint8Array::new(v).to_vec()
}

fn stat_value(blocks: u64, bytes: u64) -> JsValue {
    let a = js_sys::Array::new();
    a.push(&JsValue::from_f64(blocks as f64));
    a.push(&JsValue::from_f64(bytes as f64));
    a.into()
}

fn parse_stat(v: Option<JsValue>) -> (u64, u64) {
    let Some(v) = v else { return (0, 0) };
    let a: js_sys::Array = v.unchecked_into();
    let n = |i| a.get(i).as_f64().map_or(0, |f| f as u64);
    (n(0), n(1))
}

/// The pins array; entries that do not parse (written by a newer version?) are skipped.
fn parse_pins(v: Option<JsValue>) -> Vec<Cid> {
    let Some(v) = v.filter(js_sys::Array::is_array) else {
        return Vec::new();
    };
    js_sys::Array::from(&v)
        .iter()
        .filter_map(|s| s.as_string())
        .filter_map(|s| cairn_core::cid::parse(&s).ok())
        .collect()
}

/// Whether a failed transaction failed for the browser's storage quota.
fn quota_exceeded(e: &indexed_db_futures::error::Error, tx: &web_sys::IdbTransaction) -> bool {
    use indexed_db_futures::error::Error as E;
    matches!(e, E::DomException(d) if d.name() == "QuotaExceededError")
        || tx.error().is_some_and(|d| d.name() == "QuotaExceededError")
}

impl IdbStore {
    /// Opens (or creates) the store `name`; `quota` caps the bytes of blocks it holds, below
    /// whatever the browser allows.
    pub async fn open(name: &str, quota: Option<u64>) -> Result<Self> {
        let db_name = format!("cairn-{name}");
        let db = Database::open(db_name.as_str())
            .with_version(1u32)
            .with_on_upgrade_needed(|ev, db| {
                if ev.old_version() < 1.0 {
                    db.create_object_store(BLOCKS).build()?;
                    db.create_object_store(META).build()?;
                }
                Ok(())
            })
            .await
            .map_err(|e| {
                backend(
                    "open",
                    format!("cannot open database {db_name}: {e}; is storage blocked (private mode, site settings)?"),
                )
            })?;
        Ok(Self {
            db,
            name: db_name,
            quota,
        })
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Closes the database (every clone of this handle); later calls fail.
    pub fn close(&self) {
        self.db.clone().close();
    }

    /// Closes this handle and deletes the whole database.
    pub async fn destroy(self) -> Result<()> {
        let name = self.name.clone();
        self.db.close();
        Database::delete_by_name(&name)
            .map_err(|e| backend("delete", e))?
            .await
            .map_err(|e| backend("delete", e))
    }

    async fn read_stat(&self) -> Result<(u64, u64)> {
        let tx = self
            .db
            .transaction(META)
            .build()
            .map_err(|e| backend("stat", e))?;
        let meta = tx.object_store(META).map_err(|e| backend("stat", e))?;
        let v: Option<JsValue> = meta
            .get::<JsValue, JsValue, _>(JsValue::from_str(STAT))
            .await
            .map_err(|e| backend("stat", e))?;
        Ok(parse_stat(v))
    }

    /// The pinned roots.
    pub async fn pins(&self) -> Result<Vec<Cid>> {
        let tx = self
            .db
            .transaction(META)
            .build()
            .map_err(|e| backend("pins", e))?;
        let meta = tx.object_store(META).map_err(|e| backend("pins", e))?;
        let v: Option<JsValue> = meta
            .get::<JsValue, JsValue, _>(JsValue::from_str(PINS))
            .await
            .map_err(|e| backend("pins", e))?;
        Ok(parse_pins(v))
    }

    /// The node identity kept with this store, if any.
    pub async fn identity(&self) -> Result<Option<Vec<u8>>> {
        let tx = self
            .db
            .transaction(META)
            .build()
            .map_err(|e| backend("identity", e))?;
        let meta = tx.object_store(META).map_err(|e| backend("identity", e))?;
        let v: Option<JsValue> = meta
            .get::<JsValue, JsValue, _>(JsValue::from_str(IDENTITY))
            .await
            .map_err(|e| backend("identity", e))?;
        Ok(v.filter(|v| v.is_instance_of::<js_sys::Uint8Array>())
            .map(|v| bytes(&v)))
    }

    /// The text record kept under `key` in `meta`, if any.
    pub async fn record(&self, key: &str) -> Result<Option<String>> {
        let tx = self
            .db
            .transaction(META)
            .build()
            .map_err(|e| backend("transfers", e))?;
        let meta = tx.object_store(META).map_err(|e| backend("transfers", e))?;
        let v: Option<JsValue> = meta
            .get::<JsValue, JsValue, _>(JsValue::from_str(key))
            .await
            .map_err(|e| backend("transfers", e))?;
        Ok(v.and_then(|v| v.as_string()))
    }

    /// Replaces the text record kept under `key` in `meta`.
    pub async fn set_record(&self, key: &str, record: &str) -> Result<()> {
        let tx = self
            .db
            .transaction(META)
            .with_mode(TransactionMode::Readwrite)
            .build()
            .map_err(|e| backend("transfers", e))?;
        {
            let meta = tx.object_store(META).map_err(|e| backend("transfers", e))?;
            meta.put(JsValue::from_str(record))
                .with_key(JsValue::from_str(key))
                .build()
                .map_err(|e| backend("transfers", e))?;
        }
        tx.commit().await.map_err(|e| backend("transfers", e))
    }

    /// Keeps `key` (a protobuf-encoded libp2p keypair) as this store's node identity.
    pub async fn set_identity(&self, key: &[u8]) -> Result<()> {
        let tx = self
            .db
            .transaction(META)
            .with_mode(TransactionMode::Readwrite)
            .build()
            .map_err(|e| backend("identity", e))?;
        {
            let meta = tx.object_store(META).map_err(|e| backend("identity", e))?;
            meta.put(JsValue::from(js_sys::Uint8Array::from(key)))
                .with_key(JsValue::from_str(IDENTITY))
                .build()
                .map_err(|e| backend("identity", e))?;
        }
        tx.commit().await.map_err(|e| backend("identity", e))
    }

    /// Pins (`pinned`) or unpins `root`; returns whether that changed anything. One readwrite
    /// transaction, so two tabs pinning at once do not lose each other's pins.
    pub async fn set_pinned(&self, root: &Cid, pinned: bool) -> Result<bool> {
        let tx = self
            .db
            .transaction(META)
            .with_mode(TransactionMode::Readwrite)
            .build()
            .map_err(|e| backend("pin", e))?;
        let changed = {
            let meta = tx.object_store(META).map_err(|e| backend("pin", e))?;
            let mut pins = parse_pins(
                meta.get::<JsValue, JsValue, _>(JsValue::from_str(PINS))
                    .await
                    .map_err(|e| backend("pin", e))?,
            );
            let had = pins.contains(root);
            if had == pinned {
                return Ok(false);
            }
            if pinned {
                pins.push(*root);
            } else {
                pins.retain(|c| c != root);
            }
            let value: js_sys::Array = pins
                .iter()
                .map(|c| JsValue::from_str(&c.to_string()))
                .collect();
            meta.put(JsValue::from(value))
                .with_key(JsValue::from_str(PINS))
                .build()
                .map_err(|e| backend("pin", e))?;
            true
        };
        tx.commit().await.map_err(|e| backend("pin", e))?;
        Ok(changed)
    }

    async fn write_batch(&self, blocks: Vec<Block>) -> Result<usize> {
        let mut seen = HashSet::new();
        let blocks: Vec<Block> = blocks
            .into_iter()
            .filter(|b| seen.insert(*b.cid()))
            .collect();
        if blocks.is_empty() {
            return Ok(0);
        }
        let tx = self
            .db
            .transaction([BLOCKS, META])
            .with_mode(TransactionMode::Readwrite)
            .build()
            .map_err(|e| backend("put", e))?;
        let raw: web_sys::IdbTransaction = tx
            .as_sys()
            .unchecked_ref::<web_sys::IdbTransaction>()
            .clone();
        let new = {
            let store = tx.object_store(BLOCKS).map_err(|e| backend("put", e))?;
            let meta = tx.object_store(META).map_err(|e| backend("put", e))?;
            let (held_blocks, held_bytes) = parse_stat(
                meta.get::<JsValue, JsValue, _>(JsValue::from_str(STAT))
                    .await
                    .map_err(|e| backend("put", e))?,
            );
            // Only IndexedDB requests of this transaction are awaited until the commit, so it
            // stays active (awaiting anything else would let it commit early).
            let mut new = Vec::with_capacity(blocks.len());
            for b in &blocks {
                let held: Option<JsValue> = store
                    .get_key::<JsValue, _>(key(b.cid()))
                    .await
                    .map_err(|e| backend("put", e))?;
                if held.is_none() {
                    new.push(b);
                }
            }
            let needed: u64 = new.iter().map(|b| b.len() as u64).sum();
            if let Some(quota) = self.quota
                && held_bytes + needed > quota
            {
                // Dropping the transaction aborts it: nothing of the batch is written.
                return Err(Error::Full {
                    needed,
                    used: held_bytes,
                    quota,
                });
            }
            for b in &new {
                let value: JsValue = js_sys::Uint8Array::from(&b.data()[..]).into();
                store
                    .put(value)
                    .with_key(key(b.cid()))
                    .build()
                    .map_err(|e| backend("put", e))?;
            }
            meta.put(stat_value(
                held_blocks + new.len() as u64,
                held_bytes + needed,
            ))
            .with_key(JsValue::from_str(STAT))
            .build()
            .map_err(|e| backend("put", e))?;
            new.len()
        };
        match tx.commit().await {
            Ok(()) => Ok(new),
            Err(e) if quota_exceeded(&e, &raw) => Err(Error::OutOfSpace {
                op: "put",
                source: "the browser's storage quota for this site is used up \
                    (QuotaExceededError); nothing of this batch was written. \
                    Free space (unpin and evict content) or allow the site more storage"
                    .into(),
            }),
            Err(e) => Err(backend("put", e)),
        }
    }
}

/// What [`IdbStore::read`] reads of a record.
#[derive(Clone, Copy)]
enum Read {
    Value,
    Key,
}

/// Unsets a request's handlers when the read ends or is dropped (the closures die with it).
struct Handlers<'a>(&'a web_sys::IdbRequest);

impl Drop for Handlers<'_> {
    fn drop(&mut self) {
        self.0.set_onsuccess(None);
        self.0.set_onerror(None);
    }
}

impl IdbStore {
    /// One read of `key` in `BLOCKS`, in a read-only transaction of the browser's own: it
    /// commits by itself once the read is answered. indexed_db_futures aborts every
    /// transaction dropped without a commit, and in Chromium that abort cost about a
    /// millisecond of the page's time per read (270 ms of a page serving 64 MiB over
    /// `/webrtc`); committing instead would wait for the commit. `None` when there is no such
    /// record.
    async fn read(&self, op: &'static str, key: JsValue, what: Read) -> Result<Option<JsValue>> {
        let db: &web_sys::IdbDatabase = self.db.as_sys().unchecked_ref();
        let tx = db
            .transaction_with_str(BLOCKS)
            .map_err(|e| backend(op, crate::js::describe(&e)))?;
        let store = tx
            .object_store(BLOCKS)
            .map_err(|e| backend(op, crate::js::describe(&e)))?;
        let request = match what {
            Read::Value => store.get(&key),
            Read::Key => store.get_key(&key),
        }
        .map_err(|e| backend(op, crate::js::describe(&e)))?;
        let (tx_result, result) = futures::channel::oneshot::channel::<Result<JsValue>>();
        let tx_result = std::rc::Rc::new(std::cell::RefCell::new(Some(tx_result)));
        let on_success = wasm_bindgen::closure::Closure::<dyn FnMut()>::new({
            let tx_result = tx_result.clone();
            let request = request.clone();
            move || {
                if let Some(t) = tx_result.borrow_mut().take() {
                    let _ = t.send(
                        request
                            .result()
                            .map_err(|e| backend(op, crate::js::describe(&e))),
                    );
                }
            }
        });
        let on_error = wasm_bindgen::closure::Closure::<dyn FnMut()>::new({
            let request = request.clone();
            move || {
                if let Some(t) = tx_result.borrow_mut().take() {
                    let why = match request.error() {
                        Ok(Some(e)) => format!("{}: {}", e.name(), e.message()),
                        _ => "the read failed".to_owned(),
                    };
                    let _ = t.send(Err(backend(op, why)));
                }
            }
        });
        request.set_onsuccess(Some(on_success.as_ref().unchecked_ref()));
        request.set_onerror(Some(on_error.as_ref().unchecked_ref()));
        let _handlers = Handlers(&request);
        let value = result
            .await
            .map_err(|_| backend(op, "the read was dropped unanswered"))??;
        Ok((!value.is_undefined()).then_some(value))
    }
}

impl BlockStore for IdbStore {
    async fn get(&self, cid: &Cid) -> Result<Option<Block>> {
        let v = self.read("get", key(cid), Read::Value).await?;
        match v {
            None => Ok(None),
            Some(v) => Block::new(*cid, bytes(&v))
                .map(Some)
                .map_err(|e| Error::Corrupt {
                    cid: *cid,
                    source: cairn_core::Reason::new(e),
                }),
        }
    }

    async fn put(&self, block: Block) -> Result<bool> {
        Ok(self.write_batch(vec![block]).await? == 1)
    }

    async fn put_many(&self, blocks: Vec<Block>) -> Result<usize> {
        self.write_batch(blocks).await
    }

    async fn has(&self, cid: &Cid) -> Result<bool> {
        Ok(self.read("has", key(cid), Read::Key).await?.is_some())
    }

    async fn delete(&self, cid: &Cid) -> Result<bool> {
        let tx = self
            .db
            .transaction([BLOCKS, META])
            .with_mode(TransactionMode::Readwrite)
            .build()
            .map_err(|e| backend("delete", e))?;
        let held = {
            let store = tx.object_store(BLOCKS).map_err(|e| backend("delete", e))?;
            let meta = tx.object_store(META).map_err(|e| backend("delete", e))?;
            let v: Option<JsValue> = store
                .get::<JsValue, JsValue, _>(key(cid))
                .await
                .map_err(|e| backend("delete", e))?;
            match v {
                None => false,
                Some(v) => {
                    let len = js_sys::Uint8Array::new(&v).length() as u64;
                    let (n, b) = parse_stat(
                        meta.get::<JsValue, JsValue, _>(JsValue::from_str(STAT))
                            .await
                            .map_err(|e| backend("delete", e))?,
                    );
                    store
                        .delete::<JsValue, _>(key(cid))
                        .build()
                        .map_err(|e| backend("delete", e))?;
                    meta.put(stat_value(n.saturating_sub(1), b.saturating_sub(len)))
                        .with_key(JsValue::from_str(STAT))
                        .build()
                        .map_err(|e| backend("delete", e))?;
                    true
                }
            }
        };
        tx.commit().await.map_err(|e| backend("delete", e))?;
        Ok(held)
    }

    async fn list(&self, after: Option<&Cid>, limit: usize) -> Result<Vec<Cid>> {
        if limit == 0 {
            // IndexedDB reads a count of 0 as "no limit".
            return Ok(Vec::new());
        }
        let tx = self
            .db
            .transaction(BLOCKS)
            .build()
            .map_err(|e| backend("list", e))?;
        let store = tx.object_store(BLOCKS).map_err(|e| backend("list", e))?;
        let limit = u32::try_from(limit).unwrap_or(u32::MAX);
        let keys: Vec<JsValue> = match after {
            Some(a) => store
                .get_all_keys::<JsValue>()
                .with_query::<JsValue, _>(KeyRange::LowerBound(key(a), true))
                .with_limit(limit)
                .await
                .map_err(|e| backend("list", e))?
                .collect::<std::result::Result<_, _>>()
                .map_err(|e| backend("list", e))?,
            None => store
                .get_all_keys::<JsValue>()
                .with_limit(limit)
                .await
                .map_err(|e| backend("list", e))?
                .collect::<std::result::Result<_, _>>()
                .map_err(|e| backend("list", e))?,
        };
        keys.iter()
            .map(|k| {
                Cid::try_from(bytes(k).as_slice()).map_err(|e| {
                    backend(
                        "list",
                        format!("a key is not a CID ({e}); the database is damaged"),
                    )
                })
            })
            .collect()
    }

    async fn stat(&self) -> Result<Stat> {
        let (blocks, bytes) = self.read_stat().await?;
        Ok(Stat {
            blocks,
            bytes,
            quota: self.quota,
        })
    }
}

/// A text record in a store's `meta` object store, under a key ([`TRANSFERS`],
/// [`REPLICAS`]).
#[derive(Debug, Clone)]
pub struct IdbJournal(pub IdbStore, pub &'static str);

impl cairn_core::transfer::Journal for IdbJournal {
    fn load(&self) -> cairn_core::BoxFuture<'_, Result<Option<String>>> {
        Box::pin(self.0.record(self.1))
    }

    fn save(&self, record: String) -> cairn_core::BoxFuture<'_, Result<()>> {
        Box::pin(async move { self.0.set_record(self.1, &record).await })
    }
}
