//! Exactness of the LZW allocation against the paper's reference algorithm.
//!
//! `naive` below is a line-for-line transliteration of Algorithm 1 as written in the method
//! notes: a map from token sequences to counts plus the insertion order, slices compared as
//! whole sequences, a stable sort. The trie implementation must produce the same allocation
//! on every random corpus, budget and cap.

use l3kit::allocate::lzw_walk;
use l3kit::profile::lzw::{LzwDictionary, LzwVariant};
use proptest::prelude::*;
use std::collections::HashMap;

/// Codeword counts in insertion order, exactly as the reference builds them.
fn naive_counts(seqs: &[Vec<u32>], vocab: u32) -> Vec<(Vec<u32>, u64)> {
    let mut counts: HashMap<Vec<u32>, u64> = HashMap::new();
    let mut order: Vec<Vec<u32>> = Vec::new();
    let assign =
        |counts: &mut HashMap<Vec<u32>, u64>, order: &mut Vec<Vec<u32>>, k: &[u32], v: u64| {
            if counts.insert(k.to_vec(), v).is_none() {
                order.push(k.to_vec());
            }
        };
    for t in 0..vocab {
        assign(&mut counts, &mut order, &[t], 0);
    }
    for toks in seqs {
        let n = toks.len();
        let (mut last, mut cur) = (0usize, 1usize);
        while cur < n {
            while cur < n && counts.contains_key(&toks[last..cur]) {
                cur += 1;
            }
            if cur > last + 1 {
                *counts
                    .get_mut(&toks[last..cur - 1])
                    .expect("prefix is a codeword") += 1;
            }
            assign(&mut counts, &mut order, &toks[last..cur], 1);
            last = cur;
            cur += 1;
        }
    }
    order
        .into_iter()
        .map(|k| {
            let c = counts[&k];
            (k, c)
        })
        .collect()
}

fn naive_allocation(seqs: &[Vec<u32>], vocab: u32, n_emb: u64, k_max: u32) -> (Vec<u32>, u64) {
    let mut ranked = naive_counts(seqs, vocab);
    ranked.sort_by_key(|c| std::cmp::Reverse(c.1)); // stable: ties keep insertion order
    let mut alloc = vec![1u32; vocab as usize];
    let mut total = vocab as u64;
    for (codeword, _) in &ranked {
        if total == n_emb {
            break;
        }
        let t = *codeword.last().unwrap() as usize;
        if alloc[t] < k_max {
            alloc[t] += 1;
            total += 1;
        }
    }
    (alloc, n_emb - total)
}

fn trie(seqs: &[Vec<u32>], vocab: u32) -> LzwDictionary {
    let mut d = LzwDictionary::new(vocab, LzwVariant::Reference).unwrap();
    for s in seqs {
        d.scan(s).unwrap();
    }
    d
}

/// Random corpora with a skewed token distribution (so codewords repeat and grow long).
fn corpus() -> impl Strategy<Value = (u32, Vec<Vec<u32>>)> {
    (1u32..12).prop_flat_map(|vocab| {
        let token = (0u32..vocab * vocab).prop_map(move |x| (x as f64).sqrt() as u32 % vocab);
        (
            Just(vocab),
            prop::collection::vec(prop::collection::vec(token, 0..40), 0..25),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(600))]

    #[test]
    fn dictionary_matches_naive((vocab, seqs) in corpus()) {
        let d = trie(&seqs, vocab);
        let naive = naive_counts(&seqs, vocab);
        let fast: Vec<(Vec<u32>, u64)> =
            (0..d.len() as u32).map(|i| (d.codeword(i), d.counts()[i as usize])).collect();
        prop_assert_eq!(fast, naive);
    }

    #[test]
    fn allocation_matches_naive((vocab, seqs) in corpus(), k_max in 1u32..9, extra in 0u64..80) {
        let n_emb = (vocab as u64 + extra).min(vocab as u64 * k_max as u64);
        let d = trie(&seqs, vocab);
        let walk = lzw_walk(vocab as usize, d.tokens(), d.counts(), n_emb, k_max);
        let (alloc, remaining) = naive_allocation(&seqs, vocab, n_emb, k_max);
        prop_assert_eq!(walk.rows, alloc);
        prop_assert_eq!(walk.remaining, remaining);
    }
}

#[test]
fn hand_worked_reset_changes_the_allocation() {
    // Second sequence: [1,1] is matched (count 2), then the scan ends on [1,1] again and the
    // reference assigns it 1. Without the reset, [1,1] (2) would tie with [1] (2) and give
    // token 1 both extra rows: [1, 3]. With it, [1] takes one row for token 1 and the first
    // count-1 codeword in insertion order, [0], gives token 0 the other: [2, 2].
    let seqs = vec![vec![0, 0, 1, 1], vec![1, 1, 0, 1, 1]];
    let d = trie(&seqs, 2);
    let fast: Vec<_> = (0..d.len() as u32)
        .map(|i| (d.codeword(i), d.counts()[i as usize]))
        .collect();
    assert_eq!(
        fast,
        vec![
            (vec![0], 1),
            (vec![1], 2),
            (vec![0, 0], 1),
            (vec![1, 1], 1),
            (vec![1, 1, 0], 1)
        ]
    );
    assert_eq!(fast, naive_counts(&seqs, 2));
    let walk = lzw_walk(2, d.tokens(), d.counts(), 4, 8);
    assert_eq!(walk.rows, vec![2, 2]);
    assert_eq!(walk.rows, naive_allocation(&seqs, 2, 4, 8).0);
}
