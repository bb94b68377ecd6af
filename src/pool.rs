//! The bookkeeping of a paged KV pool: which pages are free, how many
//! sequences hold each page, and which full pages are remembered by their
//! tokens for prefix reuse. Host only; the pages are rows of the pool's
//! [`KvCache`](crate::KvCache) buffers (page `p` = rows `p x page_size ..
//! (p + 1) x page_size` of every whole-context layer's K and V; the
//! sliding-window layers have a [`WindowPool`] of their own, whose pages go
//! back once no window reads them).
//!
//! A page is in one of three states: *held* (one or more sequences' page
//! tables name it), *cached* (held by none, but full and remembered by the
//! hash of the tokens up to its end, so a later sequence with that prefix
//! can take it back) or *free*. Allocation takes a free page first, else
//! evicts the least recently released cached page.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};

use crate::error::{Error, Result};

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

/// Free pages, reference counts and the prefix map of a paged pool, and
/// the page copies that copy-on-write owes the GPU.
#[derive(Debug)]
pub(crate) struct PagePool {
    /// Positions per page.
    page_size: usize,
    /// (from, to) pages to copy before the next pass.
    copies: Vec<(u32, u32)>,
    /// Pages copied since the pool was made.
    copied: u64,
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
    /// A pool of `pages` free pages of `page_size` positions.
    pub fn new(pages: usize, page_size: usize) -> Self {
        Self {
            page_size,
            copies: Vec::new(),
            copied: 0,
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
    /// other free (and drops a copy into it still owed).
    pub fn release(&mut self, page: u32) {
        let p = page as usize;
        debug_assert!(self.refs[p] > 0, "release of a page nobody holds");
        self.refs[p] -= 1;
        if self.refs[p] == 0 {
            self.copies.retain(|&(_, to)| to != page);
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

    /// The pages a prompt's whole-page prefix is remembered by, at most
    /// `max_pages` of them, and their hashes; the first page not remembered
    /// ends the prefix.
    pub fn find_prefix(&self, tokens: &[u32], max_pages: usize) -> (Vec<u32>, Vec<u64>) {
        let (mut pages, mut hashes) = (Vec::new(), Vec::new());
        for chunk in tokens.chunks_exact(self.page_size).take(max_pages) {
            let hash = page_hash(hashes.last().copied(), chunk);
            let Some(page) = self.find(hash) else {
                break;
            };
            pages.push(page);
            hashes.push(hash);
        }
        (pages, hashes)
    }

    /// Checks that the pool has the pages a sequence holding `table` needs
    /// to write positions `start..end`: a new page past the table, and a
    /// copy of each page it shares; else [`Error::PoolExhausted`].
    pub fn check_write(&self, table: &[u32], start: usize, end: usize) -> Result<()> {
        if start == end {
            return Ok(());
        }
        let p = self.page_size;
        let needed = (start / p..end.div_ceil(p))
            .filter(|&i| table.get(i).is_none_or(|&page| self.refs(page) > 1))
            .count();
        let available = self.available();
        if needed > available {
            return Err(Error::PoolExhausted { needed, available });
        }
        Ok(())
    }

    /// Makes the pages of positions `start..end` of `table` its own: new
    /// pages past its end, a copy of any page it shares (copy-on-write,
    /// owed to the GPU until [`PagePool::take_copies`]), and a page it alone
    /// holds forgotten by the prefix map before it is rewritten.
    /// [`PagePool::check_write`] first: `None` if a page ran out.
    pub fn write(&mut self, table: &mut Vec<u32>, start: usize, end: usize) -> Option<()> {
        if start == end {
            return Some(());
        }
        let p = self.page_size;
        (start / p..end.div_ceil(p)).try_for_each(|i| self.own(table, i))
    }

    /// Makes entry `i` of `table` (at most one past its end) a page the
    /// table alone holds and nothing remembers; `None` if a page ran out.
    fn own(&mut self, table: &mut Vec<u32>, i: usize) -> Option<()> {
        match table.get(i).copied() {
            None => table.push(self.alloc()?),
            Some(page) if self.refs(page) > 1 => {
                let copy = self.alloc()?;
                self.release(page);
                self.copies.push((page, copy));
                self.copied += 1;
                table[i] = copy;
            }
            Some(page) => self.forget(page),
        }
        Some(())
    }

    /// The page copies owed, (from, to), in order; the pool owes none after.
    pub fn take_copies(&mut self) -> Vec<(u32, u32)> {
        std::mem::take(&mut self.copies)
    }

    /// Pages copied since the pool was made.
    pub fn copied(&self) -> u64 {
        self.copied
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

/// A window table's entry whose page went back to the pool: no window
/// reads its positions again.
pub(crate) const RELEASED: u32 = u32::MAX;

/// The pages of the layers that attend over a sliding window of `window`
/// positions. A sequence's window table parallels its page table (entry i
/// holds positions `i x page_size ..`), but a page is taken when a pass is
/// about to write it, not when tokens are appended, and goes back to the
/// pool (its entry [`RELEASED`]) once every window has slid past it: a
/// sequence holds at most [`WindowPool::pages_held`] of them at a time,
/// however long it grows.
#[derive(Debug)]
pub(crate) struct WindowPool {
    pub pages: PagePool,
    window: usize,
}

impl WindowPool {
    /// A pool of `pages` free pages of `page_size` positions for layers
    /// attending over `window` positions.
    pub fn new(pages: usize, page_size: usize, window: usize) -> Self {
        Self {
            pages: PagePool::new(pages, page_size),
            window,
        }
    }

    /// Most pages a sequence holds at once in passes of up to `batch`
    /// tokens: the `window - 1` positions before the pass, the pass's own,
    /// and a page each end may share with them.
    pub fn pages_held(page_size: usize, window: usize, batch: usize) -> usize {
        (window - 1 + batch).div_ceil(page_size) + 1
    }

    /// Index of the first page that the token at position `len` reads.
    fn first_read(&self, len: usize) -> usize {
        len.saturating_sub(self.window - 1) / self.pages.page_size
    }

    /// How many pages of a prefix remembered by `hashes` (one a whole page)
    /// a new sequence can take, window pages included: the most pages `k`
    /// whose window pages (those the token after them reads) are all
    /// remembered too; and its window table, not yet retained.
    pub fn find_prefix(&self, hashes: &[u64]) -> (usize, Vec<u32>) {
        for k in (1..=hashes.len()).rev() {
            let first = self.first_read(k * self.pages.page_size);
            let found: Option<Vec<u32>> = hashes[first..k]
                .iter()
                .map(|&h| self.pages.find(h))
                .collect();
            if let Some(found) = found {
                let mut table = vec![RELEASED; first];
                table.extend(found);
                return (k, table);
            }
        }
        (0, Vec::new())
    }

    /// One more holder of every page `table` holds.
    pub fn retain(&mut self, table: &[u32]) {
        for &page in table.iter().filter(|&&page| page != RELEASED) {
            self.pages.retain(page);
        }
    }

    /// Makes the pages of positions `start..end` of `table` its own (as
    /// [`PagePool::write`]), as far as the pool's pages go: the end of the
    /// positions it can write, `start` when none.
    pub fn write(&mut self, table: &mut Vec<u32>, start: usize, end: usize) -> usize {
        let p = self.pages.page_size;
        for i in start / p..end.div_ceil(p) {
            if self.pages.own(table, i).is_none() {
                return (i * p).max(start);
            }
        }
        end
    }

    /// Releases the pages of `table` that no window reads again once `len`
    /// positions are computed.
    pub fn release_behind(&mut self, table: &mut [u32], len: usize) {
        let end = self.first_read(len).min(table.len());
        for entry in table[..end].iter_mut().rev() {
            if *entry == RELEASED {
                break; // the released entries are a prefix
            }
            self.pages.release(*entry);
            *entry = RELEASED;
        }
    }

    /// Keeps `table`'s pages of positions `0..len` and releases the rest,
    /// if the pages the token at `len` reads are still held; else
    /// [`Error::WindowRollback`], changing nothing.
    pub fn truncate(&mut self, table: &mut Vec<u32>, len: usize) -> Result<()> {
        let p = self.pages.page_size;
        let keep = len.div_ceil(p).min(table.len());
        let first = self.first_read(len).min(keep);
        if let Some(held) = table[first..keep].iter().rposition(|&e| e == RELEASED) {
            return Err(Error::WindowRollback {
                requested: len,
                oldest: (first + held + 1) * p,
                needed: len.saturating_sub(self.window - 1),
            });
        }
        self.release_from(table, keep);
        Ok(())
    }

    /// Releases `table`'s pages from entry `from` on.
    pub fn release_from(&mut self, table: &mut Vec<u32>, from: usize) {
        for page in table.split_off(from.min(table.len())) {
            if page != RELEASED {
                self.pages.release(page);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_are_freed_cached_reused_and_evicted_oldest_first() {
        let mut pool = PagePool::new(3, 2);
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
