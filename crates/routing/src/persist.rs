//! Structurally shared containers: cloning one is a handful of reference-count increments, and
//! changing one entry copies only the shard or chunk that holds it.

use std::sync::Arc;

use rustc_hash::FxHashMap;

/// Multiplier spreading `u64` keys over shards (2^64 / φ). Phone-number keys are dense decimal
/// integers; without mixing, neighbouring numbers would crowd one shard.
const SHARD_MIX: u64 = 0x9E37_79B9_7F4A_7C15;

/// A `u64`-keyed map split into `2^bits` shards, each an `Arc<FxHashMap>`.
///
/// A lookup is one multiply, one array index and one hash probe. A write clones the shard it
/// touches if another snapshot still shares it (copy-on-write via `Arc::make_mut`).
#[derive(Debug, Clone)]
pub(crate) struct ShardedMap<V> {
    shards: Arc<Vec<Arc<FxHashMap<u64, V>>>>,
    bits: u32,
    len: usize,
}

impl<V: Clone> ShardedMap<V> {
    /// An empty map of `2^bits` shards, all sharing one empty table until written.
    pub(crate) fn new(bits: u32) -> Self {
        let empty = Arc::new(FxHashMap::default());
        Self {
            shards: Arc::new(vec![empty; 1 << bits]),
            bits,
            len: 0,
        }
    }

    /// Like [`ShardedMap::new`] with every shard pre-sized for `expected` keys in total, so a
    /// bulk build does not rehash.
    pub(crate) fn with_capacity(bits: u32, expected: usize) -> Self {
        let count = 1usize << bits;
        // Keys spread binomially: allow ~4 standard deviations above the mean per shard.
        let mean = expected / count;
        let per_shard = mean + 4 * (mean as f64).sqrt() as usize + 1;
        let shards = (0..count)
            .map(|_| {
                Arc::new(FxHashMap::with_capacity_and_hasher(
                    if expected == 0 { 0 } else { per_shard },
                    Default::default(),
                ))
            })
            .collect();
        Self {
            shards: Arc::new(shards),
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
    pub(crate) fn get(&self, key: u64) -> Option<&V> {
        self.shards[self.shard_index(key)].get(&key)
    }

    pub(crate) fn insert(&mut self, key: u64, value: V) -> Option<V> {
        let index = self.shard_index(key);
        let shard = Arc::make_mut(&mut Arc::make_mut(&mut self.shards)[index]);
        let previous = shard.insert(key, value);
        if previous.is_none() {
            self.len += 1;
        }
        previous
    }

    pub(crate) fn remove(&mut self, key: u64) -> Option<V> {
        let index = self.shard_index(key);
        if !self.shards[index].contains_key(&key) {
            return None;
        }
        let shard = Arc::make_mut(&mut Arc::make_mut(&mut self.shards)[index]);
        let removed = shard.remove(&key);
        if removed.is_some() {
            self.len -= 1;
        }
        removed
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn bits(&self) -> u32 {
        self.bits
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (u64, &V)> + '_ {
        self.shards
            .iter()
            .flat_map(|shard| shard.iter().map(|(&k, v)| (k, v)))
    }
}

/// Entries per [`Slab`] chunk: small enough that copying a chunk on write is trivial, large
/// enough that the chunk list of 10 000 deployments is ~160 pointers.
const SLAB_CHUNK: usize = 64;

/// One copy-on-write chunk of a [`Slab`].
type Chunk<T> = Arc<Vec<Option<Arc<T>>>>;

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
            chunks.push(Arc::new((0..SLAB_CHUNK).map(|_| None).collect()));
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
        for k in 0..1000u64 {
            a.insert(k, k as u32);
        }
        let mut b = a.clone();
        b.insert(5, 99);
        assert_eq!(a.get(5), Some(&5));
        assert_eq!(b.get(5), Some(&99));
        let shared = a
            .shards
            .iter()
            .zip(b.shards.iter())
            .filter(|(x, y)| Arc::ptr_eq(x, y))
            .count();
        assert_eq!(shared, 15, "only the shard holding key 5 was copied");
        assert_eq!(b.remove(5), Some(99));
        assert_eq!(b.remove(5), None);
        assert_eq!((a.len(), b.len()), (1000, 999));
        assert_eq!(b.iter().count(), 999);
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
