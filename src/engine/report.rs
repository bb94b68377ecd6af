//! What an [`Engine`](super::Engine) reports: its pool's memory, a
//! sequence's, and what it has done.

use super::{Engine, SeqId};
use crate::error::Result;
use crate::pool::{PageCounts, RELEASED};

/// The pool's memory: pages and bytes, a shared page counted once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolMemory {
    /// Positions per page.
    pub page_size: usize,
    /// Bytes of one page: the K and V rows of `page_size` positions of
    /// every layer that attends over the whole context.
    pub page_bytes: u64,
    /// Pages held, shared, cached and free.
    pub pages: PageCounts,
    /// Bytes of one page of the sliding-window layers (0 without them).
    pub window_page_bytes: u64,
    /// The sliding-window layers' pages (all 0 without them): a page goes
    /// back to the pool once no window reads it.
    pub window_pages: PageCounts,
    /// Bytes of both pools (their capacity), allocated once.
    pub capacity_bytes: u64,
    /// Bytes of the pages sequences hold in both pools, each page once.
    pub held_bytes: u64,
}

/// One sequence's memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SequenceMemory {
    /// Pages in its table.
    pub pages: usize,
    /// Of those, pages another sequence also holds.
    pub shared: usize,
    /// Sliding-window layers' pages it holds now, shared ones included.
    pub window_pages: usize,
    /// Bytes of its pages of both kinds (shared ones included).
    pub bytes: u64,
}

/// What an engine has done since it was made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Passes run ([`Engine::step`] calls that ran tokens).
    pub passes: u64,
    /// Tokens run through the model.
    pub tokens: u64,
    /// Prompt tokens taken from pages the pool held instead of run.
    pub reused: u64,
    /// Pages copied because a sequence wrote into a shared one.
    pub page_copies: u64,
}

impl Engine {
    /// The pool's memory.
    pub fn memory(&self) -> PoolMemory {
        let pages = self.pool.counts();
        let window_pages = self.window.as_ref().map(|w| w.pages.counts());
        let window_pages = window_pages.unwrap_or_default();
        let (page_bytes, window_page_bytes) = self.page_bytes();
        PoolMemory {
            page_size: self.page_size,
            page_bytes,
            pages,
            window_page_bytes,
            window_pages,
            capacity_bytes: pages.total as u64 * page_bytes
                + window_pages.total as u64 * window_page_bytes,
            held_bytes: pages.held as u64 * page_bytes
                + window_pages.held as u64 * window_page_bytes,
        }
    }

    /// Sequence `id`'s memory.
    pub fn sequence_memory(&self, id: SeqId) -> Result<SequenceMemory> {
        let s = self.get(id)?;
        let shared = s.pages.iter().filter(|&&p| self.pool.refs(p) > 1).count();
        let window_pages = s.window_pages.iter().filter(|&&p| p != RELEASED).count();
        let (page_bytes, window_page_bytes) = self.page_bytes();
        Ok(SequenceMemory {
            pages: s.pages.len(),
            shared,
            window_pages,
            bytes: s.pages.len() as u64 * page_bytes + window_pages as u64 * window_page_bytes,
        })
    }

    /// Bytes of one page of the whole-context layers and of the window
    /// layers: their K and V rows of `page_size` positions.
    fn page_bytes(&self) -> (u64, u64) {
        let c = self.model.config();
        let layer = 2 * self.page_size as u64 * self.cache.dtype().row_bytes(c.kv_dim());
        let windowed = self.cache.layers.iter().filter(|l| l.window.is_some());
        let windowed = windowed.count() as u64;
        (layer * (c.n_layers as u64 - windowed), layer * windowed)
    }
}
