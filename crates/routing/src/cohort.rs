//! Compact cohort rows: one deployment's callers and their variables.
//!
//! A row is not a `CohortMember` (two `String`s, a `BTreeMap` and an `Arc`, ~1.4 KB with three
//! variables) but a 16-byte slot in an open-addressing table (caller number as an integer →
//! offset) and a few dozen bytes in its shard's arena: the user id, the overrides and each
//! variable as (interned name id, value). A [`CohortRow`] decodes a row into a `CohortMember`
//! only when a routed call asks for it, so a lookup allocates nothing.
//!
//! Shards are copy-on-write like the number table's: an upload batch copies only the shards it
//! touches. An upsert appends the new row to the arena; the shard compacts once half of its
//! arena is replaced rows.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, OnceLock};

use crate::model::{AppOverrides, CohortMember};
use crate::number::E164;
use crate::persist::probe;

/// Target rows per shard: a shard (table + arena) stays around 64 KiB, cheap to copy when an
/// upload batch touches it.
const ROWS_PER_SHARD: usize = 1024;
/// 2^16 shards hold 64M rows at the target size; beyond, shards just grow.
const MAX_SHARD_BITS: u32 = 16;
/// Reshard only once the table holds this many times its target, so growth is amortised O(1).
const RESHARD_FACTOR: usize = 4;
/// Grow a shard's slot table beyond 5/8 full (linear probing stays under two probes a hit).
const MAX_LOAD_NUMERATOR: usize = 5;
const MAX_LOAD_DENOMINATOR: usize = 8;
/// Key 0 marks an empty slot: E.164 keys have at least 7 digits, never 0.
const EMPTY: u64 = 0;
const SHARD_MIX: u64 = 0x9E37_79B9_7F4A_7C15;

/// Variable names of one cohort, interned: each row stores a small id instead of the name.
/// Append-only, so an id stays valid in every shard that was written with an older table.
#[derive(Debug, Clone, Default)]
pub(crate) struct VariableNames {
    names: Vec<Arc<str>>,
    ids: HashMap<Arc<str>, u32>,
}

impl VariableNames {
    fn intern(self: &mut Arc<Self>, name: &str) -> u32 {
        if let Some(&id) = self.ids.get(name) {
            return id;
        }
        let names = Arc::make_mut(self);
        let id = names.names.len() as u32;
        let name: Arc<str> = Arc::from(name);
        names.names.push(Arc::clone(&name));
        names.ids.insert(name, id);
        id
    }
}

/// One copy-on-write shard: slots and the arena their offsets point into.
#[derive(Clone)]
pub(crate) struct CohortShard {
    /// (caller key, arena offset); power-of-two length, or empty.
    slots: Box<[(u64, u32)]>,
    len: usize,
    arena: Vec<u8>,
    /// Arena bytes of rows that were replaced since the last compaction.
    dead: usize,
    /// The names table as of this shard's last write (a superset of what its rows use).
    names: Arc<VariableNames>,
}

impl fmt::Debug for CohortShard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CohortShard")
            .field("rows", &self.len)
            .field("arena_bytes", &self.arena.len())
            .finish_non_exhaustive()
    }
}

fn slots_for(rows: usize) -> usize {
    (rows * MAX_LOAD_DENOMINATOR / MAX_LOAD_NUMERATOR + 1)
        .next_power_of_two()
        .max(8)
}

impl CohortShard {
    fn new(names: Arc<VariableNames>, rows: usize) -> Self {
        Self {
            slots: vec![(EMPTY, 0); if rows == 0 { 0 } else { slots_for(rows) }].into(),
            len: 0,
            arena: Vec::new(),
            dead: 0,
            names,
        }
    }

    #[inline]
    fn find(&self, key: u64) -> Option<u32> {
        if self.slots.is_empty() || key == EMPTY {
            return None;
        }
        probe(&self.slots, key)
            .ok()
            .map(|index| self.slots[index].1)
    }

    /// Appends `row` (already encoded) for `key`, replacing an older row for the same key.
    fn upsert(&mut self, key: u64, row: &[u8]) {
        if (self.len + 1) * MAX_LOAD_DENOMINATOR > self.slots.len() * MAX_LOAD_NUMERATOR {
            self.grow_slots(slots_for(self.len + 1).max(self.slots.len() * 2));
        }
        let offset = self.arena.len() as u32;
        self.arena.extend_from_slice(row);
        match probe(&self.slots, key) {
            Ok(index) => {
                let old = self.slots[index].1;
                self.dead += row_len(&self.arena[old as usize..]);
                self.slots[index].1 = offset;
            }
            Err(index) => {
                self.slots[index] = (key, offset);
                self.len += 1;
            }
        }
        if self.dead > self.arena.len() / 2 {
            self.compact();
        }
    }

    fn grow_slots(&mut self, slots: usize) {
        let mut grown = vec![(EMPTY, 0u32); slots].into_boxed_slice();
        for &(key, offset) in self.slots.iter().filter(|(k, _)| *k != EMPTY) {
            if let Err(index) = probe(&grown, key) {
                grown[index] = (key, offset);
            }
        }
        self.slots = grown;
    }

