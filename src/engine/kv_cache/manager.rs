//! The scheduler's view of the KV cache: block tables per request, prefix-cache lookup,
//! slot allocation and freeing.

use std::collections::HashMap;

use super::super::request::Request;
use super::{BlockId, BlockPool, KvCacheConfigError, PrefixId};

/// Prefix-cache counters, in tokens.
///
/// Counted once per admission that the cache was consulted for (a request blocked at the
/// head of the queue is not counted again every step; a preempted request admitted again
/// is counted again): `queries` is the admitted request's token count (prompt, plus outputs
/// after a preemption), `hits` the tokens its cached blocks covered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrefixCacheStats {
    /// Tokens looked up.
    pub queries: u64,
    /// Tokens served from the cache.
    pub hits: u64,
}

impl PrefixCacheStats {
    /// `hits / queries`, or 0 before any query.
    pub fn hit_rate(&self) -> f64 {
        if self.queries == 0 {
            0.0
        } else {
            self.hits as f64 / self.queries as f64
        }
    }

    /// The counts added since `earlier`.
    pub fn since(&self, earlier: &PrefixCacheStats) -> PrefixCacheStats {
        PrefixCacheStats {
            queries: self.queries.saturating_sub(earlier.queries),
            hits: self.hits.saturating_sub(earlier.hits),
        }
    }
}

/// A request's cached prefix, found by [`KvCacheManager::get_computed_blocks`], to pass to
/// [`KvCacheManager::allocate_slots`] when it is admitted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ComputedBlocks {
    blocks: Vec<BlockId>,
    /// What each block held at lookup, so that allocation can tell the lookup went stale.
    prefixes: Vec<PrefixId>,
    num_tokens: usize,
    num_query_tokens: usize,
}

impl ComputedBlocks {
    /// The cached blocks, in order from the sequence's start.
    pub fn blocks(&self) -> &[BlockId] {
        &self.blocks
    }

    /// Tokens the cached blocks cover (whole blocks): no need to compute them.
    pub fn num_tokens(&self) -> usize {
        self.num_tokens
    }

    /// Whether nothing was found.
    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }
}

/// One request's blocks.
#[derive(Debug)]
struct RequestBlocks {
    /// The block table: append-only until the request frees it whole.
    blocks: Vec<BlockId>,
    /// Leading blocks already offered to the prefix cache: each step looks only at the
    /// blocks filled since, never rehashing the prompt.
    num_cached_blocks: usize,
    /// The prefix the first `num_cached_blocks` blocks end: the parent of the next one.
    last_prefix: PrefixId,
    /// Set when a block could not be cached: its successors have no parent to chain onto.
    caching_stopped: bool,
}

/// The only KV-cache API the scheduler uses: who holds which blocks, and which computed
/// blocks can be shared.
#[derive(Debug)]
pub struct KvCacheManager {
    pool: BlockPool,
    enable_prefix_caching: bool,
    requests: HashMap<String, RequestBlocks>,
    stats: PrefixCacheStats,
}

impl KvCacheManager {
    /// A manager over `num_blocks` free blocks of `block_size` tokens.
    pub fn new(
        num_blocks: usize,
        block_size: usize,
        enable_prefix_caching: bool,
    ) -> Result<Self, KvCacheConfigError> {
        Ok(Self {
            pool: BlockPool::new(num_blocks, block_size)?,
            enable_prefix_caching,
            requests: HashMap::new(),
            stats: PrefixCacheStats::default(),
        })
    }

    /// Checks a pool shape without allocating it (what [`KvCacheManager::new`] would refuse).
    pub fn check_config(num_blocks: usize, block_size: usize) -> Result<(), KvCacheConfigError> {
        BlockPool::check_config(num_blocks, block_size).map(|_| ())
    }

    /// Token slots per block.
    pub fn block_size(&self) -> usize {
        self.pool.block_size()
    }

    /// Blocks in the pool.
    pub fn num_total_blocks(&self) -> usize {
        self.pool.num_blocks()
    }

    /// Blocks no request holds (including cached blocks that allocation may evict).
    pub fn num_free_blocks(&self) -> usize {
        self.pool.num_free_blocks()
    }

    /// Fraction of the blocks held by requests, from 0 to 1.
    pub fn usage(&self) -> f32 {
        let total = self.num_total_blocks();
        (total - self.num_free_blocks()) as f32 / total as f32
    }

    /// Whether computed full blocks are kept for reuse by later requests.
    pub fn enable_prefix_caching(&self) -> bool {
        self.enable_prefix_caching
    }

