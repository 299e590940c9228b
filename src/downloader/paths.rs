//! The actor's path-to-job table: an open-addressing table keyed by a 128-bit keyed hash of
//! the path, so that finding the job of a status change never reads a stored key string.
//!
//! # Why a hash instead of the path
//!
//! The actor looks a path up once per status change, in whatever order the manager reports
//! them; with 100,000 paths in flight a map keyed by `String` pays a cache miss on the
//! bucket and another on the key's heap buffer for the comparison, and frees the key when
//! the entry goes. Here a bucket holds only [`PathKey`] (SipHash-1-3 with 128-bit output,
//! keyed with a random key per actor) and a small [`PathEntry`]: 32 bytes, two buckets per
//! cache line, no pointer to follow.
//!
//! Two different paths map to the same key with probability 2^-128 per pair (SipHash is a
//! keyed pseudo-random function and the key is secret and random), so with `n` paths mapped
//! at once the chance that any two collide is below `n² / 2^129`: about 10^-29 for 100,000
//! paths, far below the rate of undetected memory errors. A path string is therefore never
//! stored.

use std::hash::BuildHasher;

/// The 128-bit keyed hash of a path; never all zeroes (that marks an empty bucket).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct PathKey([u64; 2]);

/// Turns paths into [`PathKey`]s with one random SipHash key.
#[derive(Debug, Clone, Copy)]
pub(super) struct PathKeyer {
    k0: u64,
    k1: u64,
}

impl PathKeyer {
    /// A keyer with a fresh random key (from the standard library's hash seeds).
    pub(super) fn new() -> Self {
        let seeds = std::hash::RandomState::new();
        PathKeyer {
            k0: seeds.hash_one(0x6b65_795f_3030u64),
            k1: seeds.hash_one(0x6b65_795f_3031u64),
        }
    }

    /// The key of `path`.
    #[inline]
    pub(super) fn key(&self, path: &str) -> PathKey {
        let [a, b] = siphash128::<1, 3>(self.k0, self.k1, path.as_bytes());
        // Bit 0 of the first word is forced on so that no key is all zeroes; 127 bits stay.
        PathKey([a | 1, b])
    }
}

/// What the table maps a path to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct PathEntry {
    /// The job that registered the path.
    pub(super) job: u64,
    /// The run of that job (a late change for an earlier run never counts for a later one).
    pub(super) run: u64,
}

/// One bucket: the key (or [`EMPTY`] / [`DELETED`]) and the entry; 32 bytes.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
struct Bucket {
    key: [u64; 2],
    entry: PathEntry,
}

/// Two buckets in one cache line: buckets `2k` and `2k + 1` always share a line.
#[derive(Debug, Clone, Copy)]
#[repr(C, align(64))]
struct Line([Bucket; 2]);

/// The buckets, indexed by bucket number.
#[derive(Debug, Default)]
struct Buckets(Box<[Line]>);

impl Buckets {
    fn new(buckets: usize) -> Self {
        Buckets(vec![Line([EMPTY_BUCKET; 2]); buckets / 2].into_boxed_slice())
    }

    fn len(&self) -> usize {
        self.0.len() * 2
    }

    fn iter(&self) -> impl Iterator<Item = &Bucket> {
        self.0.iter().flat_map(|line| &line.0)
    }
}

impl std::ops::Index<usize> for Buckets {
    type Output = Bucket;

    #[inline]
    fn index(&self, i: usize) -> &Bucket {
        &self.0[i >> 1].0[i & 1]
    }
}

impl std::ops::IndexMut<usize> for Buckets {
    #[inline]
    fn index_mut(&mut self, i: usize) -> &mut Bucket {
        &mut self.0[i >> 1].0[i & 1]
    }
}

/// The key of a bucket never used since the last rehash: a probe stops here.
const EMPTY: [u64; 2] = [0, 0];
/// The key of a bucket whose entry was removed: a probe goes on past it. Both markers have
/// bit 0 of the first word clear, which no [`PathKey`] has.
const DELETED: [u64; 2] = [0, 1];

const EMPTY_BUCKET: Bucket = Bucket {
    key: EMPTY,
    entry: PathEntry { job: 0, run: 0 },
};

/// Smallest number of buckets once anything was inserted.
const MIN_BUCKETS: usize = 16;

