//! Structurally shared containers: cloning one is a handful of reference-count increments, and
//! changing one entry copies only the shard or chunk that holds it.

use std::sync::Arc;

/// Multiplier spreading `u64` keys over shards (2^64 / φ). Phone-number keys are dense decimal
/// integers; without mixing, neighbouring numbers would crowd one shard.
const SHARD_MIX: u64 = 0x9E37_79B9_7F4A_7C15;

/// Tables grow beyond 5/8 full: linear probing then averages under two slots per hit (one
/// cache line), while a 1M-number table at ~250 keys per shard fits 512-slot (8 KiB) shards.
const MAX_LOAD_NUMERATOR: usize = 5;
const MAX_LOAD_DENOMINATOR: usize = 8;
/// Smallest non-empty table.
const MIN_TABLE_SLOTS: usize = 8;

/// Key 0 marks an empty slot: valid keys (E.164 digits, at least 7 of them) are never 0.
const EMPTY: u64 = 0;

/// One shard: an open-addressing table stored inline in its `Arc`, so a probe is one pointer
/// to follow plus the slot itself (a `HashMap` behind an `Arc` costs three dependent loads).
type Table<V> = Arc<[(u64, V)]>;

/// A `u64`-keyed map split into `2^bits` copy-on-write shards.
///
/// A lookup is one multiply, one array index and a linear probe from a mixed hash. A write
/// copies the shard it touches if another snapshot still shares it.
#[derive(Debug, Clone)]
pub(crate) struct ShardedMap<V> {
    shards: Arc<[Table<V>]>,
    /// Entries per shard (kept apart so the tables stay plain slot arrays).
    lens: Arc<[u32]>,
    bits: u32,
    len: usize,
}

/// splitmix64's finaliser: all 64 bits depend on all key bits, so the low bits that pick a slot
/// are independent of the high bits that picked the shard.
#[inline]
pub(crate) fn slot_hash(key: u64) -> usize {
    let mut z = key;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) as usize
}

/// Slot index of `key` in a non-empty power-of-two `table` probed linearly from its hash:
/// `Ok` if present, `Err(first empty slot)` if not.
#[inline]
pub(crate) fn probe<V>(table: &[(u64, V)], key: u64) -> Result<usize, usize> {
    let mask = table.len() - 1;
    let mut index = slot_hash(key) & mask;
    loop {
        match table[index].0 {
            k if k == key => return Ok(index),
            EMPTY => return Err(index),
            _ => index = (index + 1) & mask,
        }
    }
}

fn table_slots_for(entries: usize) -> usize {
    if entries == 0 {
        0
    } else {
        (entries * MAX_LOAD_DENOMINATOR / MAX_LOAD_NUMERATOR + 1)
            .next_power_of_two()
            .max(MIN_TABLE_SLOTS)
    }
}

impl<V: Clone + Default> ShardedMap<V> {
    /// An empty map of `2^bits` shards.
    #[cfg(test)]
    pub(crate) fn new(bits: u32) -> Self {
        let empty: Table<V> = Arc::from(Vec::new());
        Self {
            shards: (0..1usize << bits).map(|_| Arc::clone(&empty)).collect(),
            lens: vec![0; 1 << bits].into(),
            bits,
            len: 0,
        }
    }

    /// Like [`ShardedMap::new`] with every shard pre-sized for `expected` keys in total, so a
    /// bulk build does not grow tables.
    pub(crate) fn with_capacity(bits: u32, expected: usize) -> Self {
        let count = 1usize << bits;
        // Keys spread binomially: allow ~4 standard deviations above the mean per shard.
        let mean = expected / count;
        let per_shard = if expected == 0 {
            0
        } else {
            mean + 4 * (mean as f64).sqrt() as usize + 1
        };
        let slots = table_slots_for(per_shard);
        Self {
            shards: (0..count)
                .map(|_| Arc::from(vec![(EMPTY, V::default()); slots]))
                .collect(),
            lens: vec![0; count].into(),
            bits,
            len: 0,
        }
    }