    /// Prefix-cache counters since the start.
    pub fn prefix_cache_stats(&self) -> PrefixCacheStats {
        self.stats
    }

    /// The block pool, read-only (for telemetry and tests).
    pub fn pool(&self) -> &BlockPool {
        &self.pool
    }

    /// Requests that hold blocks.
    pub fn num_requests(&self) -> usize {
        self.requests.len()
    }

    /// The blocks of `request_id` in sequence order (empty if it holds none).
    pub fn block_table(&self, request_id: &str) -> &[BlockId] {
        self.requests
            .get(request_id)
            .map_or(&[], |entry| entry.blocks.as_slice())
    }

    /// The longest prefix of `request`'s tokens held by cached full blocks.
    ///
    /// Never the whole sequence: at least one token is left to compute, because sampling
    /// needs the logits of the last position (vLLM's rule). Takes no reference; pass the
    /// result to [`KvCacheManager::allocate_slots`] right away. Empty when prefix caching
    /// is off.
    pub fn get_computed_blocks(&self, request: &Request) -> ComputedBlocks {
        if !self.enable_prefix_caching || request.num_tokens() == 0 {
            return ComputedBlocks::default();
        }
        let block_size = self.block_size();
        let max_blocks = (request.num_tokens() - 1) / block_size;
        let mut found = ComputedBlocks {
            num_query_tokens: request.num_tokens(),
            ..ComputedBlocks::default()
        };
        let mut parent = PrefixId::EMPTY;
        for tokens in request
            .all_token_ids()
            .chunks_exact(block_size)
            .take(max_blocks)
        {
            let Some((block, prefix)) = self.pool.lookup(parent, tokens) else {
                break;
            };
            found.blocks.push(block);
            found.prefixes.push(prefix);
            parent = prefix;
        }
        found.num_tokens = found.blocks.len() * block_size;
        found
    }

    /// Gives `request` the blocks to hold `num_new_tokens` more tokens, after its computed
    /// tokens and the prefix-cache hit `new_computed` (empty except at admission).
    ///
    /// ```text
    /// Admission: nothing computed, a prefix hit of 2 blocks, 6 new tokens (block size 4)
    ///
    /// token  |  0  1  2  3|  4  5  6  7|  8  9 10 11| 12 13  .  .|
    /// block  |   hit h0   |   hit h1   |  fresh f0  |  fresh f1  |
    ///          <----- prefix hit ----->  < num_new_tokens >
    ///
    /// A later step: 13 tokens computed, 4 new; the table grows only at its end
    ///
    /// token  |  0  1  2  3|  4  5  6  7|  8  9 10 11| 12 13 14 15| 16  .  .  .|
    /// block  |     h0     |     h1     |     f0     |     f1     |  fresh f2  |
    ///          <--------- num_computed_tokens ---------> <-- new --->
    ///
    /// (. = slots for tokens not scheduled yet)
    /// ```
    ///
    /// Hit blocks gain a reference (leaving the free list if they were free); fresh blocks
    /// come from the head of the free list. Returns the blocks appended to the table (hits
    /// first), possibly none; or `None`, changing nothing, if the pool cannot supply them
    /// (a free hit block counts against the free blocks too, since taking it makes it
    /// unavailable), or if `new_computed` is stale or comes with a request that already
    /// computed something.
    pub fn allocate_slots(
        &mut self,
        request: &Request,
        num_new_tokens: usize,
        new_computed: &ComputedBlocks,
    ) -> Option<Vec<BlockId>> {
        let existing = self.requests.get(request.request_id());
        let num_existing = existing.map_or(0, |entry| entry.blocks.len());
        if !new_computed.is_empty() {
            let fresh_request = num_existing == 0 && request.num_computed_tokens() == 0;
            let still_cached = new_computed
                .blocks
                .iter()
                .zip(&new_computed.prefixes)
                .all(|(&block, &prefix)| self.pool.prefix_id(block) == Some(prefix));
            if !fresh_request || !still_cached {
                return None;
            }
        }
        let num_tokens = request
            .num_computed_tokens()
            .checked_add(new_computed.num_tokens)?
            .checked_add(num_new_tokens)?;
        let num_fresh = num_tokens
            .div_ceil(self.block_size())
            .saturating_sub(num_existing + new_computed.blocks.len());
        let num_free_hits = new_computed
            .blocks
            .iter()
            .filter(|&&block| self.pool.ref_count(block) == 0)
            .count();
        if num_fresh + num_free_hits > self.pool.num_free_blocks() {
            return None;
        }

        // Hits first: taking them off the free list keeps allocation from evicting them.
        self.pool.touch(&new_computed.blocks);
        let Some(fresh) = self.pool.allocate(num_fresh) else {
            debug_assert!(
                false,
                "the free-block check above guarantees the allocation"
            );
            self.pool.free(new_computed.blocks.iter().rev().copied());
            return None;
        };
        let mut new_blocks = new_computed.blocks.clone();
        new_blocks.extend_from_slice(&fresh);
        if new_blocks.is_empty() {
            return Some(new_blocks);
        }
        let entry = match self.requests.get_mut(request.request_id()) {
            Some(entry) => entry,
            None => self
                .requests
                .entry(request.request_id().to_owned())
                .or_insert_with(|| RequestBlocks {
                    blocks: Vec::new(),
                    num_cached_blocks: 0,
                    last_prefix: PrefixId::EMPTY,
                    caching_stopped: false,
                }),
        };
        if let Some(&last) = new_computed.prefixes.last() {
            entry.num_cached_blocks = new_computed.blocks.len();
            entry.last_prefix = last;
        }
        entry.blocks.extend_from_slice(&new_blocks);
        if new_computed.num_query_tokens > 0 {
            self.stats.queries += new_computed.num_query_tokens as u64;
            self.stats.hits += new_computed.num_tokens as u64;
        }
        Some(new_blocks)
    }

