//! The LZW codeword dictionary of the paper's Algorithm 1, built as a trie.
//!
//! Every codeword is a node: the single tokens are nodes `0..vocab` (node id = token id), and
//! each multi-token codeword is appended when first inserted, so **node id order is insertion
//! order**. That is what makes the reference's stable sort reproducible from the trie alone:
//! sorting by (count descending, node id ascending) is exactly Python's
//! `sorted(counts.items(), key=..., reverse=True)` over an insertion-ordered dict.
//!
//! A node is (parent, last token, count); children are found through one open-addressing table
//! of (parent, token) -> child edges, placed by a hash of the child's token sequence so the walk
//! can prefetch its path (see `ChildTable`). The scan walks the trie while tokens stream in, so
//! no sequence is ever sliced or copied.

use crate::formats::profile::Codewords;
pub use crate::formats::profile::{LzwVariant, NO_PARENT};
use crate::util::error::{Error, Result};

/// How many trie levels ahead of the walk [`ChildTable::prefetch`] reads. Phrases of Zipfian
/// text are a few tokens long, so this covers the whole walk of most phrases.
const PREFETCH_DEPTH: usize = 3;

/// Count updates are queued and applied in batches of this many (see [`LzwDictionary::flush`]).
const PENDING_MAX: usize = 256;
/// Marks a queued count update as a reset to 1 (otherwise it adds 1).
const RESET: u64 = 1 << 32;

// The content hash of a codeword: a hash of its token sequence, built one token at a time
// (the folded 128-bit product mixes every input bit into every output bit).
const K1: u64 = 0x9E37_79B9_7F4A_7C15;
const K2: u64 = 0xD6E8_FEB8_6659_FD93;

#[inline(always)]
fn fold_mul(a: u64, b: u64) -> u64 {
    let m = a as u128 * b as u128;
    (m as u64) ^ ((m >> 64) as u64)
}

/// Content hash of the single-token codeword (t).
#[inline(always)]
fn root_hash(t: u32) -> u64 {
    fold_mul(t as u64 ^ K2, K1)
}

/// Content hash of a codeword extended by token t.
#[inline(always)]
fn step_hash(h: u64, t: u32) -> u64 {
    fold_mul(h ^ t as u64, K2)
}

#[inline(always)]
fn prefetch_read<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint; it never faults, whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch(p as *const i8, std::arch::x86_64::_MM_HINT_T0);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// One trie edge: (parent, token) -> child, with the top 32 bits of the child's content hash
/// (to move the edge when the table grows). An empty slot has parent `NO_PARENT`.
#[derive(Clone, Copy)]
#[repr(C, align(16))]
struct Slot {
    parent: u32,
    token: u32,
    child: u32,
    hash: u32,
}

const EMPTY: Slot = Slot {
    parent: NO_PARENT,
    token: 0,
    child: 0,
    hash: 0,
};

/// The trie's edges in one open-addressing table (linear probing, 16-byte slots).
///
/// An edge's slot is chosen by the content hash of the *child's token sequence*, not by the
/// parent's node id: the slots a phrase will visit are known from the tokens alone, before the
/// walk reaches them, so the walk prefetches them and their cache misses overlap instead of
/// following one another (a plain (parent, token) key makes each lookup wait for the previous
/// one). Lookups still compare (parent, token), so a hash collision can never merge two
/// codewords. The home slot is the hash's top bits; growing keeps that order, so rehashing
/// streams through both tables.
#[derive(Clone)]
struct ChildTable {
    slots: Vec<Slot>,
    bits: u32,
    len: usize,
}

impl ChildTable {
    const MIN_BITS: u32 = 16;

    fn with_capacity(edges: usize) -> Self {
        let mut bits = Self::MIN_BITS;
        while bits < 32 && Self::max_len(bits) < edges {
            bits += 1;
        }
        ChildTable {
            slots: vec![EMPTY; 1usize << bits],
            bits,
            len: 0,
        }
    }

    /// Load factor at most 3/4.
    fn max_len(bits: u32) -> usize {
        (1usize << bits) / 4 * 3
    }

    #[inline(always)]
    fn home(&self, hash32: u32) -> usize {
        (hash32 >> (32 - self.bits)) as usize
    }

    #[inline(always)]
    fn mask(&self) -> usize {
        self.slots.len() - 1
    }

    #[inline(always)]
    fn prefetch(&self, h: u64) {
        let i = self.home((h >> 32) as u32);
        prefetch_read(self.slots[i..].as_ptr());
    }