    #[inline]
    fn shard_index(&self, key: u64) -> usize {
        if self.bits == 0 {
            0
        } else {
            (key.wrapping_mul(SHARD_MIX) >> (64 - self.bits)) as usize
        }
    }

    #[inline]
    fn probe(table: &[(u64, V)], key: u64) -> Result<usize, usize> {
        probe(table, key)
    }

    #[inline]
    pub(crate) fn get(&self, key: u64) -> Option<&V> {
        let table = &self.shards[self.shard_index(key)];
        if table.is_empty() || key == EMPTY {
            return None;
        }
        Self::probe(table, key).ok().map(|i| &table[i].1)
    }

    pub(crate) fn insert(&mut self, key: u64, value: V) {
        debug_assert_ne!(key, EMPTY);
        let shard = self.shard_index(key);
        let len = self.lens[shard] as usize;
        let shards = Arc::make_mut(&mut self.shards);
        let table = &mut shards[shard];
        if !table.is_empty() {
            if let Ok(i) = Self::probe(table, key) {
                Arc::make_mut(table)[i].1 = value;
                return;
            }
        }
        if (len + 1) * MAX_LOAD_DENOMINATOR > table.len() * MAX_LOAD_NUMERATOR {
            *table = Self::rehash(table, table_slots_for(len + 1).max(table.len() * 2));
        }
        let slots = Arc::make_mut(table);
        if let Err(i) = Self::probe(slots, key) {
            slots[i] = (key, value);
        }
        Arc::make_mut(&mut self.lens)[shard] += 1;
        self.len += 1;
    }

    fn rehash(table: &[(u64, V)], slots: usize) -> Table<V> {
        let mut grown = vec![(EMPTY, V::default()); slots];
        for (key, value) in table.iter().filter(|(k, _)| *k != EMPTY) {
            if let Err(i) = Self::probe(&grown, *key) {
                grown[i] = (*key, value.clone());
            }
        }
        Arc::from(grown)
    }

    /// Removes `key` with backward-shift deletion (no tombstones, so probes stay short).
    pub(crate) fn remove(&mut self, key: u64) -> bool {
        let shard = self.shard_index(key);
        let table = &self.shards[shard];
        if table.is_empty() || key == EMPTY {
            return false;
        }
        let Ok(found) = Self::probe(table, key) else {
            return false;
        };
        let slots = Arc::make_mut(&mut Arc::make_mut(&mut self.shards)[shard]);
        let mask = slots.len() - 1;
        let mut hole = found;
        let mut next = found;
        loop {
            next = (next + 1) & mask;
            if slots[next].0 == EMPTY {
                break;
            }
            let home = slot_hash(slots[next].0) & mask;
            // The entry at `next` may fill the hole if the hole lies on its probe path.
            if next.wrapping_sub(home) & mask >= next.wrapping_sub(hole) & mask {
                slots[hole] = slots[next].clone();
                hole = next;
            }
        }
        slots[hole] = (EMPTY, V::default());
        Arc::make_mut(&mut self.lens)[shard] -= 1;
        self.len -= 1;
        true
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    #[cfg(test)]
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u64, &V)> + '_ {
        self.shards.iter().flat_map(|shard| {
            shard
                .iter()
                .filter(|(k, _)| *k != EMPTY)
                .map(|(k, v)| (*k, v))
        })
    }

    /// Shards `self` and `other` share (for tests of structural sharing).
    #[cfg(test)]
    pub(crate) fn shared_shards(&self, other: &Self) -> usize {
        self.shards
            .iter()
            .zip(other.shards.iter())
            .filter(|(a, b)| Arc::ptr_eq(a, b))
            .count()
    }
}

/// Entries per [`Slab`] chunk: small enough that copying a chunk on write is trivial, large
/// enough that the chunk list of 10 000 deployments is ~160 pointers.
const SLAB_CHUNK: usize = 64;

/// One copy-on-write chunk of a [`Slab`], inline in its `Arc` (one load to reach a slot).
type Chunk<T> = Arc<[Option<Arc<T>>]>;

