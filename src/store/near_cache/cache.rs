//! The near cache's bookkeeping, with no I/O: entries, versions, tickets and
//! the generation of the channel the entries are coherent with.
//!
//! Everything here runs under one lock held for a few map operations, called
//! both by requests and by the store's invalidation callback.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use super::NearCacheStats;
use crate::id::StorageKey;
use crate::store::{ChangeSet, Record, Version};

/// Invalidations are counted in this many stripes (keys hash into them), so a
/// ticket can tell whether its key was invalidated without the cache
/// remembering every key it ever dropped.
const STRIPES: usize = 1024;

/// Proof that nothing invalidated a key between taking the ticket (before the
/// request went out) and the reply coming back: only then may the reply be
/// cached.
#[derive(Clone, Copy, Debug)]
pub(super) struct Ticket {
    generation: u64,
    epoch: u64,
    stripe: u64,
}

struct Entry {
    record: Record,
    version: Version,
    fetched: Instant,
}

/// The cached sessions and what is needed to keep them honest.
pub(super) struct Cache {
    max_entries: usize,
    max_age: Duration,
    /// The channel generation the entries are coherent with; `None` while no
    /// channel is open (then nothing is cached).
    channel: Option<u64>,
    next_generation: u64,
    entries: HashMap<StorageKey, Entry>,
    stripes: Box<[u64]>,
    /// Bumped by every flush, so tickets taken before it are void.
    epoch: u64,
    stats: NearCacheStats,
}

impl Cache {
    pub fn new(max_entries: usize, max_age: Duration) -> Self {
        Self {
            max_entries: max_entries.max(1),
            max_age,
            channel: None,
            next_generation: 1,
            entries: HashMap::new(),
            stripes: vec![0; STRIPES].into_boxed_slice(),
            epoch: 0,
            stats: NearCacheStats::default(),
        }
    }

    pub fn set_max_entries(&mut self, max_entries: usize) {
        self.max_entries = max_entries.max(1);
    }

    pub fn set_max_age(&mut self, max_age: Duration) {
        self.max_age = max_age;
    }

    pub fn stats(&self) -> NearCacheStats {
        NearCacheStats {
            entries: self.entries.len(),
            ..self.stats
        }
    }

    /// A generation number for a channel about to be opened.
    pub fn next_generation(&mut self) -> u64 {
        let generation = self.next_generation;
        self.next_generation += 1;
        generation
    }

    /// Channel `generation` is open: from now on its invalidations keep the
    /// entries coherent. What was cached before is dropped, since nothing
    /// guarantees its invalidations arrived.
    pub fn opened(&mut self, generation: u64) {
        self.flush();
        self.channel = Some(generation);
    }

    /// The generation of the open channel.
    pub fn channel(&self) -> Option<u64> {
        self.channel
    }

    /// Gives up on channel `generation` (lost, or pointing at a server that is
    /// no longer the primary): nothing it would have said can be trusted to
    /// have arrived, so everything goes. Returns whether it was the open one.
    pub fn lose(&mut self, generation: u64) -> bool {
        if self.channel != Some(generation) {
            return false;
        }
        self.flush();
        self.channel = None;
        true
    }

    fn stripe(key: &StorageKey) -> usize {
        // FNV-1a: cheap, and stripes only need spreading, not secrecy.
        let hash = key.as_str().bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        (hash % STRIPES as u64) as usize
    }

    /// Drops `key`, and voids the tickets taken for it.
    pub fn invalidate(&mut self, key: &StorageKey) {
        self.entries.remove(key);
        self.stripes[Self::stripe(key)] += 1;
    }

    /// An invalidation the store heard from the server.
    pub fn invalidated(&mut self, generation: u64, key: &StorageKey) {
        if self.channel == Some(generation) {
            self.invalidate(key);
            self.stats.invalidations += 1;
        }
    }

    /// Drops everything and voids every ticket.
    pub fn flush(&mut self) {
        self.entries.clear();
        self.epoch += 1;
        self.stats.flushes += 1;
    }

