//! A short read cache in front of the store, so the quota check stays fast under load.
//!
//! A value is served for at most `ttl` after it was read from the store; after that the next
//! request reads again. Reads of one key are single-flight: while one request reads the store,
//! the others for that key wait for its answer instead of reading too. So an answer reflects
//! the counters as they were at most `ttl` before it was sent (plus the ingester's own lag),
//! and the store sees at most one read per key per `ttl / 2`, however many requests arrive.
//!
//! A key that keeps being asked for is refreshed ahead of time: the first request after half
//! the `ttl` starts a read in the background and is answered from the cache. So under steady
//! traffic no request waits for the store, as long as a read takes less than `ttl / 2`.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

struct Slot<V> {
    value: RwLock<Option<(Instant, Arc<V>)>>,
    refresh: Arc<tokio::sync::Mutex<()>>,
}

impl<V> Default for Slot<V> {
    fn default() -> Self {
        Slot { value: RwLock::new(None), refresh: Arc::default() }
    }
}

impl<V> Slot<V> {
    fn store(&self, read_at: Instant, value: Arc<V>) {
        *self.value.write().unwrap_or_else(|e| e.into_inner()) = Some((read_at, value));
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

impl<K: Eq + Hash + Clone, V: Send + Sync + 'static> Cache<K, V> {
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
    /// otherwise from `load` (one load per key at a time). A cached value older than `ttl / 2`
    /// is answered and `load` runs in the background to replace it.
    pub async fn get<E, F, Fut>(&self, key: &K, load: F) -> Result<(Instant, Arc<V>, Source), E>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<V, E>> + Send + 'static,
        E: Send + 'static,
    {
        let slot = {
            let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
            if slots.len() >= MAX_KEYS && !slots.contains_key(key) {
                let ttl = self.ttl;
                slots.retain(|_, s| {
                    s.value.read().map(|v| v.as_ref().is_some_and(|(at, _)| at.elapsed() < ttl)).unwrap_or(false)
                });
            }
            slots.entry(key.clone()).or_default().clone()
        };
        if let Some((at, v)) = self.fresh(&slot) {
            if at.elapsed() >= self.ttl / 2 {
                if let Ok(refreshing) = slot.refresh.clone().try_lock_owned() {
                    let slot = slot.clone();
                    tokio::spawn(async move {
                        let read_at = Instant::now();
                        // A failed read leaves the value to expire; the next request past the
                        // ttl then reads (and reports the failure) itself.
                        if let Ok(value) = load().await {
                            slot.store(read_at, Arc::new(value));
                        }
                        drop(refreshing);
                    });
                }
            }
            return Ok((at, v, Source::Cache));
        }
        let _refreshing = slot.refresh.lock().await;
        // Another request may have read the store while this one waited.
        if let Some((at, v)) = self.fresh(&slot) {
            return Ok((at, v, Source::Cache));
        }
        let read_at = Instant::now();
        let value = Arc::new(load().await?);
        slot.store(read_at, value.clone());
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
                    .get(&"a", move || async move {
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
        let l = loads.clone();
        let (_, v, src) =
            cache.get(&"a", move || async move { Ok::<_, ()>(l.fetch_add(1, Ordering::SeqCst) + 1) }).await.unwrap();
        assert_eq!((*v, src), (2, Source::Store), "read again once the ttl has passed");
        let (_, v, src) = cache.get(&"a", || async { Ok::<_, ()>(99) }).await.unwrap();
        assert_eq!((*v, src), (2, Source::Cache));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_value_past_half_its_ttl_is_answered_and_refreshed_behind() {
        let cache: Cache<u8, u32> = Cache::new(Duration::from_millis(400));
        let (first, _, _) = cache.get(&1, || async { Ok::<_, ()>(1) }).await.unwrap();
        tokio::time::sleep(Duration::from_millis(220)).await;
        // Past ttl / 2: answered at once from the cache, while a slow read runs behind.
        let started = Instant::now();
        let (at, v, src) = cache
            .get(&1, || async {
                tokio::time::sleep(Duration::from_millis(50)).await;
                Ok::<_, ()>(2)
            })
            .await
            .unwrap();
        assert_eq!((*v, src, at), (1, Source::Cache, first));
        assert!(started.elapsed() < Duration::from_millis(40), "did not wait for the read");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (at, v, src) = cache.get(&1, || async { Ok::<_, ()>(3) }).await.unwrap();
        assert_eq!((*v, src), (2, Source::Cache), "the background read replaced the value");
        assert!(at > first);
    }

    #[tokio::test]
    async fn a_failed_read_is_not_cached() {
        let cache: Cache<u8, u8> = Cache::new(Duration::from_secs(60));
        assert!(cache.get(&1, || async { Err::<u8, &str>("down") }).await.is_err());
        let (_, v, _) = cache.get(&1, || async { Ok::<u8, &str>(7) }).await.unwrap();
        assert_eq!(*v, 7);
    }
}
