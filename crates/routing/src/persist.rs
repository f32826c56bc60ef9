//! Structurally shared containers: cloning one is a handful of reference-count increments, and
//! changing one entry copies only the shard or chunk that holds it.

use std::sync::Arc;

/// Multiplier spreading `u64` keys over shards (2^64 / φ). Phone-number keys are dense decimal
/// integers; without mixing, neighbouring numbers would crowd one shard.
const SHARD_MIX: u64 = 0x9E37_79B9_7F4A_7C15;

/// Load factors of a number shard. A bulk build sizes shards to 3/4 full on average: linear
/// probing then averages 2.5 slots per hit and 8.5 per miss, i.e. one or two 64-byte lines of
/// 16-byte slots read in sequence (the prefetcher follows), while the table costs 21 B per
/// number instead of the 32-51 B a power-of-two table at 5/8 would. A shard grows (by half) only
/// beyond 7/8, which leaves an empty slot to end every probe; at 1M numbers (~244 per shard) a
/// handful of shards grow once during a build, at 10M none do.
const TARGET_LOAD: (usize, usize) = (3, 4);
const MAX_LOAD: (usize, usize) = (7, 8);
/// Smallest non-empty table.
const MIN_TABLE_SLOTS: usize = 8;

/// Keys per shard a map is sized for. A change copies each shard it touches, and every write
/// copies the shard pointer array (16 B and a reference count per shard): ~256 keys (~5 KiB)
/// per shard balances the two, so a 100-number change at 10M copies ~1 MiB of shards plus a
/// 512 KiB pointer array instead of 10 MiB of 52 KiB shards.
const KEYS_PER_SHARD: usize = 256;
/// 64k shards (a 1 MiB pointer array, the size of one core's L2 here) at most.
const MAX_SHARD_BITS: u32 = 16;
/// A map that outgrows its shards by this factor is re-sharded (a full copy, so amortised over
/// the 4x growth in between; a table built at its size never re-shards).
const RESHARD_FACTOR: usize = 4;

/// Shard bits for `keys` keys: at least `min_bits`, about [`KEYS_PER_SHARD`] keys per shard.
fn shard_bits_for(keys: usize, min_bits: u32) -> u32 {
    (keys / KEYS_PER_SHARD)
        .checked_ilog2()
        .unwrap_or(0)
        .clamp(min_bits.min(MAX_SHARD_BITS), MAX_SHARD_BITS)
}

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

