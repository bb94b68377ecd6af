//! An [`Engine`](super::Engine)'s settings.

use crate::error::{Error, Result};
use crate::kv_cache::KvDtype;
use crate::model::Config;
use crate::pool::WindowPool;

/// Engine settings: `EngineOptions::default().pages(256).page_size(16)`.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct EngineOptions {
    /// Positions per page (16 by default).
    pub page_size: usize,
    /// Pages in the pool; by default enough for four sequences of the full context.
    pub pages: Option<usize>,
    /// Most positions one sequence holds; the model's context length when `None`.
    pub context: Option<usize>,
    /// How the pool stores values.
    pub kv_dtype: KvDtype,
    /// Most tokens one pass runs, all sequences together (64 by default).
    pub pass_tokens: usize,
    /// Pages of the sliding-window layers' pool (models with such layers).
    /// A sequence holds at most `(window - 1 + pass_tokens) / page_size + 2`
    /// of them at a time, however long it grows; by default the pool has
    /// that many for each full-context sequence that [`Self::pages`] holds,
    /// and never more than `pages`.
    pub window_pages: Option<usize>,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            page_size: 16,
            pages: None,
            context: None,
            kv_dtype: KvDtype::F32,
            pass_tokens: 64,
            window_pages: None,
        }
    }
}

impl EngineOptions {
    /// Positions per page.
    pub fn page_size(mut self, positions: usize) -> Self {
        self.page_size = positions;
        self
    }

    /// Pages in the pool.
    pub fn pages(mut self, pages: usize) -> Self {
        self.pages = Some(pages);
        self
    }

    /// Most positions one sequence holds.
    pub fn context(mut self, positions: usize) -> Self {
        self.context = Some(positions);
        self
    }

    /// How the pool stores values.
    pub fn kv_dtype(mut self, dtype: KvDtype) -> Self {
        self.kv_dtype = dtype;
        self
    }

    /// Most tokens one pass runs.
    pub fn pass_tokens(mut self, tokens: usize) -> Self {
        self.pass_tokens = tokens;
        self
    }

    /// Pages of the sliding-window layers' pool.
    pub fn window_pages(mut self, pages: usize) -> Self {
        self.window_pages = Some(pages);
        self
    }
}

impl EngineOptions {
    /// The sliding-window layers' pool of a model of `config` whose main
    /// pool has `pages` (`per_sequence` for one full context): the largest
    /// window and the pool's pages, `None` without such layers. By default
    /// what a sequence holds at once, for each full-context sequence of
    /// the main pool, and no more pages than it.
    pub(super) fn window_pool(
        &self,
        config: &Config,
        pages: usize,
        per_sequence: usize,
    ) -> Result<Option<(usize, usize)>> {
        let layers = 0..config.n_layers;
        let Some(window) = layers.filter_map(|l| config.layer_window(l)).max() else {
            return Ok(None);
        };
        let held = WindowPool::pages_held(self.page_size, window, self.pass_tokens);
        let default = pages.min(pages.div_ceil(per_sequence).saturating_mul(held));
        let n = self.window_pages.unwrap_or(default);
        let least = WindowPool::pages_held(self.page_size, window, 1);
        if n < least {
            return Err(Error::InvalidConfig {
                field: "window_pages",
                value: n as i64,
                reason: format!("a sequence's {window}-position window and a token need {least}"),
            });
        }
        Ok(Some((window, n)))
    }
}