    /// The child of `parent` by `token` (whose content hash is `h`), or the free slot where
    /// that edge belongs.
    #[inline(always)]
    fn find(&self, h: u64, parent: u32, token: u32) -> std::result::Result<u32, usize> {
        let mask = self.mask();
        let mut i = self.home((h >> 32) as u32);
        loop {
            let s = self.slots[i];
            if s.parent == parent && s.token == token {
                return Ok(s.child);
            }
            if s.parent == NO_PARENT {
                return Err(i);
            }
            i = (i + 1) & mask;
        }
    }

    /// Put an edge into the free slot `at` that [`find`](Self::find) returned for it.
    #[inline]
    fn insert_at(&mut self, at: usize, h: u64, parent: u32, token: u32, child: u32) {
        debug_assert_eq!(self.slots[at].parent, NO_PARENT);
        self.slots[at] = Slot {
            parent,
            token,
            child,
            hash: (h >> 32) as u32,
        };
        self.len += 1;
        // At 2^32 slots the table stops growing; it still always has a free slot, since there
        // are fewer than 2^32 codewords.
        if self.len > Self::max_len(self.bits) && self.bits < 32 {
            self.grow();
        }
    }

    #[cold]
    fn grow(&mut self) {
        let mut bigger = ChildTable {
            slots: vec![EMPTY; self.slots.len() * 2],
            bits: self.bits + 1,
            len: self.len,
        };
        let mask = bigger.mask();
        // Old slots in order have ascending homes, so the writes are nearly sequential.
        for s in self.slots.iter().filter(|s| s.parent != NO_PARENT) {
            let mut i = bigger.home(s.hash);
            while bigger.slots[i].parent != NO_PARENT {
                i = (i + 1) & mask;
            }
            bigger.slots[i] = *s;
        }
        *self = bigger;
    }
}

/// The codeword dictionary with its counts, plus scan statistics.
#[derive(Clone)]
pub struct LzwDictionary {
    vocab: u32,
    variant: LzwVariant,
    parent: Vec<u32>,
    token: Vec<u32>,
    count: Vec<u64>,
    children: ChildTable,
    phrases: u64,
    phrase_tokens: u64,
    /// Queued count updates: a codeword id, `| RESET` for a reset to 1.
    pending: Vec<u64>,
}

/// A token id at or above the vocabulary size, found while scanning one sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenOutOfRange {
    pub position: usize,
    pub token: u32,
}

impl LzwDictionary {
    /// A dictionary holding the `vocab` single-token codewords with count 0.
    pub fn new(vocab: u32, variant: LzwVariant) -> Result<Self> {
        if vocab == 0 || vocab == NO_PARENT {
            return Err(Error::input(format!(
                "vocabulary size {vocab} is out of range"
            )));
        }
        Ok(LzwDictionary {
            vocab,
            variant,
            parent: vec![NO_PARENT; vocab as usize],
            token: (0..vocab).collect(),
            count: vec![0; vocab as usize],
            children: ChildTable::with_capacity(0),
            phrases: 0,
            phrase_tokens: 0,
            pending: Vec::new(),
        })
    }

    pub fn vocab(&self) -> u32 {
        self.vocab
    }
    pub fn variant(&self) -> LzwVariant {
        self.variant
    }
    /// Number of codewords, single tokens included.
    pub fn len(&self) -> usize {
        self.count.len()
    }
    pub fn is_empty(&self) -> bool {
        self.count.is_empty()
    }
    pub fn parents(&self) -> &[u32] {
        &self.parent
    }
    pub fn tokens(&self) -> &[u32] {
        &self.token
    }
    pub fn counts(&self) -> &[u64] {
        &self.count
    }
    /// Phrases the scan cut the corpus into.
    pub fn phrases(&self) -> u64 {
        self.phrases
    }
    /// Tokens covered by those phrases (a trailing single token of a sequence is in none).
    pub fn phrase_tokens(&self) -> u64 {
        self.phrase_tokens
    }

    /// Bytes the dictionary holds now: its codeword columns and its edge table, as allocated.
    pub fn memory_bytes(&self) -> u64 {
        let columns = self.parent.capacity() * 4 + self.token.capacity() * 4;
        let counts = self.count.capacity() * 8 + self.pending.capacity() * 8;
        (columns + counts + self.children.slots.len() * std::mem::size_of::<Slot>()) as u64
    }

    /// The most the dictionary can hold while it grows next: the edge table doubles (the old
    /// and the new table live together while the edges move) and the columns may double
    /// their capacity. What a memory limit must leave room for.
    pub fn next_peak_bytes(&self) -> u64 {
        let slots = (self.children.slots.len() * std::mem::size_of::<Slot>()) as u64;
        let columns = (self.parent.capacity() * 4 + self.token.capacity() * 4) as u64
            + (self.count.capacity() * 8) as u64;
        self.memory_bytes() + 2 * slots + columns
    }

