//! BPE merging in O(n log n): the symbols as a linked list, the candidate
//! pairs in a heap (llama.cpp's and SentencePiece's way), so a long run of
//! one letter or of spaces costs no more per symbol than a short word.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// A symbol merged into its left neighbour.
const GONE: u32 = u32::MAX;

/// Merges adjacent symbols in place while `pair(left, right)` names a
/// merge, `(key, merged symbol)`: the pair with the lowest key first, the
/// leftmost among equal keys, exactly as rescanning every pair after
/// each merge would.
pub(crate) fn merge<K: Ord + Copy>(
    symbols: &mut Vec<u32>,
    mut pair: impl FnMut(u32, u32) -> Option<(K, u32)>,
) {
    let n = symbols.len();
    if n < 2 {
        return;
    }
    // next[i] == n: none; prev[i] == usize::MAX: none.
    let mut next: Vec<usize> = (1..=n).collect();
    let mut prev: Vec<usize> = (0..n).map(|i| i.wrapping_sub(1)).collect();
    // (key, left index, right index, left symbol, right symbol, merged)
    let mut heap = BinaryHeap::with_capacity(n);
    let mut candidate = |heap: &mut BinaryHeap<_>, symbols: &[u32], i: usize, j: usize| {
        if let Some((key, merged)) = pair(symbols[i], symbols[j]) {
            heap.push(Reverse((key, i, j, symbols[i], symbols[j], merged)));
        }
    };
    for i in 0..n - 1 {
        candidate(&mut heap, symbols, i, i + 1);
    }
    while let Some(Reverse((_, i, j, a, b, merged))) = heap.pop() {
        // A pair is current while i and j are neighbours holding a and b.
        if next[i] != j || symbols[i] != a || symbols[j] != b {
            continue;
        }
        symbols[i] = merged;
        symbols[j] = GONE;
        next[i] = next[j];
        if next[j] < n {
            prev[next[j]] = i;
        }
        if prev[i] != usize::MAX {
            candidate(&mut heap, symbols, prev[i], i);
        }
        if next[i] < n {
            candidate(&mut heap, symbols, i, next[i]);
        }
    }
    symbols.retain(|&s| s != GONE);
}

/// A score as a key that orders like the score, highest first (`f32`'s
/// total order; NaN never reaches here).
pub(crate) fn highest_first(score: f32) -> Reverse<i32> {
    let bits = score.to_bits() as i32;
    Reverse(bits ^ (((bits >> 31) as u32) >> 1) as i32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// The quadratic rule merge must equal: rescan every pair, merge the
    /// lowest key (leftmost among equals), repeat.
    fn rescanning<K: Ord + Copy>(
        symbols: &mut Vec<u32>,
        pair: impl Fn(u32, u32) -> Option<(K, u32)>,
    ) {
        loop {
            let best = (0..symbols.len().saturating_sub(1))
                .filter_map(|i| pair(symbols[i], symbols[i + 1]).map(|(k, m)| (k, i, m)))
                .min_by_key(|&(k, i, _)| (k, i));
            let Some((_, i, m)) = best else { break };
            symbols[i] = m;
            symbols.remove(i + 1);
        }
    }

    #[test]
    fn heap_merging_equals_rescanning_on_random_rules() {
        let mut seed = 7u64;
        let mut next = |n: u64| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) % n
        };
        for case in 0..300 {
            // Few symbols, many rules with repeated keys: ties and chains.
            let alphabet = 2 + next(4);
            let mut rules = HashMap::new();
            for _ in 0..next(40) {
                let (a, b) = (next(alphabet + 20) as u32, next(alphabet + 20) as u32);
                rules.insert((a, b), (next(5) as u32, alphabet as u32 + next(20) as u32));
            }
            let text: Vec<u32> = (0..next(60)).map(|_| next(alphabet) as u32).collect();
            let pair = |a, b| rules.get(&(a, b)).copied();
            let (mut fast, mut slow) = (text.clone(), text.clone());
            merge(&mut fast, pair);
            rescanning(&mut slow, pair);
            assert_eq!(fast, slow, "case {case}: {text:?}");
        }
    }

    #[test]
    fn scores_order_highest_first() {
        let scores = [-1e10, -3.5, -0.0, 0.0, 1e-30, 2.0, f32::INFINITY];
        for w in scores.windows(2) {
            assert!(highest_first(w[1]) <= highest_first(w[0]), "{w:?}");
        }
    }
}