/// splitmix64's finaliser: all 64 bits depend on all key bits, so the bits that pick a slot are
/// independent of the multiplicative hash that picked the shard.
#[inline]
fn slot_hash(key: u64) -> u64 {
    let mut z = key;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The slot a key's probe starts at in a table of `slots` slots (any length, not only powers of
/// two): the high half of hash × slots (Lemire's "fastrange"), one multiply and no division, so
/// tables can be sized to their load factor.
#[inline]
pub(crate) fn home_slot(key: u64, slots: usize) -> usize {
    ((u128::from(slot_hash(key)) * slots as u128) >> 64) as usize
}

/// How many slots forward `to` lies from `from` in a circular table of `slots` slots.
#[inline]
fn forward_distance(from: usize, to: usize, slots: usize) -> usize {
    if to >= from {
        to - from
    } else {
        to + slots - from
    }
}

/// Slot index of `key` in a non-empty `table` (with at least one empty slot) probed linearly
/// from its home slot: `Ok` if present, `Err(first empty slot)` if not.
#[inline]
pub(crate) fn probe<V>(table: &[(u64, V)], key: u64) -> Result<usize, usize> {
    let mut index = home_slot(key, table.len());
    loop {
        match table[index].0 {
            k if k == key => return Ok(index),
            EMPTY => return Err(index),
            _ => {
                index += 1;
                if index == table.len() {
                    index = 0;
                }
            }
        }
    }
}

/// Slots for `entries` keys at `load` (numerator, denominator).
fn table_slots_for(entries: usize, load: (usize, usize)) -> usize {
    if entries == 0 {
        0
    } else {
        (entries * load.1 / load.0 + 1).max(MIN_TABLE_SLOTS)
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

    /// A map of at least `2^min_bits` shards (more when `expected` keys call for them, see
    /// [`KEYS_PER_SHARD`]), every shard pre-sized for its share of `expected` keys so that a
    /// bulk build does not grow tables.
    pub(crate) fn with_capacity(min_bits: u32, expected: usize) -> Self {
        let bits = shard_bits_for(expected, min_bits);
        let count = 1usize << bits;
        // Sized for the mean: the few shards that the binomial spread pushes past the maximum
        // load grow once, which is cheaper than sizing every shard for the worst.
        let slots = table_slots_for(expected.div_ceil(count), TARGET_LOAD);
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
        if (len + 1) * MAX_LOAD.1 > table.len() * MAX_LOAD.0 {
            let slots = table_slots_for(len + 1, TARGET_LOAD).max(table.len() * 3 / 2);
            *table = Self::rehash(table, slots);
        }
        let slots = Arc::make_mut(table);
        if let Err(i) = Self::probe(slots, key) {
            slots[i] = (key, value);
        }
        Arc::make_mut(&mut self.lens)[shard] += 1;
        self.len += 1;
        if self.bits < MAX_SHARD_BITS && self.len > RESHARD_FACTOR * (KEYS_PER_SHARD << self.bits) {
            self.reshard();
        }
    }

    /// Rebuilds the map with the shard count its size calls for (see [`RESHARD_FACTOR`]).
    fn reshard(&mut self) {
        let mut resharded = Self::with_capacity(self.bits, self.len);
        for shard in self.shards.iter() {
            for (key, value) in shard.iter().filter(|(k, _)| *k != EMPTY) {
                resharded.insert(*key, value.clone());
            }
        }
        *self = resharded;
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
        let len = slots.len();
        let mut hole = found;
        let mut next = found;
        loop {
            next = if next + 1 == len { 0 } else { next + 1 };
            if slots[next].0 == EMPTY {
                break;
            }
            let home = home_slot(slots[next].0, len);
            // The entry at `next` may fill the hole if the hole lies on its probe path.
            if forward_distance(home, next, len) >= forward_distance(hole, next, len) {
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

    /// xorshift64: a fixed, dependency-free pseudo-random sequence.
    fn next(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    /// Random inserts, updates and removals against a `BTreeMap`, through growth and backward
    /// shifts, for several shard counts and pre-sizings (tables of non-power-of-two lengths);
    /// every key of the space is checked after every 64 steps, and a clone taken midway must
    /// not see later writes (copy-on-write).
    #[test]
    fn sharded_map_matches_a_reference_map() {
        for (seed, bits, presized, key_space) in [
            (1u64, 0u32, 0usize, 64u64),
            (2, 2, 0, 512),
            (3, 2, 300, 512),
            (4, 4, 1000, 4096),
            (5, 0, 7, 24),
            // Grows through two re-shardings (1 -> 4 -> 16 shards).
            (6, 0, 0, 12_000),
        ] {
            let mut map: ShardedMap<u64> = ShardedMap::with_capacity(bits, presized);
            let mut model = std::collections::BTreeMap::new();
            let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ seed;
            let mut frozen = None;
            for step in 0..20_000u64 {
                let r = next(&mut state);
                let key = 1 + r % key_space;
                if r >> 60 < 6 {
                    assert_eq!(map.remove(key), model.remove(&key).is_some(), "step {step}");
                } else {
                    map.insert(key, step);
                    model.insert(key, step);
                }
                assert_eq!(map.len(), model.len(), "seed {seed} step {step}");
                if step.is_multiple_of(64) {
                    for key in 1..=key_space {
                        assert_eq!(map.get(key), model.get(&key), "seed {seed} step {step}");
                    }
                }
                if step == 10_000 {
                    frozen = Some((map.clone(), model.clone()));
                }
            }
            if key_space > 10_000 {
                assert!(map.bits >= 4, "re-sharded to {} bits", map.bits);
            }
            let (frozen_map, frozen_model) = frozen.expect("taken at step 10000");
            for key in 0..=key_space + 1 {
                assert_eq!(frozen_map.get(key), frozen_model.get(&key), "seed {seed}");
            }
            let mut listed: Vec<(u64, u64)> = map.iter().map(|(k, v)| (k, *v)).collect();
            listed.sort_unstable();
            assert_eq!(listed, model.into_iter().collect::<Vec<_>>(), "seed {seed}");
        }
    }

    /// Keys that all start their probe at the last two slots of one table: the run wraps
    /// around the end, and removals in every rotation must backward-shift across the wrap.
    #[test]
    fn colliding_keys_wrap_and_backward_shift() {
        let empty: ShardedMap<u64> = ShardedMap::with_capacity(0, 6);
        let slots = empty.shards[0].len();
        assert!(!slots.is_power_of_two(), "{slots} slots");
        let colliding: Vec<u64> = (1..)
            .filter(|&k| home_slot(k, slots) >= slots - 2)
            .take(5)
            .collect();
        for first_removed in 0..colliding.len() {
            let mut map = empty.clone();
            for &key in &colliding {
                map.insert(key, key * 10);
            }
            assert_eq!(map.shards[0].len(), slots, "no growth at 5 of {slots}");
            let mut present: Vec<u64> = colliding.clone();
            for i in 0..colliding.len() {
                let key = colliding[(first_removed + i * 2) % colliding.len()];
                if !present.contains(&key) {
                    continue;
                }
                assert!(map.remove(key));
                present.retain(|&k| k != key);
                for &k in &colliding {
                    let expected = present.contains(&k).then_some(k * 10);
                    assert_eq!(map.get(k).copied(), expected, "after removing {key}");
                }
            }
        }
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