/// Open addressing with linear probing; the home bucket is taken from the key's second
/// word. A removal leaves a tombstone ([`DELETED`]), so it costs one lookup and one store
/// (no shifting, whose loop branches unpredictably); the tombstone becomes [`EMPTY`] at once
/// when the next bucket is empty and on the same cache line. Used buckets (entries and
/// tombstones) stay at most 4/5 of the table (two buckets per line keep the probes of a
/// linear-probing table that full mostly within one line); reaching that rehashes into a
/// table sized for the live entries (at most half full): it grows, or stays or shrinks
/// when tombstones were most of it. Otherwise, like the standard `HashMap`, a table keeps
/// its size once grown.
#[derive(Debug, Default)]
pub(super) struct PathTable {
    buckets: Buckets,
    /// `buckets.len() - 1` (the length is a power of two), or 0 when there is none.
    mask: usize,
    /// Entries.
    len: usize,
    /// Entries and tombstones: the buckets that are not [`EMPTY`].
    used: usize,
}

impl PathTable {
    /// Paths mapped.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    #[inline]
    fn home(&self, key: PathKey) -> usize {
        (key.0[1] as usize) & self.mask
    }

    /// The bucket holding `key`, if any.
    #[inline]
    fn find(&self, key: PathKey) -> Option<usize> {
        if self.len == 0 {
            return None;
        }
        let mut i = self.home(key);
        loop {
            let bucket = &self.buckets[i];
            if bucket.key == key.0 {
                return Some(i);
            }
            if bucket.key == EMPTY {
                return None;
            }
            i = (i + 1) & self.mask;
        }
    }

    /// Asks the CPU to start loading the cache line of the home bucket of `key`, so that a
    /// lookup (or removal) a little later does not wait for memory.
    #[inline]
    pub(super) fn prefetch(&self, key: PathKey) {
        if self.len == 0 {
            return;
        }
        let bucket: *const Bucket = &self.buckets[self.home(key)];
        prefetch(bucket.cast());
    }

    /// The entry of `key`.
    #[inline]
    pub(super) fn get(&self, key: PathKey) -> Option<PathEntry> {
        self.find(key).map(|i| self.buckets[i].entry)
    }

    /// Maps `key` to `entry`; returns the entry it replaces.
    pub(super) fn insert(&mut self, key: PathKey, entry: PathEntry) -> Option<PathEntry> {
        debug_assert_eq!(key.0[0] & 1, 1, "not a PathKey");
        if (self.used + 1) * 5 > self.buckets.len() * 4 {
            self.rehash(((self.len + 1) * 2).next_power_of_two().max(MIN_BUCKETS));
        }
        let mut i = self.home(key);
        let mut free = None;
        loop {
            let bucket = &mut self.buckets[i];
            if bucket.key == key.0 {
                return Some(std::mem::replace(&mut bucket.entry, entry));
            }
            if bucket.key == DELETED {
                free.get_or_insert(i);
            } else if bucket.key == EMPTY {
                let slot = match free {
                    Some(tombstone) => tombstone,
                    None => {
                        self.used += 1;
                        i
                    }
                };
                self.buckets[slot] = Bucket { key: key.0, entry };
                self.len += 1;
                return None;
            }
            i = (i + 1) & self.mask;
        }
    }

    /// Unmaps `key`; returns its entry.
    #[inline]
    pub(super) fn remove(&mut self, key: PathKey) -> Option<PathEntry> {
        let i = self.find(key)?;
        let entry = self.buckets[i].entry;
        self.remove_at(i);
        Some(entry)
    }

    /// Empties bucket `i`: a tombstone, unless no probe can go past it because the next
    /// bucket is empty, which is only looked at when it is on the same cache line (`i` even:
    /// `i | 1` is the next bucket; `i` odd: `i | 1` is `i` itself, not empty). Written
    /// without a branch on it.
    #[inline]
    fn remove_at(&mut self, i: usize) {
        let next_empty = self.buckets[i | 1].key == EMPTY;
        self.buckets[i].key = if next_empty { EMPTY } else { DELETED };
        self.used -= usize::from(next_empty);
        self.len -= 1;
    }