    /// Caches `request`'s blocks that its computed tokens have filled since the last call,
    /// so later requests can share them. Call after the model computed them: a block is
    /// only shareable once its keys and values are written.
    pub fn cache_full_blocks(&mut self, request: &Request) {
        if !self.enable_prefix_caching {
            return;
        }
        let block_size = self.pool.block_size();
        let Some(entry) = self.requests.get_mut(request.request_id()) else {
            return;
        };
        let num_full = (request.num_computed_tokens() / block_size).min(entry.blocks.len());
        while !entry.caching_stopped && entry.num_cached_blocks < num_full {
            let index = entry.num_cached_blocks;
            let start = index * block_size;
            let cached = request
                .all_token_ids()
                .get(start..start + block_size)
                .and_then(|tokens| {
                    self.pool
                        .cache_block(entry.blocks[index], entry.last_prefix, tokens)
                });
            match cached {
                Some(prefix) => {
                    entry.last_prefix = prefix;
                    entry.num_cached_blocks += 1;
                }
                None => entry.caching_stopped = true,
            }
        }
    }

    /// Releases all of `request_id`'s blocks. Cached blocks stay findable until evicted;
    /// the table is freed from its end, so a sequence's last blocks are evicted before its
    /// first ones, which more requests share.
    pub fn free(&mut self, request_id: &str) {
        if let Some(entry) = self.requests.remove(request_id) {
            self.pool.free(entry.blocks.into_iter().rev());
        }
    }

