//! The LZW codeword dictionary of the paper's Algorithm 1, built as a trie.
//!
//! Every codeword is a node: the single tokens are nodes `0..vocab` (node id = token id), and
//! each multi-token codeword is appended when first inserted, so **node id order is insertion
//! order**. That is what makes the reference's stable sort reproducible from the trie alone:
//! sorting by (count descending, node id ascending) is exactly Python's
//! `sorted(counts.items(), key=..., reverse=True)` over an insertion-ordered dict.
//!
//! A node is (parent, last token, count); children are found through one hash map keyed by
//! (parent, token). The scan walks the trie while tokens stream in, so no sequence is ever
//! sliced or hashed as a whole.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Parent of the single-token codewords (the trie's roots).
pub const NO_PARENT: u32 = u32::MAX;

/// Which LZW scan builds the dictionary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum LzwVariant {
    /// The paper's reference code, quirks included: the breaking token is consumed into the new
    /// codeword, and the codeword reached at the end of a sequence is reset to count 1.
    Reference,
    /// Textbook LZW: the breaking token starts the next phrase, each emitted phrase is counted
    /// once, new codewords start at 0 and nothing is ever reset.
    Textbook,
}

impl LzwVariant {
    pub fn name(self) -> &'static str {
        match self {
            LzwVariant::Reference => "reference",
            LzwVariant::Textbook => "textbook",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "reference" => Some(LzwVariant::Reference),
            "textbook" => Some(LzwVariant::Textbook),
            _ => None,
        }
    }
}

/// A one-multiply hasher for the (parent, token) keys: the std SipHash costs more than the
/// rest of the scan together. The folded 128-bit product mixes every key bit into both the low
/// bits (bucket index) and the high bits (control byte) that hashbrown uses.
#[derive(Default, Clone, Copy)]
pub struct PairHasher(u64);

impl Hasher for PairHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(b as u64);
        }
    }
    #[inline]
    fn write_u64(&mut self, k: u64) {
        let m = (k ^ self.0) as u128 * 0x9E37_79B9_7F4A_7C15u128;
        self.0 = (m as u64) ^ ((m >> 64) as u64);
    }
}

type ChildMap = HashMap<u64, u32, BuildHasherDefault<PairHasher>>;

#[inline]
fn key(parent: u32, token: u32) -> u64 {
    ((parent as u64) << 32) | token as u64
}

/// The codeword dictionary with its counts, plus scan statistics.
#[derive(Clone)]
pub struct LzwDictionary {
    vocab: u32,
    variant: LzwVariant,
    parent: Vec<u32>,
    token: Vec<u32>,
    count: Vec<u64>,
    children: ChildMap,
    phrases: u64,
    phrase_tokens: u64,
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
            children: ChildMap::default(),
            phrases: 0,
            phrase_tokens: 0,
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

    #[inline]
    fn child(&self, parent: u32, token: u32) -> Option<u32> {
        self.children.get(&key(parent, token)).copied()
    }

    #[inline]
    fn insert(&mut self, parent: u32, token: u32, count: u64) -> Result<()> {
        let id = self.count.len();
        if id >= NO_PARENT as usize {
            return Err(Error::input(
                "the LZW dictionary outgrew 2^32 - 1 codewords; profile a smaller sample (--max-tokens)",
            ));
        }
        self.parent.push(parent);
        self.token.push(token);
        self.count.push(count);
        self.children.insert(key(parent, token), id as u32);
        Ok(())
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
        match self.variant {
            LzwVariant::Reference => self.scan_reference(toks),
            LzwVariant::Textbook => self.scan_textbook(toks),
        }
        .map_err(ScanError::Full)
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
            let mut j = last + 1;
            while j + 1 < n {
                match self.child(node, toks[j]) {
                    Some(c) => {
                        node = c;
                        j += 1;
                    }
                    None => break,
                }
            }
            self.count[node as usize] += 1;
            let extension = if j + 1 < n {
                None // the loop broke on a missing child
            } else {
                self.child(node, toks[j])
            };
            match extension {
                Some(existing) => self.count[existing as usize] = 1,
                None => self.insert(node, toks[j], 1)?,
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
            let mut j = last + 1;
            while j < n {
                match self.child(node, toks[j]) {
                    Some(c) => {
                        node = c;
                        j += 1;
                    }
                    None => break,
                }
            }
            self.count[node as usize] += 1;
            if j < n {
                self.insert(node, toks[j], 0)?;
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
        let mut children = ChildMap::default();
        children.reserve(n - vocab as usize);
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
                if children.insert(key(p, t), i as u32).is_some() {
                    return Err(format!("codeword {i} duplicates an earlier codeword"));
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
        })
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

/// Codeword ids in the reference's walk order: count descending, insertion order on ties.
///
/// Almost every codeword has count 0 or 1 (a codeword is inserted with 1 and most are never
/// matched again), so only the few with a larger count are sorted; the rest follow as two runs
/// that are already in id order. This is the same order as a stable sort, in linear time for
/// all but the sorted head.
pub fn walk_order(counts: &[u64]) -> Vec<u32> {
    let mut head: Vec<(u64, u32)> = counts
        .iter()
        .enumerate()
        .filter(|(_, &c)| c > 1)
        .map(|(i, &c)| (c, i as u32))
        .collect();
    head.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let mut order = Vec::with_capacity(counts.len());
    order.extend(head.iter().map(|&(_, i)| i));
    for wanted in [1u64, 0] {
        order.extend(
            counts
                .iter()
                .enumerate()
                .filter(|(_, &c)| c == wanted)
                .map(|(i, _)| i as u32),
        );
    }
    order
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
    fn walk_order_is_a_stable_descending_sort() {
        let counts = [0, 3, 1, 3, 0, 1, 7, 2];
        let mut expected: Vec<u32> = (0..counts.len() as u32).collect();
        expected.sort_by(|a, b| counts[*b as usize].cmp(&counts[*a as usize]));
        assert_eq!(walk_order(&counts), expected);
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