    /// Keeps only the entries for which `keep` holds.
    pub(super) fn retain(&mut self, mut keep: impl FnMut(&PathEntry) -> bool) {
        for i in 0..self.buckets.len() {
            let bucket = &self.buckets[i];
            if bucket.key != EMPTY && bucket.key != DELETED && !keep(&bucket.entry) {
                self.remove_at(i);
            }
        }
    }

    /// Unmaps everything and frees the buckets.
    pub(super) fn clear(&mut self) {
        *self = PathTable::default();
    }

    /// Moves every entry into a new table of `buckets` buckets, without tombstones.
    fn rehash(&mut self, buckets: usize) {
        debug_assert!(buckets.is_power_of_two() && buckets >= self.len * 2);
        let old = std::mem::replace(&mut self.buckets, Buckets::new(buckets));
        self.mask = buckets - 1;
        self.used = self.len;
        for bucket in old.iter().filter(|b| b.key != EMPTY && b.key != DELETED) {
            let mut i = (bucket.key[1] as usize) & self.mask;
            while self.buckets[i].key != EMPTY {
                i = (i + 1) & self.mask;
            }
            self.buckets[i] = *bucket;
        }
    }
}

/// A hint to load the cache line at `p`; does nothing on other architectures.
#[inline(always)]
pub(super) fn prefetch(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: PREFETCHT0 is a hint: it never faults, whatever the address, and reads no
    // memory that Rust can observe. SSE, which provides it, is part of the x86_64 baseline.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// SipHash-C-D with 128-bit output (Aumasson and Bernstein; the `v1 ^= 0xee` variant of
/// the reference implementation), returning the two output words.
#[inline]
fn siphash128<const C: usize, const D: usize>(k0: u64, k1: u64, data: &[u8]) -> [u64; 2] {
    #[inline(always)]
    fn round(v: &mut [u64; 4]) {
        v[0] = v[0].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(13) ^ v[0];
        v[0] = v[0].rotate_left(32);
        v[2] = v[2].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(16) ^ v[2];
        v[0] = v[0].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(21) ^ v[0];
        v[2] = v[2].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(17) ^ v[2];
        v[2] = v[2].rotate_left(32);
    }
    let mut v = [
        k0 ^ 0x736f_6d65_7073_6575,
        k1 ^ 0x646f_7261_6e64_6f6d ^ 0xee,
        k0 ^ 0x6c79_6765_6e65_7261,
        k1 ^ 0x7465_6462_7974_6573,
    ];
    let mut chunks = data.chunks_exact(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let m = u64::from_le_bytes(word);
        v[3] ^= m;
        for _ in 0..C {
            round(&mut v);
        }
        v[0] ^= m;
    }
    let tail = chunks.remainder();
    // The last 0..=7 bytes, little-endian, without a variable-length copy.
    let mut last = 0u64;
    for (i, &byte) in tail.iter().enumerate() {
        last |= u64::from(byte) << (8 * i);
    }
    let m = last | ((data.len() as u64) << 56);
    v[3] ^= m;
    for _ in 0..C {
        round(&mut v);
    }
    v[0] ^= m;
    v[2] ^= 0xee;
    for _ in 0..D {
        round(&mut v);
    }
    let a = v[0] ^ v[1] ^ v[2] ^ v[3];
    v[1] ^= 0xdd;
    for _ in 0..D {
        round(&mut v);
    }
    [a, v[0] ^ v[1] ^ v[2] ^ v[3]]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `vectors_sip128` of the reference implementation (SipHash-2-4, key 00..0f, message
    /// 00..len-1), for some lengths.
    #[test]
    fn siphash_2_4_128_matches_the_reference_vectors() {
        let key: [u8; 16] = std::array::from_fn(|i| i as u8);
        let k0 = u64::from_le_bytes(key[..8].try_into().unwrap());
        let k1 = u64::from_le_bytes(key[8..].try_into().unwrap());
        let message: Vec<u8> = (0..64).collect();
        let vectors: [(usize, [u8; 16]); 6] = [
            (
                0,
                [
                    0xa3, 0x81, 0x7f, 0x04, 0xba, 0x25, 0xa8, 0xe6, 0x6d, 0xf6, 0x72, 0x14, 0xc7,
                    0x55, 0x02, 0x93,
                ],
            ),
            (
                1,
                [
                    0xda, 0x87, 0xc1, 0xd8, 0x6b, 0x99, 0xaf, 0x44, 0x34, 0x76, 0x59, 0x11, 0x9b,
                    0x22, 0xfc, 0x45,
                ],
            ),
            (
                7,
                [
                    0xa1, 0xf1, 0xeb, 0xbe, 0xd8, 0xdb, 0xc1, 0x53, 0xc0, 0xb8, 0x4a, 0xa6, 0x1f,
                    0xf0, 0x82, 0x39,
                ],
            ),
            (
                15,
                [
                    0x54, 0x93, 0xe9, 0x99, 0x33, 0xb0, 0xa8, 0x11, 0x7e, 0x08, 0xec, 0x0f, 0x97,
                    0xcf, 0xc3, 0xd9,
                ],
            ),
            (
                16,
                [
                    0x6e, 0xe2, 0xa4, 0xca, 0x67, 0xb0, 0x54, 0xbb, 0xfd, 0x33, 0x15, 0xbf, 0x85,
                    0x23, 0x05, 0x77,
                ],
            ),
            (
                63,
                [
                    0x51, 0x50, 0xd1, 0x77, 0x2f, 0x50, 0x83, 0x4a, 0x50, 0x3e, 0x06, 0x9a, 0x97,
                    0x3f, 0xbd, 0x7c,
                ],
            ),
        ];
        for (len, want) in vectors {
            let [a, b] = siphash128::<2, 4>(k0, k1, &message[..len]);
            let mut got = [0u8; 16];
            got[..8].copy_from_slice(&a.to_le_bytes());
            got[8..].copy_from_slice(&b.to_le_bytes());
            assert_eq!(got, want, "length {len}");
        }
    }

    #[test]
    fn keys_differ_between_keyers_and_paths() {
        let (a, b) = (PathKeyer::new(), PathKeyer::new());
        assert_eq!(a.key("/x/1"), a.key("/x/1"));
        assert_ne!(a.key("/x/1"), a.key("/x/2"));
        assert_ne!(a.key("/x/1"), b.key("/x/1"));
        assert_ne!(a.key("").0, [0, 0]);
    }

    fn entry(job: u64) -> PathEntry {
        PathEntry { job, run: job + 1 }
    }

    /// Random inserts and removals against a `HashMap`, through growth and shrinking, with
    /// keys whose home buckets collide on purpose (long probe runs that wrap around).
    #[test]
    fn table_matches_a_hash_map() {
        let mut rng = fastrand::Rng::with_seed(7);
        let mut table = PathTable::default();
        let mut model = std::collections::HashMap::new();
        for round in 0..3 {
            for _ in 0..20_000 {
                let n = rng.u64(0..3_000);
                // Only 64 distinct home values: long runs; `| 1` as `PathKeyer` does.
                let key = PathKey([n * 2 + 1, (n % 64).wrapping_mul(0x9e37_79b9_7f4a_7c15)]);
                if rng.u8(0..3) == 0 {
                    assert_eq!(table.remove(key), model.remove(&key));
                } else {
                    assert_eq!(table.insert(key, entry(n)), model.insert(key, entry(n)));
                }
                assert_eq!(table.len(), model.len());
            }
            for (&key, &value) in &model {
                assert_eq!(table.get(key), Some(value));
            }
            if round == 1 {
                table.retain(|e| e.job % 2 == 0);
                model.retain(|_, e| e.job % 2 == 0);
                assert_eq!(table.len(), model.len());
            }
        }
        let keys: Vec<PathKey> = model.keys().copied().collect();
        for key in keys {
            assert_eq!(table.remove(key), model.remove(&key));
            assert_eq!(table.get(key), None);
        }
        assert_eq!(table.len(), 0);
        // Reused after draining: tombstones are replaced or purged by a rehash.
        for n in 0..10_000u64 {
            let key = PathKey([n * 2 + 1, n.wrapping_mul(0x9e37_79b9_7f4a_7c15)]);
            assert_eq!(table.insert(key, entry(n)), None);
            assert_eq!(table.get(key), Some(entry(n)));
        }
        assert_eq!(table.len(), 10_000);
        assert!(table.used < table.buckets.len());
        table.clear();
        assert_eq!(table.get(PathKey([1, 1])), None);
    }
}