    /// Add 1 to a codeword's count (queued).
    #[inline(always)]
    fn bump(&mut self, id: u32) {
        self.queue(id as u64);
    }

    /// Reset a codeword's count to 1 (queued).
    #[inline(always)]
    fn reset(&mut self, id: u32) {
        self.queue(id as u64 | RESET);
    }

    #[inline(always)]
    fn queue(&mut self, op: u64) {
        self.pending.push(op);
        if self.pending.len() >= PENDING_MAX {
            self.flush();
        }
    }

    /// Apply the queued count updates, in order. The scan never reads a count, so queueing
    /// changes nothing but speed: a count is a random access into a large array, and applied
    /// one by one each would stall the walk; in a batch the misses overlap (all prefetched
    /// first). `scan` flushes before it returns, so counts are always up to date outside it.
    fn flush(&mut self) {
        for &op in &self.pending {
            prefetch_read(self.count[op as u32 as usize..].as_ptr());
        }
        for &op in &self.pending {
            let c = &mut self.count[op as u32 as usize];
            *c = if op & RESET != 0 { 1 } else { *c + 1 };
        }
        self.pending.clear();
    }

    /// Append codeword (parent, token) with its content hash `h` at the free slot `at`.
    #[inline]
    fn insert(&mut self, at: usize, h: u64, parent: u32, token: u32, count: u64) -> Result<()> {
        let id = self.count.len();
        if id >= NO_PARENT as usize {
            return Err(Error::input(
                "the LZW dictionary outgrew 2^32 - 1 codewords; profile a smaller sample (--max-tokens)",
            ));
        }
        self.parent.push(parent);
        self.token.push(token);
        self.count.push(count);
        self.children.insert_at(at, h, parent, token, id as u32);
        Ok(())
    }

    /// Prefetch the slots of the codewords toks[start..=k] for k in `from..to` (clamped to
    /// the sequence), `h` being the content hash of toks[start..from]. Returns the hash of
    /// the last prefix prefetched and the index after it.
    #[inline(always)]
    fn prefetch_path(&self, toks: &[u32], mut h: u64, from: usize, to: usize) -> (u64, usize) {
        let to = to.min(toks.len());
        for &t in toks.get(from..to).unwrap_or(&[]) {
            h = step_hash(h, t);
            self.children.prefetch(h);
        }
        (h, to.max(from))
    }

    /// Scan one sequence, updating the dictionary. The sequence must be checked first: a token
    /// id at or above the vocabulary is reported, and the dictionary is left untouched.
    pub fn scan(&mut self, toks: &[u32]) -> Result<(), ScanError> {
        if let Some(position) = toks.iter().position(|&t| t >= self.vocab) {
            return Err(ScanError::OutOfRange(TokenOutOfRange {
                position,
                token: toks[position],
            }));
        }
        let scanned = match self.variant {
            LzwVariant::Reference => self.scan_reference(toks),
            LzwVariant::Textbook => self.scan_textbook(toks),
        };
        self.flush();
        scanned.map_err(ScanError::Full)
    }

    fn scan_reference(&mut self, toks: &[u32]) -> Result<()> {
        // Reference: last = 0, cur = 1; while cur < n: extend toks[last:cur] while it is a
        // codeword and cur < n; count the longest match; set the match plus the breaking token
        // to 1; last = cur; cur += 1. Below, `node` is toks[last..j] and toks[j] the breaking
        // token, i.e. the reference's cur is j + 1. The reference never tests whether the
        // extension by the sequence's last token is a codeword: it assigns 1 to it either way.
        let n = toks.len();
        let mut last = 0;
        while last + 1 < n {
            let mut node = toks[last];
            let mut h = root_hash(node);
            // `ahead` is the content hash of toks[last..ahead_end]: the walk keeps
            // PREFETCH_DEPTH levels of prefetches in flight ahead of itself.
            let (mut ahead, mut ahead_end) =
                self.prefetch_path(toks, h, last + 1, last + 1 + PREFETCH_DEPTH);
            let mut j = last + 1;
            let mut free = None;
            while j + 1 < n {
                let hj = step_hash(h, toks[j]);
                match self.children.find(hj, node, toks[j]) {
                    Ok(c) => {
                        node = c;
                        h = hj;
                        j += 1;
                        (ahead, ahead_end) =
                            self.prefetch_path(toks, ahead, ahead_end, ahead_end + 1);
                    }
                    Err(at) => {
                        free = Some((at, hj));
                        break;
                    }
                }
            }
            self.bump(node);
            // The loop broke on a missing child, or the scan reached the sequence's last
            // token, whose extension is looked up here.
            let free = match free {
                Some(f) => Some(f),
                None => {
                    let hj = step_hash(h, toks[j]);
                    match self.children.find(hj, node, toks[j]) {
                        Ok(existing) => {
                            self.reset(existing);
                            None
                        }
                        Err(at) => Some((at, hj)),
                    }
                }
            };
            if let Some((at, hj)) = free {
                self.insert(at, hj, node, toks[j], 1)?;
            }
            self.phrases += 1;
            self.phrase_tokens += (j + 1 - last) as u64;
            last = j + 1;
        }
        Ok(())
    }