    /// The cached record for `key`, if it is fresh: younger than the maximum
    /// age, not expired, and at least at version `seen` (the client's own last
    /// write). Anything else is a miss, and a stale entry is dropped.
    pub fn lookup(
        &mut self,
        key: &StorageKey,
        seen: Version,
        now: Instant,
        wall: SystemTime,
    ) -> Option<Record> {
        let Some(entry) = self.entries.get(key) else {
            self.stats.misses += 1;
            return None;
        };
        let fresh = now.saturating_duration_since(entry.fetched) < self.max_age
            && entry.record.expires_at > wall;
        if fresh && entry.version >= seen {
            self.stats.hits += 1;
            return Some(entry.record.clone());
        }
        if fresh {
            // The client has written a later version than this copy: its
            // invalidation is still on its way. Read it from the store.
            self.stats.behind += 1;
        }
        self.entries.remove(key);
        self.stats.misses += 1;
        None
    }

    /// A ticket for a reply about `key` that is about to be requested on the
    /// open channel; `None` without one.
    pub fn ticket(&self, key: &StorageKey) -> Option<Ticket> {
        Some(Ticket {
            generation: self.channel?,
            epoch: self.epoch,
            stripe: self.stripes[Self::stripe(key)],
        })
    }

    /// Whether nothing voided `ticket` for `key`: the same channel, no flush,
    /// and no invalidation in the key's stripe since it was taken.
    fn honours(&self, ticket: &Ticket, key: &StorageKey) -> bool {
        self.channel == Some(ticket.generation)
            && self.epoch == ticket.epoch
            && self.stripes[Self::stripe(key)] == ticket.stripe
    }

    /// Caches `record` at `version` for `key` if `ticket` still holds and
    /// nothing newer is cached. When full, an arbitrary entry makes room.
    pub fn offer(
        &mut self,
        ticket: &Ticket,
        key: &StorageKey,
        record: Record,
        version: Version,
        now: Instant,
    ) {
        if !self.honours(ticket, key) {
            return;
        }
        if self.entries.get(key).is_some_and(|e| e.version > version) {
            return;
        }
        if self.entries.len() >= self.max_entries
            && !self.entries.contains_key(key)
            && let Some(victim) = self.entries.keys().next().cloned()
        {
            self.entries.remove(&victim);
        }
        self.entries.insert(
            key.clone(),
            Entry {
                record,
                version,
                fetched: now,
            },
        );
    }

