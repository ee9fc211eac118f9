//! A short read cache in front of the store, so the quota check stays fast under load.
//!
//! A value is served for at most `ttl` after it was read from the store; after that the next
//! request reads again. Reads of one key are single-flight: while one request reads the store,
//! the others for that key wait for its answer instead of reading too. So an answer reflects
//! the counters as they were at most `ttl` before it was sent (plus the ingester's own lag),
//! and the store sees at most one read per key per `ttl`, however many requests arrive.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

struct Slot<V> {
    value: RwLock<Option<(Instant, Arc<V>)>>,
    refresh: tokio::sync::Mutex<()>,
}

impl<V> Default for Slot<V> {
    fn default() -> Self {
        Slot { value: RwLock::new(None), refresh: tokio::sync::Mutex::new(()) }
    }
}

/// Values by key, each fresh for `ttl`.
pub struct Cache<K, V> {
    ttl: Duration,
    slots: Mutex<HashMap<K, Arc<Slot<V>>>>,
}

/// Where an answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Cache,
    Store,
}

/// Keys kept before stale ones are dropped.
const MAX_KEYS: usize = 100_000;

impl<K: Eq + Hash + Clone, V> Cache<K, V> {
    pub fn new(ttl: Duration) -> Self {
        Cache { ttl, slots: Mutex::new(HashMap::new()) }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    fn fresh(&self, slot: &Slot<V>) -> Option<(Instant, Arc<V>)> {
        let guard = slot.value.read().unwrap_or_else(|e| e.into_inner());
        guard.as_ref().filter(|(at, _)| at.elapsed() < self.ttl).map(|(at, v)| (*at, v.clone()))
    }

    /// The value for `key` and when it was read: from the cache if younger than `ttl`,
    /// otherwise from `load` (one load per key at a time).
    pub async fn get<E, F, Fut>(&self, key: &K, load: F) -> Result<(Instant, Arc<V>, Source), E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
    {
        let slot = {
            let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
            if slots.len() >= MAX_KEYS && !slots.contains_key(key) {
                let ttl = self.ttl;
                slots.retain(|_, s| s.value.read().map(|v| v.as_ref().is_some_and(|(at, _)| at.elapsed() < ttl)).unwrap_or(false));
            }
            slots.entry(key.clone()).or_default().clone()
        };
        if let Some((at, v)) = self.fresh(&slot) {
            return Ok((at, v, Source::Cache));
        }
        let _refreshing = slot.refresh.lock().await;
        // Another request may have read the store while this one waited.
        if let Some((at, v)) = self.fresh(&slot) {
            return Ok((at, v, Source::Cache));
        }
        let read_at = Instant::now();
        let value = Arc::new(load().await?);
        *slot.value.write().unwrap_or_else(|e| e.into_inner()) = Some((read_at, value.clone()));
        Ok((read_at, value, Source::Store))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_store_read_per_key_per_ttl_however_many_ask() {
        let cache: Arc<Cache<&str, u32>> = Arc::new(Cache::new(Duration::from_millis(300)));
        let loads = Arc::new(AtomicU32::new(0));
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let (cache, loads) = (cache.clone(), loads.clone());
            tasks.push(tokio::spawn(async move {
                let (_, v, _) = cache
                    .get(&"a", || async {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        Ok::<_, ()>(loads.fetch_add(1, Ordering::SeqCst) + 1)
                    })
                    .await
                    .unwrap();
                *v
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), 1, "every caller gets the one read");
        }
        assert_eq!(loads.load(Ordering::SeqCst), 1);
        tokio::time::sleep(Duration::from_millis(350)).await;
        let (_, v, src) = cache.get(&"a", || async { Ok::<_, ()>(loads.fetch_add(1, Ordering::SeqCst) + 1) }).await.unwrap();
        assert_eq!((*v, src), (2, Source::Store), "read again once the ttl has passed");
        let (_, v, src) = cache.get(&"a", || async { Ok::<_, ()>(99) }).await.unwrap();
        assert_eq!((*v, src), (2, Source::Cache));
    }

    #[tokio::test]
    async fn a_failed_read_is_not_cached() {
        let cache: Cache<u8, u8> = Cache::new(Duration::from_secs(60));
        assert!(cache.get(&1, || async { Err::<u8, &str>("down") }).await.is_err());
        let (_, v, _) = cache.get(&1, || async { Ok::<u8, &str>(7) }).await.unwrap();
        assert_eq!(*v, 7);
    }
}