/// A persistent vector of optional `Arc`s addressed by `u32` slot, in copy-on-write chunks.
#[derive(Debug)]
pub(crate) struct Slab<T> {
    chunks: Arc<Vec<Chunk<T>>>,
    len: u32,
}

impl<T> Clone for Slab<T> {
    fn clone(&self) -> Self {
        Self {
            chunks: Arc::clone(&self.chunks),
            len: self.len,
        }
    }
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Self {
            chunks: Arc::new(Vec::new()),
            len: 0,
        }
    }
}

impl<T> Slab<T> {
    #[inline]
    pub(crate) fn get(&self, slot: u32) -> Option<&Arc<T>> {
        let slot = slot as usize;
        self.chunks
            .get(slot / SLAB_CHUNK)?
            .get(slot % SLAB_CHUNK)?
            .as_ref()
    }

    /// Stores `value` at `slot`, growing the slab if `slot` is the next unused one (or beyond).
    pub(crate) fn set(&mut self, slot: u32, value: Option<Arc<T>>) {
        let index = slot as usize;
        let chunks = Arc::make_mut(&mut self.chunks);
        while chunks.len() <= index / SLAB_CHUNK {
            chunks.push((0..SLAB_CHUNK).map(|_| None).collect());
        }
        let chunk = Arc::make_mut(&mut chunks[index / SLAB_CHUNK]);
        chunk[index % SLAB_CHUNK] = value;
        self.len = self.len.max(slot + 1);
    }

    /// One past the highest slot ever set.
    pub(crate) fn len(&self) -> u32 {
        self.len
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (u32, &Arc<T>)> + '_ {
        self.chunks
            .iter()
            .flat_map(|chunk| chunk.iter())
            .enumerate()
            .filter_map(|(slot, value)| value.as_ref().map(|v| (slot as u32, v)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sharded_map_copies_only_touched_shards() {
        let mut a: ShardedMap<u32> = ShardedMap::new(4);
        for k in 1..=1000u64 {
            a.insert(k, k as u32);
        }
        let mut b = a.clone();
        b.insert(5, 99);
        assert_eq!(a.get(5), Some(&5));
        assert_eq!(b.get(5), Some(&99));
        assert_eq!(
            a.shared_shards(&b),
            15,
            "only the shard holding key 5 was copied"
        );
        assert!(b.remove(5));
        assert!(!b.remove(5));
        assert_eq!((a.len(), b.len()), (1000, 999));
        assert_eq!(b.iter().count(), 999);
        assert_eq!(b.get(0), None);
    }

    /// Random inserts and removals against a `HashMap`, through growth and backward shifts.
    #[test]
    fn sharded_map_matches_a_hash_map() {
        let mut map: ShardedMap<u64> = ShardedMap::new(2);
        let mut model = std::collections::HashMap::new();
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        for step in 0..20_000u64 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let key = 1 + state % 512;
            if state.is_multiple_of(3) {
                assert_eq!(map.remove(key), model.remove(&key).is_some(), "step {step}");
            } else {
                map.insert(key, step);
                model.insert(key, step);
            }
            assert_eq!(map.len(), model.len());
        }
        for key in 1..=512 {
            assert_eq!(map.get(key), model.get(&key), "key {key}");
        }
        let sized: ShardedMap<u64> = ShardedMap::with_capacity(3, 1000);
        assert_eq!((sized.len(), sized.get(7)), (0, None));
    }

    #[test]
    fn slab_set_get_and_share() {
        let mut a: Slab<String> = Slab::default();
        a.set(0, Some(Arc::new("zero".into())));
        a.set(130, Some(Arc::new("far".into())));
        let mut b = a.clone();
        b.set(0, None);
        assert_eq!(a.get(0).map(|s| s.as_str()), Some("zero"));
        assert!(b.get(0).is_none());
        assert_eq!(b.get(130).map(|s| s.as_str()), Some("far"));
        assert!(a.get(5000).is_none());
        assert_eq!(a.len(), 131);
        assert_eq!(
            a.iter().map(|(slot, _)| slot).collect::<Vec<_>>(),
            vec![0, 130]
        );
    }
}