    fn scan_textbook(&mut self, toks: &[u32]) -> Result<()> {
        let n = toks.len();
        let mut last = 0;
        while last < n {
            let mut node = toks[last];
            let mut h = root_hash(node);
            let (mut ahead, mut ahead_end) =
                self.prefetch_path(toks, h, last + 1, last + 1 + PREFETCH_DEPTH);
            let mut j = last + 1;
            let mut free = None;
            while j < n {
                let hj = step_hash(h, toks[j]);
                match self.children.find(hj, node, toks[j]) {
                    Ok(c) => {
                        node = c;
                        h = hj;
                        j += 1;
                        (ahead, ahead_end) =
                            self.prefetch_path(toks, ahead, ahead_end, ahead_end + 1);
                    }
                    Err(at) => {
                        free = Some((at, hj));
                        break;
                    }
                }
            }
            self.bump(node);
            if let Some((at, hj)) = free {
                self.insert(at, hj, node, toks[j], 0)?;
            }
            self.phrases += 1;
            self.phrase_tokens += (j - last) as u64;
            last = j;
        }
        Ok(())
    }

    /// Rebuild a dictionary from stored (parent, token, count) columns, checking that they
    /// form a trie in insertion order.
    pub fn from_parts(
        vocab: u32,
        variant: LzwVariant,
        parent: Vec<u32>,
        token: Vec<u32>,
        count: Vec<u64>,
    ) -> std::result::Result<Self, String> {
        let n = parent.len();
        if token.len() != n || count.len() != n {
            return Err(format!(
                "codeword columns disagree in length (parent {n}, token {}, count {})",
                token.len(),
                count.len()
            ));
        }
        if n < vocab as usize {
            return Err(format!(
                "{n} codewords, fewer than the vocabulary size {vocab}"
            ));
        }
        let mut children = ChildTable::with_capacity(n - vocab as usize);
        // Content hashes of the codewords so far (a parent always precedes its children).
        let mut hash: Vec<u64> = (0..vocab).map(root_hash).collect();
        hash.reserve(n - vocab as usize);
        for i in 0..n {
            let (p, t) = (parent[i], token[i]);
            if i < vocab as usize {
                if p != NO_PARENT || t != i as u32 {
                    return Err(format!(
                        "codeword {i} should be the single token {i} (parent {p}, token {t})"
                    ));
                }
            } else {
                if p as usize >= i || t >= vocab {
                    return Err(format!(
                        "codeword {i} is out of order or out of range (parent {p}, token {t})"
                    ));
                }
                let h = step_hash(hash[p as usize], t);
                hash.push(h);
                match children.find(h, p, t) {
                    Ok(_) => return Err(format!("codeword {i} duplicates an earlier codeword")),
                    Err(at) => children.insert_at(at, h, p, t, i as u32),
                }
            }
        }
        Ok(LzwDictionary {
            vocab,
            variant,
            parent,
            token,
            count,
            children,
            phrases: 0,
            phrase_tokens: 0,
            pending: Vec::new(),
        })
    }

    /// The stored form of the dictionary (its columns, without the lookup table).
    pub fn into_codewords(self) -> Codewords {
        Codewords {
            parents: self.parent,
            tokens: self.token,
            counts: self.count,
        }
    }

    /// The token sequence of codeword `id`, first token first.
    pub fn codeword(&self, id: u32) -> Vec<u32> {
        let mut out = Vec::new();
        let mut node = id;
        while node != NO_PARENT {
            out.push(self.token[node as usize]);
            node = self.parent[node as usize];
        }
        out.reverse();
        out
    }

    /// Merge the scan statistics of a restored dictionary.
    pub fn set_phrase_stats(&mut self, phrases: u64, phrase_tokens: u64) {
        self.phrases = phrases;
        self.phrase_tokens = phrase_tokens;
    }
}