    /// Brings the cached record for `key` to `version` by applying `changes`,
    /// this process's own save made on the channel, if the entry was at exactly
    /// the version before and `ticket` still holds; otherwise drops it. The
    /// channel does not report its own writes back, so this is what keeps the
    /// entry current.
    pub fn apply(
        &mut self,
        ticket: &Ticket,
        key: &StorageKey,
        changes: &ChangeSet,
        version: Version,
    ) {
        let valid = self.honours(ticket, key);
        match self.entries.get_mut(key) {
            Some(entry) if valid && entry.version.get() + 1 == version.get() => {
                changes.apply_to(&mut entry.record);
                entry.version = version;
            }
            _ => self.invalidate(key),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::SessionId;

    const AGE: Duration = Duration::from_secs(60);

    fn key() -> StorageKey {
        SessionId::generate().storage_key()
    }

    fn record(n: u32) -> Record {
        let now = SystemTime::now();
        Record {
            data: [("n".to_owned(), n.to_string())].into(),
            user: None,
            created_at: now,
            expires_at: now + Duration::from_secs(600),
        }
    }

    fn n_of(record: Option<Record>) -> Option<u32> {
        record.map(|r| r.data["n"].parse().unwrap())
    }

    fn open() -> Cache {
        let mut cache = Cache::new(100, AGE);
        let generation = cache.next_generation();
        cache.opened(generation);
        cache
    }

    fn cached(cache: &mut Cache, key: &StorageKey, n: u32, version: u64) {
        let ticket = cache.ticket(key).unwrap();
        cache.offer(
            &ticket,
            key,
            record(n),
            Version::new(version),
            Instant::now(),
        );
    }

    fn get(cache: &mut Cache, key: &StorageKey, seen: u64) -> Option<Record> {
        cache.lookup(key, Version::new(seen), Instant::now(), SystemTime::now())
    }

    #[test]
    fn an_offered_reply_is_served_until_invalidated() {
        let mut cache = open();
        let k = key();
        cached(&mut cache, &k, 1, 3);
        assert_eq!(n_of(get(&mut cache, &k, 0)), Some(1));
        cache.invalidated(cache.channel().unwrap(), &k);
        assert_eq!(get(&mut cache, &k, 0), None);
        let stats = cache.stats();
        assert_eq!((stats.hits, stats.misses, stats.invalidations), (1, 1, 1));
    }

    #[test]
    fn an_entry_older_than_the_clients_own_write_is_a_miss() {
        let mut cache = open();
        let k = key();
        cached(&mut cache, &k, 1, 4);
        assert!(get(&mut cache, &k, 4).is_some());
        assert_eq!(get(&mut cache, &k, 5), None, "the client wrote version 5");
        assert_eq!(cache.stats().behind, 1);
        assert_eq!(cache.stats().entries, 0, "the stale copy is dropped");
    }

    #[test]
    fn an_invalidation_while_the_reply_was_in_flight_voids_the_ticket() {
        let mut cache = open();
        let k = key();
        let ticket = cache.ticket(&k).unwrap();
        cache.invalidated(cache.channel().unwrap(), &k);
        cache.offer(&ticket, &k, record(1), Version::new(1), Instant::now());
        assert_eq!(get(&mut cache, &k, 0), None);
    }

    #[test]
    fn a_flush_or_a_lost_channel_voids_tickets_and_drops_entries() {
        let mut cache = open();
        let (a, b) = (key(), key());
        cached(&mut cache, &a, 1, 1);
        let ticket = cache.ticket(&b).unwrap();
        cache.flush();
        cache.offer(&ticket, &b, record(1), Version::new(1), Instant::now());
        assert_eq!(get(&mut cache, &a, 0), None);
        assert_eq!(get(&mut cache, &b, 0), None);

        cached(&mut cache, &a, 1, 1);
        let generation = cache.channel().unwrap();
        assert!(
            !cache.lose(generation + 1),
            "another channel's loss is ignored"
        );
        assert!(get(&mut cache, &a, 0).is_some());
        assert!(cache.lose(generation));
        assert_eq!(cache.ticket(&a).map(|_| ()), None, "no channel, no tickets");
        assert_eq!(get(&mut cache, &a, 0), None);
    }

    #[test]
    fn invalidations_from_an_old_channel_are_ignored_after_reopening() {
        let mut cache = open();
        let old = cache.channel().unwrap();
        assert!(cache.lose(old));
        let new = cache.next_generation();
        cache.opened(new);
        let k = key();
        cached(&mut cache, &k, 1, 1);
        cache.invalidated(old, &k);
        assert!(get(&mut cache, &k, 0).is_some());
    }

    #[test]
    fn an_older_reply_never_replaces_a_newer_entry() {
        let mut cache = open();
        let k = key();
        cached(&mut cache, &k, 2, 2);
        cached(&mut cache, &k, 1, 1);
        assert_eq!(n_of(get(&mut cache, &k, 0)), Some(2));
    }

    #[test]
    fn own_saves_apply_only_on_the_next_version() {
        let mut cache = open();
        let k = key();
        cached(&mut cache, &k, 1, 1);
        let mut changes = ChangeSet::new(SystemTime::now() + Duration::from_secs(600));
        changes.insert("n", "2");
        let ticket = cache.ticket(&k).unwrap();
        cache.apply(&ticket, &k, &changes, Version::new(2));
        let got = get(&mut cache, &k, 2).expect("write-through keeps the entry");
        assert_eq!(got.data["n"], "2");

        // Version 4 after 2: someone else wrote 3, which this process has not seen.
        let ticket = cache.ticket(&k).unwrap();
        cache.apply(&ticket, &k, &changes, Version::new(4));
        assert_eq!(get(&mut cache, &k, 0), None);
    }

    #[test]
    fn entries_expire_with_max_age_and_with_the_session() {
        let mut cache = open();
        let k = key();
        cached(&mut cache, &k, 1, 1);
        let later = Instant::now() + AGE + Duration::from_secs(1);
        assert_eq!(
            cache.lookup(&k, Version::ZERO, later, SystemTime::now()),
            None
        );

        cached(&mut cache, &k, 1, 1);
        let after_expiry = SystemTime::now() + Duration::from_secs(601);
        assert_eq!(
            cache.lookup(&k, Version::ZERO, Instant::now(), after_expiry),
            None
        );
    }

    #[test]
    fn the_cache_never_holds_more_than_max_entries() {
        let mut cache = open();
        cache.set_max_entries(3);
        for n in 0..10 {
            cached(&mut cache, &key(), n, 1);
        }
        assert_eq!(cache.stats().entries, 3);
    }
}
