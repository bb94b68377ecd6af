//! The bookkeeping of a paged KV pool: which pages are free, how many
//! sequences hold each page, and which full pages are remembered by their
//! tokens for prefix reuse. Host only; the pages are rows of the pool's
//! [`KvCache`](crate::KvCache) buffers (page `p` = rows `p x page_size ..
//! (p + 1) x page_size` of every layer's K and V).
//!
//! A page is in one of three states: *held* (one or more sequences' page
//! tables name it), *cached* (held by none, but full and remembered by the
//! hash of the tokens up to its end, so a later sequence with that prefix
//! can take it back) or *free*. Allocation takes a free page first, else
//! evicts the least recently released cached page.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};

/// The hash a full page is remembered by: of the previous page's hash and
/// this page's tokens, so it names the whole prefix up to the page's end
/// (token content and position).
pub fn page_hash(previous: Option<u64>, tokens: &[u32]) -> u64 {
    // SipHash with fixed keys: the same on every run, so a page is found
    // again by the same prefix; a 64-bit collision between two live
    // prefixes (about 2^-64 per pair) would share a wrong page.
    let mut h = std::hash::DefaultHasher::new();
    previous.hash(&mut h);
    tokens.hash(&mut h);
    h.finish()
}

/// Page counts of a pool.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PageCounts {
    /// Pages in the pool.
    pub total: usize,
    /// Pages held by at least one sequence, each counted once.
    pub held: usize,
    /// Held pages that two or more sequences share.
    pub shared: usize,
    /// Pages held by none but kept for prefix reuse (evicted when needed).
    pub cached: usize,
    /// Pages holding nothing.
    pub free: usize,
}

/// Free pages, reference counts and the prefix map of a paged pool.
#[derive(Debug)]
pub(crate) struct PagePool {
    /// (pages,) how many sequences hold each page.
    refs: Vec<u32>,
    /// (pages,) the prefix hash of a remembered full page.
    hash: Vec<Option<u64>>,
    /// (pages,) when a cached page was released (its key in `cached`).
    released: Vec<u64>,
    /// Pages holding nothing, taken first.
    free: Vec<u32>,
    /// Cached pages by release time, oldest first: evicted in this order.
    cached: BTreeMap<u64, u32>,
    /// Remembered full pages by prefix hash.
    by_hash: HashMap<u64, u32>,
    clock: u64,
}

impl PagePool {
    /// A pool of `pages` free pages.
    pub fn new(pages: usize) -> Self {
        Self {
            refs: vec![0; pages],
            hash: vec![None; pages],
            released: vec![0; pages],
            free: (0..pages as u32).rev().collect(),
            cached: BTreeMap::new(),
            by_hash: HashMap::new(),
            clock: 0,
        }
    }

    /// Pages an allocation can take now: free and cached.
    pub fn available(&self) -> usize {
        self.free.len() + self.cached.len()
    }

    /// How many sequences hold `page`.
    pub fn refs(&self, page: u32) -> u32 {
        self.refs[page as usize]
    }

    /// A page for one holder: a free one, else the least recently released
    /// cached one (forgotten). `None` when neither is left.
    pub fn alloc(&mut self) -> Option<u32> {
        let page = match self.free.pop() {
            Some(page) => page,
            None => {
                let (_, page) = self.cached.pop_first()?;
                self.forget(page);
                page
            }
        };
        self.refs[page as usize] = 1;
        Some(page)
    }

    /// One more holder of a held or cached `page`.
    pub fn retain(&mut self, page: u32) {
        let p = page as usize;
        if self.refs[p] == 0 {
            self.cached.remove(&self.released[p]);
        }
        self.refs[p] += 1;
    }

    /// One holder fewer: the last one leaves a remembered page cached, any
    /// other free.
    pub fn release(&mut self, page: u32) {
        let p = page as usize;
        debug_assert!(self.refs[p] > 0, "release of a page nobody holds");
        self.refs[p] -= 1;
        if self.refs[p] == 0 {
            if self.hash[p].is_some() {
                self.clock += 1;
                self.released[p] = self.clock;
                self.cached.insert(self.clock, page);
            } else {
                self.free.push(page);
            }
        }
    }

    /// Remembers held full `page` by `hash`, unless another page already
    /// holds that prefix.
    pub fn remember(&mut self, page: u32, hash: u64) {
        if self.hash[page as usize].is_none() && !self.by_hash.contains_key(&hash) {
            self.hash[page as usize] = Some(hash);
            self.by_hash.insert(hash, page);
        }
    }

    /// Forgets what `page` holds (it is about to be rewritten).
    pub fn forget(&mut self, page: u32) {
        if let Some(hash) = self.hash[page as usize].take() {
            self.by_hash.remove(&hash);
        }
    }

    /// The page remembered by `hash`.
    pub fn find(&self, hash: u64) -> Option<u32> {
        self.by_hash.get(&hash).copied()
    }

    /// Page counts.
    pub fn counts(&self) -> PageCounts {
        PageCounts {
            total: self.refs.len(),
            held: self.refs.iter().filter(|&&r| r > 0).count(),
            shared: self.refs.iter().filter(|&&r| r > 1).count(),
            cached: self.cached.len(),
            free: self.free.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_are_freed_cached_reused_and_evicted_oldest_first() {
        let mut pool = PagePool::new(3);
        let (a, b, c) = (
            pool.alloc().unwrap(),
            pool.alloc().unwrap(),
            pool.alloc().unwrap(),
        );
        assert_eq!(pool.alloc(), None, "three pages, three held");
        pool.retain(a);
        assert_eq!(pool.counts().shared, 1);
        pool.remember(a, 11);
        pool.remember(b, 22);
        pool.remember(c, 11); // that prefix is already held by a
        assert_eq!((pool.find(11), pool.find(22)), (Some(a), Some(b)));
        pool.release(a);
        pool.release(a); // cached now
        pool.release(b); // cached, released after a
        pool.release(c); // free: not remembered
        let counts = pool.counts();
        assert_eq!((counts.held, counts.cached, counts.free), (0, 2, 1));
        // Taken back by its prefix, it is held again and not evictable.
        pool.retain(b);
        assert_eq!(pool.alloc(), Some(c), "free pages first");
        assert_eq!(pool.alloc(), Some(a), "then the oldest cached");
        assert_eq!(pool.find(11), None, "an evicted page is forgotten");
        assert_eq!(pool.alloc(), None);
        assert_eq!(pool.counts().held, 3);
    }

    #[test]
    fn a_page_hash_names_the_whole_prefix() {
        let first = page_hash(None, &[1, 2]);
        assert_ne!(page_hash(Some(first), &[3, 4]), page_hash(None, &[3, 4]));
        assert_ne!(first, page_hash(None, &[2, 1]));
        assert_eq!(first, page_hash(None, &[1, 2]));
    }
}