#[derive(Debug)]
pub enum ScanError {
    OutOfRange(TokenOutOfRange),
    Full(Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dict(vocab: u32, seqs: &[&[u32]]) -> LzwDictionary {
        let mut d = LzwDictionary::new(vocab, LzwVariant::Reference).unwrap();
        for s in seqs {
            d.scan(s).unwrap();
        }
        d
    }

    fn counts_of(d: &LzwDictionary) -> Vec<(Vec<u32>, u64)> {
        (0..d.len() as u32)
            .map(|i| (d.codeword(i), d.counts()[i as usize]))
            .collect()
    }

    #[test]
    fn consumed_breaking_token() {
        // a b a b a b: phrase (a) breaks on b -> [a b]=1, a+=1; next phrase starts at index 2.
        let d = dict(3, &[&[0, 1, 0, 1, 0, 1]]);
        // Hand trace of the reference:
        // last=0: match [0], j=1, [0,1] missing -> count[0]+=1, insert [0,1]=1, last=2
        // last=2: match [0,1] (j=4), 4+1<6 so test [0,1,0]: missing -> count[[0,1]]+=1 (2),
        //         insert [0,1,0]=1, last=5; 5+1<6 false: stop (token 1 at index 5 unused)
        assert_eq!(
            counts_of(&d),
            vec![
                (vec![0], 1),
                (vec![1], 0),
                (vec![2], 0),
                (vec![0, 1], 2),
                (vec![0, 1, 0], 1)
            ]
        );
        assert_eq!(d.phrases(), 2);
        assert_eq!(d.phrase_tokens(), 5);
    }

    #[test]
    fn end_of_sequence_resets_existing_codeword() {
        // First sequence makes [0,1] with count 1, the second bumps it to 2 via a match, the
        // third ends on [0,1] again: the reference assigns 1 to it, a reset from 2.
        let mut d = dict(2, &[&[0, 1], &[0, 1, 1]]);
        assert_eq!(d.counts()[2], 2); // [0,1]: inserted 1, then matched +1
        d.scan(&[0, 1]).unwrap();
        assert_eq!(d.counts()[2], 1, "end-of-sequence assignment resets");
        assert_eq!(d.counts()[0], 2);
    }

    #[test]
    fn short_sequences_do_nothing() {
        let d = dict(4, &[&[], &[3]]);
        assert!(d.counts().iter().all(|&c| c == 0));
        assert_eq!(d.len(), 4);
    }

    #[test]
    fn out_of_range_token_is_reported() {
        let mut d = LzwDictionary::new(4, LzwVariant::Reference).unwrap();
        match d.scan(&[1, 2, 9, 1]) {
            Err(ScanError::OutOfRange(e)) => assert_eq!((e.position, e.token), (2, 9)),
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(d.len(), 4);
    }

    #[test]
    fn textbook_restarts_at_breaking_token() {
        let mut d = LzwDictionary::new(2, LzwVariant::Textbook).unwrap();
        d.scan(&[0, 1, 0, 1]).unwrap();
        // [0] emitted, add [0,1]; [1] emitted, add [1,0]; [0,1] emitted (end).
        assert_eq!(
            counts_of(&d),
            vec![(vec![0], 1), (vec![1], 1), (vec![0, 1], 1), (vec![1, 0], 0)]
        );
        assert_eq!(d.phrase_tokens(), 4);
    }

    #[test]
    fn from_parts_rejects_broken_tries() {
        let d = dict(3, &[&[0, 1, 2, 0, 1, 2, 0]]);
        let (p, t, c) = (
            d.parents().to_vec(),
            d.tokens().to_vec(),
            d.counts().to_vec(),
        );
        assert!(LzwDictionary::from_parts(
            3,
            LzwVariant::Reference,
            p.clone(),
            t.clone(),
            c.clone()
        )
        .is_ok());
        let mut bad = p.clone();
        *bad.last_mut().unwrap() = bad.len() as u32; // a parent after its child
        assert!(
            LzwDictionary::from_parts(3, LzwVariant::Reference, bad, t.clone(), c.clone()).is_err()
        );
        let mut dup_p = p.clone();
        let mut dup_t = t.clone();
        dup_p.push(dup_p[3]);
        dup_t.push(dup_t[3]);
        let mut dup_c = c.clone();
        dup_c.push(1);
        assert!(LzwDictionary::from_parts(3, LzwVariant::Reference, dup_p, dup_t, dup_c).is_err());
    }
}