    /// Empties the prefix cache if no request holds blocks; returns whether it did.
    pub fn reset_prefix_cache(&mut self) -> bool {
        self.pool.reset_prefix_cache()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(id: &str, prompt: &[u32]) -> Request {
        Request::new(id, prompt.to_vec())
    }

    /// Admits `request` like the scheduler does; returns its cache hit.
    fn admit(kv: &mut KvCacheManager, request: &mut Request) -> ComputedBlocks {
        let hit = kv.get_computed_blocks(request);
        let num_new = request.num_tokens() - hit.num_tokens();
        kv.allocate_slots(request, num_new, &hit).unwrap();
        request.admit(hit.num_tokens(), hit.blocks().len());
        request.advance_computed(num_new);
        kv.cache_full_blocks(request);
        hit
    }

    #[test]
    fn allocation_covers_computed_hit_and_new_tokens() {
        let mut kv = KvCacheManager::new(8, 4, true).unwrap();
        let a = request("a", &[1, 2, 3, 4, 5]);
        let blocks = kv
            .allocate_slots(&a, 3, &ComputedBlocks::default())
            .unwrap();
        assert_eq!(blocks.len(), 1);
        // Nothing computed yet: slots for 4 tokens fit the block already held.
        assert_eq!(
            kv.allocate_slots(&a, 4, &ComputedBlocks::default()),
            Some(vec![])
        );
        assert_eq!(
            kv.allocate_slots(&a, 5, &ComputedBlocks::default())
                .unwrap()
                .len(),
            1
        );
        assert_eq!(kv.block_table("a").len(), 2);
        assert_eq!(kv.usage(), 0.25);
        assert_eq!(kv.allocate_slots(&a, 100, &ComputedBlocks::default()), None);
        assert_eq!(
            kv.block_table("a").len(),
            2,
            "a failed allocation changes nothing"
        );
        kv.free("a");
        assert_eq!(kv.num_free_blocks(), 8);
        assert_eq!(kv.num_requests(), 0);
    }

    #[test]
    fn second_request_reuses_the_shared_prefix() {
        let mut kv = KvCacheManager::new(16, 4, true).unwrap();
        let mut a = request("a", &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
        assert!(admit(&mut kv, &mut a).is_empty());
        let a_table = kv.block_table("a").to_vec();

        let mut b = request("b", &[1, 2, 3, 4, 5, 6, 7, 8, 42, 43]);
        let hit = admit(&mut kv, &mut b);
        assert_eq!(hit.blocks(), &a_table[..2]);
        assert_eq!(hit.num_tokens(), 8);
        assert_eq!(kv.pool().ref_count(a_table[0]), 2);
        assert_eq!(&kv.block_table("b")[..2], &a_table[..2]);
        assert_ne!(kv.block_table("b")[2], a_table[2]);
        assert_eq!(b.num_computed_prompt_tokens(), 2);
        assert_eq!(
            kv.prefix_cache_stats(),
            PrefixCacheStats {
                queries: 20,
                hits: 8
            }
        );
    }

    #[test]
    fn never_the_whole_sequence_from_cache() {
        let mut kv = KvCacheManager::new(16, 4, true).unwrap();
        let mut a = request("a", &[1, 2, 3, 4, 5, 6, 7, 8]);
        admit(&mut kv, &mut a);
        kv.free("a");
        let b = request("b", &[1, 2, 3, 4, 5, 6, 7, 8]);
        // Two cached blocks hold all 8 tokens, but the last token must be computed.
        assert_eq!(kv.get_computed_blocks(&b).num_tokens(), 4);
    }

    #[test]
    fn hits_on_free_blocks_count_against_free_space() {
        let mut kv = KvCacheManager::new(3, 2, true).unwrap();
        let mut a = request("a", &[1, 2, 3, 4, 5]);
        admit(&mut kv, &mut a);
        kv.free("a");
        assert_eq!(kv.num_free_blocks(), 3);
        let b = request("b", &[1, 2, 3, 4, 9, 9, 9, 9]);
        let hit = kv.get_computed_blocks(&b);
        assert_eq!(hit.blocks().len(), 2);
        // 8 tokens need 4 blocks: 2 hits plus 2 fresh, but only 3 blocks exist.
        assert_eq!(kv.allocate_slots(&b, 4, &hit), None);
        assert_eq!(kv.num_free_blocks(), 3);
        assert_eq!(kv.allocate_slots(&b, 1, &hit).map(|v| v.len()), Some(3));
        assert_eq!(kv.num_free_blocks(), 0);
    }

    #[test]
    fn stale_lookup_is_refused() {
        let mut kv = KvCacheManager::new(2, 2, true).unwrap();
        let mut a = request("a", &[1, 2, 3]);
        admit(&mut kv, &mut a);
        kv.free("a");
        let b = request("b", &[1, 2, 3]);
        let hit = kv.get_computed_blocks(&b);
        assert_eq!(hit.blocks().len(), 1);
        // Someone else takes both blocks (evicting the hit), then lets them go.
        let c = request("c", &[7, 7, 7, 7]);
        kv.allocate_slots(&c, 4, &ComputedBlocks::default())
            .unwrap();
        kv.free("c");
        assert_eq!(kv.allocate_slots(&b, 1, &hit), None);
        assert_eq!(kv.num_free_blocks(), 2);
    }

    #[test]
    fn disabled_cache_finds_nothing() {
        let mut kv = KvCacheManager::new(8, 2, false).unwrap();
        let mut a = request("a", &[1, 2, 3, 4, 5]);
        admit(&mut kv, &mut a);
        kv.free("a");
        assert!(kv
            .get_computed_blocks(&request("b", &[1, 2, 3, 4, 5]))
            .is_empty());
        assert_eq!(kv.pool().num_cached_blocks(), 0);
        assert_eq!(kv.prefix_cache_stats(), PrefixCacheStats::default());
    }

    #[test]
    fn free_releases_the_tail_first() {
        let mut kv = KvCacheManager::new(4, 1, true).unwrap();
        let mut a = request("a", &[1, 2, 3]);
        admit(&mut kv, &mut a);
        let table = kv.block_table("a").to_vec();
        kv.free("a");
        let order: Vec<_> = kv.pool().free_blocks().collect();
        // Block 3 was never used; then a's blocks, last first.
        assert_eq!(order, [BlockId(3), table[2], table[1], table[0]]);
    }
}