    /// Rewrites the arena with only the live rows.
    fn compact(&mut self) {
        let mut arena = Vec::with_capacity(self.arena.len() - self.dead);
        for slot in self.slots.iter_mut().filter(|(k, _)| *k != EMPTY) {
            let row = &self.arena[slot.1 as usize..];
            let len = row_len(row);
            slot.1 = arena.len() as u32;
            arena.extend_from_slice(&row[..len]);
        }
        self.arena = arena;
        self.dead = 0;
    }

    fn rows(&self) -> impl Iterator<Item = (u64, &[u8])> + '_ {
        self.slots
            .iter()
            .filter(|(k, _)| *k != EMPTY)
            .map(|&(k, offset)| {
                let row = &self.arena[offset as usize..];
                (k, &row[..row_len(row)])
            })
    }
}

/// One deployment's cohort: caller key → row, in `2^bits` copy-on-write shards.
#[derive(Debug, Clone)]
pub(crate) struct CohortTable {
    shards: Arc<[Arc<CohortShard>]>,
    bits: u32,
    len: usize,
    names: Arc<VariableNames>,
}

impl Default for CohortTable {
    fn default() -> Self {
        Self::with_bits(0, 0, Arc::default())
    }
}

impl CohortTable {
    fn with_bits(bits: u32, expected: usize, names: Arc<VariableNames>) -> Self {
        let per_shard = expected >> bits;
        let shards = (0..1usize << bits)
            .map(|_| Arc::new(CohortShard::new(Arc::clone(&names), per_shard)))
            .collect();
        Self {
            shards,
            bits,
            len: 0,
            names,
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

    /// The row of caller `key`, ready to hand to a route (one reference count).
    #[inline]
    pub(crate) fn get(&self, key: u64) -> Option<CohortRow> {
        let shard = &self.shards[self.shard_index(key)];
        let offset = shard.find(key)?;
        Some(CohortRow {
            shard: Arc::clone(shard),
            key,
            offset,
            decoded: OnceLock::new(),
        })
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Stores rows for already normalised caller keys; for one key the last row wins. Grows
    /// the shard count first when the table would exceed its target size.
    pub(crate) fn upsert(&mut self, rows: Vec<(u64, CohortMember)>) {
        let target = (1usize << self.bits) * ROWS_PER_SHARD * RESHARD_FACTOR;
        if self.len + rows.len() > target && self.bits < MAX_SHARD_BITS {
            *self = self.resharded(self.len + rows.len());
        }
        let mut encoded = Vec::with_capacity(128);
        for (key, member) in rows {
            encoded.clear();
            encode(&member, &mut self.names, &mut encoded);
            let index = self.shard_index(key);
            let shard = Arc::make_mut(&mut Arc::make_mut(&mut self.shards)[index]);
            let before = shard.len;
            if !Arc::ptr_eq(&shard.names, &self.names) {
                shard.names = Arc::clone(&self.names);
            }
            shard.upsert(key, &encoded);
            self.len += shard.len - before;
        }
    }

    fn resharded(&self, expected: usize) -> Self {
        let wanted = (expected / ROWS_PER_SHARD).max(1).next_power_of_two();
        let bits = wanted.trailing_zeros().min(MAX_SHARD_BITS);
        let mut next = Self::with_bits(bits, expected, Arc::clone(&self.names));
        for shard in self.shards.iter() {
            for (key, row) in shard.rows() {
                let index = next.shard_index(key);
                let target = Arc::make_mut(&mut Arc::make_mut(&mut next.shards)[index]);
                target.upsert(key, row);
                next.len += 1;
            }
        }
        next
    }
}

/// A caller's row as a route holds it: its shard (kept alive) and offset. Decoded into a
/// [`CohortMember`] the first time it is asked for, then kept.
#[derive(Clone)]
pub(crate) struct CohortRow {
    shard: Arc<CohortShard>,
    key: u64,
    offset: u32,
    decoded: OnceLock<Arc<CohortMember>>,
}

impl CohortRow {
    pub(crate) fn member(&self) -> &Arc<CohortMember> {
        self.decoded.get_or_init(|| {
            Arc::new(decode(
                self.key,
                &self.shard.arena[self.offset as usize..],
                &self.shard.names,
            ))
        })
    }
}

impl fmt::Debug for CohortRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.member().fmt(f)
    }
}

// Row encoding: user id, override mask and the present overrides, variable count, then per
// variable its name id and value. Lengths and ids are LEB128 varints (one byte below 128).

fn put_varint(out: &mut Vec<u8>, mut value: usize) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn put_str(out: &mut Vec<u8>, text: &str) {
    put_varint(out, text.len());
    out.extend_from_slice(text.as_bytes());
}

/// Reads rows this module wrote; a cursor over one row.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> usize {
        let mut value = 0usize;
        let mut shift = 0;
        while let Some(&byte) = self.bytes.get(self.at) {
            self.at += 1;
            value |= usize::from(byte & 0x7F) << shift;
            if byte & 0x80 == 0 {
                break;
            }
            shift += 7;
        }
        value
    }

    fn str(&mut self) -> &'a str {
        let len = self.varint();
        let end = (self.at + len).min(self.bytes.len());
        let text = std::str::from_utf8(&self.bytes[self.at..end]).unwrap_or_default();
        self.at = end;
        text
    }
}

fn override_fields(o: &AppOverrides) -> [&Option<String>; 3] {
    [
        &o.initial_bot_message,
        &o.initial_state_name,
        &o.initial_language_name,
    ]
}

fn encode(member: &CohortMember, names: &mut Arc<VariableNames>, out: &mut Vec<u8>) {
    put_str(out, &member.user_identifier);
    let fields = override_fields(&member.app_overrides);
    let mask = fields
        .iter()
        .enumerate()
        .filter(|(_, v)| v.is_some())
        .fold(0u8, |mask, (bit, _)| mask | 1 << bit);
    out.push(mask);
    for value in fields.into_iter().flatten() {
        put_str(out, value);
    }
    put_varint(out, member.app_variables.len());
    for (name, value) in &member.app_variables {
        put_varint(out, names.intern(name) as usize);
        put_str(out, value);
    }
}

/// Length of the encoded row at the start of `bytes`.
fn row_len(bytes: &[u8]) -> usize {
    let mut reader = Reader { bytes, at: 0 };
    reader.str();
    let mask = reader.bytes.get(reader.at).copied().unwrap_or(0);
    reader.at += 1;
    for _ in 0..mask.count_ones() {
        reader.str();
    }
    for _ in 0..reader.varint() {
        reader.varint();
        reader.str();
    }
    reader.at
}

fn decode(key: u64, bytes: &[u8], names: &VariableNames) -> CohortMember {
    let mut reader = Reader { bytes, at: 0 };
    let user_identifier = reader.str().to_string();
    let mask = reader.bytes.get(reader.at).copied().unwrap_or(0);
    reader.at += 1;
    let mut overrides = AppOverrides::default();
    let fields = [
        &mut overrides.initial_bot_message,
        &mut overrides.initial_state_name,
        &mut overrides.initial_language_name,
    ];
    for (bit, field) in fields.into_iter().enumerate() {
        if mask & (1 << bit) != 0 {
            *field = Some(reader.str().to_string());
        }
    }
    let count = reader.varint();
    let mut app_variables = BTreeMap::new();
    for _ in 0..count {
        let id = reader.varint();
        let value = reader.str().to_string();
        if let Some(name) = names.names.get(id) {
            app_variables.insert(name.to_string(), value);
        }
    }
    CohortMember {
        phone_number: E164::from_key(key).map_or_else(String::new, |n| n.as_str().to_string()),
        user_identifier,
        app_variables,
        app_overrides: overrides,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(number: &str, user: &str, vars: &[(&str, &str)]) -> CohortMember {
        CohortMember {
            phone_number: number.into(),
            user_identifier: user.into(),
            app_variables: vars
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            app_overrides: AppOverrides {
                initial_state_name: Some(format!("state of {user}")),
                ..AppOverrides::default()
            },
        }
    }

    /// Rows round-trip through the encoding, the last row per caller wins, replaced rows are
    /// compacted away, and growth reshards without losing a row.
    #[test]
    fn rows_round_trip_through_upserts_compaction_and_resharding() {
        let mut table = CohortTable::default();
        let mut expected = HashMap::new();
        for round in 0..6u64 {
            let rows: Vec<(u64, CohortMember)> = (0..3000u64)
                .map(|i| {
                    let key = 919_800_000_000 + (i * 7 + round * 1000) % 9000;
                    let long = "é".repeat((i % 90) as usize);
                    let m = member(
                        &format!("+{key}"),
                        &format!("u-{round}-{i}"),
                        &[("name", &long), ("round", &round.to_string())],
                    );
                    (key, m)
                })
                .collect();
            for (key, m) in &rows {
                expected.insert(*key, m.clone());
            }
            table.upsert(rows);
            assert_eq!(table.len(), expected.len());
        }
        assert!(table.bits > 0, "9000 rows outgrew one shard");
        for (key, want) in &expected {
            let row = table.get(*key).expect("row present");
            assert_eq!(**row.member(), *want);
        }
        assert!(table.get(14_155_550_100).is_none());
        let arena: usize = table.shards.iter().map(|s| s.arena.len()).sum();
        let live: usize = table
            .shards
            .iter()
            .flat_map(|s| s.rows())
            .map(|(_, r)| r.len())
            .sum();
        assert!(
            arena <= 2 * live + 1,
            "dead rows compacted: {arena} vs {live}"
        );
    }

    #[test]
    fn a_shared_shard_is_copied_on_write() {
        let mut a = CohortTable::default();
        a.upsert(vec![(919_800_000_001, member("+919800000001", "a", &[]))]);
        let mut b = a.clone();
        b.upsert(vec![(919_800_000_001, member("+919800000001", "b", &[]))]);
        let user = |t: &CohortTable| {
            t.get(919_800_000_001)
                .map(|r| r.member().user_identifier.clone())
        };
        assert_eq!(user(&a).as_deref(), Some("a"));
        assert_eq!(user(&b).as_deref(), Some("b"));
    }
}
