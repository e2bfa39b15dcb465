//! The blocks of the KV pool: reference counts, the cached full blocks and the free list in
//! eviction order.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, RandomState};

use super::{BlockId, KvCacheConfigError};

/// Identity of a cached block *and of everything before it*: the parent half of the next
/// block's cache key.
///
/// Each block that enters the prefix cache gets a new id, never reused, so a key naming a
/// parent that has since been evicted (and perhaps refilled with other tokens) matches
/// nothing: a stale child is unreachable instead of wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PrefixId(u64);

impl PrefixId {
    /// The empty prefix: the parent of every sequence's first block.
    pub const EMPTY: PrefixId = PrefixId(0);
}

/// End-of-list marker in [`FreeList`]; block ids stay below it (checked at construction).
const NIL: u32 = u32::MAX;

/// Free blocks in eviction order: a doubly linked list threaded through per-block arrays,
/// like vLLM's `FreeKVCacheBlockQueue`, so that a block leaves from anywhere in O(1) (a
/// prefix-cache hit on a free block) without a search.
#[derive(Clone, Debug)]
struct FreeList {
    prev: Vec<u32>,
    next: Vec<u32>,
    linked: Vec<bool>,
    head: u32,
    tail: u32,
    len: usize,
}

impl FreeList {
    /// Every block free, in id order. `num_blocks` must be below [`NIL`].
    fn with_all(num_blocks: u32) -> Self {
        let prev = (0..num_blocks)
            .map(|b| b.checked_sub(1).unwrap_or(NIL))
            .collect();
        let next = (0..num_blocks)
            .map(|b| if b + 1 == num_blocks { NIL } else { b + 1 })
            .collect();
        Self {
            prev,
            next,
            linked: vec![true; num_blocks as usize],
            head: if num_blocks == 0 { NIL } else { 0 },
            tail: num_blocks.checked_sub(1).unwrap_or(NIL),
            len: num_blocks as usize,
        }
    }

    fn contains(&self, block: u32) -> bool {
        self.linked.get(block as usize).copied().unwrap_or(false)
    }

    fn push_back(&mut self, block: u32) {
        let i = block as usize;
        if i >= self.linked.len() || self.linked[i] {
            return;
        }
        self.prev[i] = self.tail;
        self.next[i] = NIL;
        match self.tail {
            NIL => self.head = block,
            tail => self.next[tail as usize] = block,
        }
        self.tail = block;
        self.linked[i] = true;
        self.len += 1;
    }

    fn remove(&mut self, block: u32) -> bool {
        if !self.contains(block) {
            return false;
        }
        let i = block as usize;
        let (prev, next) = (self.prev[i], self.next[i]);
        match prev {
            NIL => self.head = next,
            prev => self.next[prev as usize] = next,
        }
        match next {
            NIL => self.tail = prev,
            next => self.prev[next as usize] = prev,
        }
        self.prev[i] = NIL;
        self.next[i] = NIL;
        self.linked[i] = false;
        self.len -= 1;
        true
    }

    fn pop_front(&mut self) -> Option<u32> {
        let head = self.head;
        self.remove(head).then_some(head)
    }

    fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        let first = (self.head != NIL).then_some(self.head);
        std::iter::successors(first, move |&block| {
            let next = self.next[block as usize];
            (next != NIL).then_some(next)
        })
    }
}

/// What the prefix cache knows of one cached block.
#[derive(Clone, Copy, Debug)]
struct CacheEntry {
    /// Key hash, to find the map entry again on eviction.
    hash: u64,
    /// This block's identity, the parent of the next block.
    prefix: PrefixId,
    /// The block before it.
    parent: PrefixId,
}

/// Owns the pool's blocks: who uses them, which are cached and which are free.
///
/// A block is *in use* while its reference count is positive (one per request holding it;
/// a cached prefix block can be held by several). A block whose count drops to zero joins
/// the tail of the free list, keeping its cache entry: it can still be found (and leaves
/// the free list again) until allocation pops it from the head and evicts its entry. So
/// the free list is in least-recently-freed order, and eviction is LRU.
pub struct BlockPool {
    block_size: usize,
    ref_counts: Vec<u32>,
    entries: Vec<Option<CacheEntry>>,
    /// `block_size` token ids per block, meaningful for cached blocks: cache hits are
    /// checked against them, so that only identical content is ever shared.
    tokens: Vec<u32>,
    cached: HashMap<u64, BlockId>,
    free: FreeList,
    last_prefix: u64,
    /// Randomly keyed SipHash: the hashes never leave the process (so they need not be
    /// stable), and clients cannot craft keys that collide with someone else's prefix.
    hasher: RandomState,
}

impl BlockPool {
    /// A pool of `num_blocks` free blocks of `block_size` token slots each.
    pub fn new(num_blocks: usize, block_size: usize) -> Result<Self, KvCacheConfigError> {
        let (ids, num_slots) = Self::check_config(num_blocks, block_size)?;
        Ok(Self {
            block_size,
            ref_counts: vec![0; num_blocks],
            entries: vec![None; num_blocks],
            tokens: vec![0; num_slots],
            // A block is cached at most once, so the index never outgrows this and never
            // rehashes: no pause on the engine thread, and no memory creeping up as the free
            // list cycles through the pool (a soak showed it: docs/BENCHMARKS.md).
            cached: HashMap::with_capacity(num_blocks),
            free: FreeList::with_all(ids),
            last_prefix: PrefixId::EMPTY.0,
            hasher: RandomState::new(),
        })
    }

    /// Checks a pool shape without allocating it; returns the block count as an id bound
    /// and the number of token slots.
    pub fn check_config(
        num_blocks: usize,
        block_size: usize,
    ) -> Result<(u32, usize), KvCacheConfigError> {
        if block_size == 0 {
            return Err(KvCacheConfigError::ZeroBlockSize);
        }
        if num_blocks == 0 {
            return Err(KvCacheConfigError::ZeroBlocks);
        }
        let too_many = KvCacheConfigError::TooManyBlocks(num_blocks);
        let ids = u32::try_from(num_blocks)
            .ok()
            .filter(|&n| n < NIL)
            .ok_or(too_many.clone())?;
        let num_slots = num_blocks.checked_mul(block_size).ok_or(too_many)?;
        Ok((ids, num_slots))
    }

    /// Token slots per block.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Blocks in the pool.
    pub fn num_blocks(&self) -> usize {
        self.ref_counts.len()
    }

    /// Blocks no request holds (cached or not): what allocation can use.
    pub fn num_free_blocks(&self) -> usize {
        self.free.len
    }

    /// Blocks in the prefix cache, in use or free.
    pub fn num_cached_blocks(&self) -> usize {
        self.cached.len()
    }

    /// Requests holding `block` (0 for a free block or an unknown id).
    pub fn ref_count(&self, block: BlockId) -> u32 {
        self.ref_counts.get(block.index()).copied().unwrap_or(0)
    }

    /// The prefix `block` ends, if it is in the prefix cache.
    pub fn prefix_id(&self, block: BlockId) -> Option<PrefixId> {
        self.entries
            .get(block.index())
            .copied()
            .flatten()
            .map(|e| e.prefix)
    }

    /// The free blocks, next to be allocated (and evicted) first.
    pub fn free_blocks(&self) -> impl Iterator<Item = BlockId> + '_ {
        self.free.iter().map(BlockId)
    }

    /// Takes `num_blocks` blocks from the head of the free list, evicting their cache
    /// entries; each starts with one reference. `None`, with nothing taken, if fewer are
    /// free.
    pub fn allocate(&mut self, num_blocks: usize) -> Option<Vec<BlockId>> {
        if num_blocks > self.free.len {
            return None;
        }
        let mut blocks = Vec::with_capacity(num_blocks);
        for _ in 0..num_blocks {
            let block = BlockId(self.free.pop_front()?);
            self.evict(block);
            self.ref_counts[block.index()] = 1;
            blocks.push(block);
        }
        Some(blocks)
    }

    /// Adds a reference to each block; a free one (a prefix-cache hit on a freed block)
    /// leaves the free list, keeping its cache entry. Unknown ids are ignored.
    pub fn touch(&mut self, blocks: &[BlockId]) {
        for &block in blocks {
            let Some(count) = self.ref_counts.get_mut(block.index()) else {
                continue;
            };
            if *count == 0 {
                self.free.remove(block.0);
            }
            *count = count.saturating_add(1);
        }
    }

    /// Drops one reference from each block, in order; a block no longer held joins the
    /// tail of the free list (so blocks given earlier are evicted earlier). Cache entries
    /// stay. Unknown ids and blocks already free are ignored.
    pub fn free(&mut self, blocks: impl IntoIterator<Item = BlockId>) {
        for block in blocks {
            let Some(count) = self.ref_counts.get_mut(block.index()) else {
                continue;
            };
            if *count == 0 {
                continue;
            }
            *count -= 1;
            if *count == 0 {
                self.free.push_back(block.0);
            }
        }
    }

    /// The cached block holding `tokens` right after the prefix `parent`, and the prefix
    /// it ends. Does not take a reference (see [`BlockPool::touch`]).
    pub fn lookup(&self, parent: PrefixId, tokens: &[u32]) -> Option<(BlockId, PrefixId)> {
        let block = *self.cached.get(&self.key_hash(parent, tokens))?;
        let entry = self.entries.get(block.index()).copied().flatten()?;
        (entry.parent == parent && self.block_tokens(block) == Some(tokens))
            .then_some((block, entry.prefix))
    }

    /// Enters `block`, holding `tokens` (a full block, already computed) right after
    /// `parent`, into the prefix cache. Returns the prefix it ends, to key the next block.
    ///
    /// If an identical block is already cached (two requests computed the same prefix at
    /// once), `block` stays out of the cache and the existing block's prefix is returned,
    /// so the caller's later blocks still chain onto the cached copy. `None` if the block
    /// cannot be cached: an unknown id, a partial block, or (practically never) a hash
    /// collision with a different cached block.
    pub fn cache_block(
        &mut self,
        block: BlockId,
        parent: PrefixId,
        tokens: &[u32],
    ) -> Option<PrefixId> {
        if tokens.len() != self.block_size {
            return None;
        }
        if let Some(entry) = self.entries.get(block.index()).copied()? {
            // Already cached (a prefix-cache hit): fine if it holds what the caller says.
            return (entry.parent == parent && self.block_tokens(block) == Some(tokens))
                .then_some(entry.prefix);
        }
        let hash = self.key_hash(parent, tokens);
        if self.cached.contains_key(&hash) {
            return self.lookup(parent, tokens).map(|(_, prefix)| prefix);
        }
        self.last_prefix += 1;
        let prefix = PrefixId(self.last_prefix);
        let start = block.index() * self.block_size;
        self.tokens[start..start + self.block_size].copy_from_slice(tokens);
        self.entries[block.index()] = Some(CacheEntry {
            hash,
            prefix,
            parent,
        });
        self.cached.insert(hash, block);
        Some(prefix)
    }

    /// Empties the prefix cache, if no block is in use (a block in use may be in a running
    /// request's cached prefix, which the request's later blocks chain onto). Returns
    /// whether it did.
    pub fn reset_prefix_cache(&mut self) -> bool {
        if self.free.len != self.num_blocks() {
            return false;
        }
        self.cached.clear();
        self.entries.fill(None);
        true
    }

    fn evict(&mut self, block: BlockId) {
        let Some(entry) = self.entries.get_mut(block.index()).and_then(Option::take) else {
            return;
        };
        if self.cached.get(&entry.hash) == Some(&block) {
            self.cached.remove(&entry.hash);
        }
    }

    fn block_tokens(&self, block: BlockId) -> Option<&[u32]> {
        let start = block.index().checked_mul(self.block_size)?;
        self.tokens.get(start..start.checked_add(self.block_size)?)
    }

    fn key_hash(&self, parent: PrefixId, tokens: &[u32]) -> u64 {
        self.hasher.hash_one((parent.0, tokens))
    }
}

impl fmt::Debug for BlockPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Counts only: cached blocks hold users' token ids.
        f.debug_struct("BlockPool")
            .field("block_size", &self.block_size)
            .field("num_blocks", &self.num_blocks())
            .field("num_free_blocks", &self.num_free_blocks())
            .field("num_cached_blocks", &self.num_cached_blocks())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(blocks: impl IntoIterator<Item = BlockId>) -> Vec<u32> {
        blocks.into_iter().map(|b| b.0).collect()
    }

    #[test]
    fn free_list_removes_from_anywhere_in_constant_time() {
        let mut list = FreeList::with_all(5);
        assert!(list.remove(2));
        assert!(list.remove(0));
        assert!(list.remove(4));
        assert!(!list.remove(4), "already out");
        assert!(!list.remove(9), "unknown");
        assert_eq!(list.iter().collect::<Vec<_>>(), [1, 3]);
        list.push_back(0);
        list.push_back(0);
        assert_eq!(list.iter().collect::<Vec<_>>(), [1, 3, 0]);
        assert_eq!(list.pop_front(), Some(1));
        assert_eq!(list.pop_front(), Some(3));
        assert_eq!(list.pop_front(), Some(0));
        assert_eq!(list.pop_front(), None);
        assert_eq!(list.len, 0);
        list.push_back(2);
        assert_eq!(list.iter().collect::<Vec<_>>(), [2]);
    }

    #[test]
    fn rejects_bad_shapes() {
        assert_eq!(
            BlockPool::new(4, 0).err(),
            Some(KvCacheConfigError::ZeroBlockSize)
        );
        assert_eq!(
            BlockPool::new(0, 4).err(),
            Some(KvCacheConfigError::ZeroBlocks)
        );
        assert!(matches!(
            BlockPool::new(u32::MAX as usize, 1),
            Err(KvCacheConfigError::TooManyBlocks(_))
        ));
    }

    #[test]
    fn least_recently_freed_is_evicted_first() {
        let mut pool = BlockPool::new(4, 2).unwrap();
        let blocks = pool.allocate(4).unwrap();
        assert_eq!(ids(blocks.clone()), [0, 1, 2, 3]);
        assert_eq!(pool.allocate(1), None, "nothing free, nothing taken");
        pool.free([BlockId(2), BlockId(0)]);
        pool.free([BlockId(3), BlockId(1)]);
        assert_eq!(ids(pool.free_blocks()), [2, 0, 3, 1]);
        assert_eq!(ids(pool.allocate(3).unwrap()), [2, 0, 3]);
        assert_eq!(pool.num_free_blocks(), 1);
    }

    #[test]
    fn hit_on_a_free_block_takes_it_off_the_free_list() {
        let mut pool = BlockPool::new(3, 2).unwrap();
        let blocks = pool.allocate(3).unwrap();
        let first = pool
            .cache_block(blocks[0], PrefixId::EMPTY, &[1, 2])
            .unwrap();
        let second = pool.cache_block(blocks[1], first, &[3, 4]).unwrap();
        pool.free(blocks.iter().rev().copied());
        assert_eq!(ids(pool.free_blocks()), [2, 1, 0]);

        let (hit, prefix) = pool.lookup(PrefixId::EMPTY, &[1, 2]).unwrap();
        assert_eq!((hit, prefix), (blocks[0], first));
        pool.touch(&[hit]);
        assert_eq!(pool.ref_count(hit), 1);
        assert_eq!(ids(pool.free_blocks()), [2, 1]);
        // The hit block is never handed out while held, whatever the demand.
        assert_eq!(ids(pool.allocate(2).unwrap()), [2, 1]);
        assert_eq!(pool.allocate(1), None);
        // Block 1 was evicted on allocation; its content is gone from the cache.
        assert_eq!(pool.lookup(first, &[3, 4]), None);
        assert_eq!(pool.prefix_id(blocks[1]), None);
        assert_eq!(pool.prefix_id(blocks[0]), Some(first));
        let _ = second;
    }

    #[test]
    fn keys_are_exact_and_chained_on_the_parent() {
        let mut pool = BlockPool::new(4, 2).unwrap();
        let blocks = pool.allocate(4).unwrap();
        let a = pool
            .cache_block(blocks[0], PrefixId::EMPTY, &[1, 2])
            .unwrap();
        let b = pool
            .cache_block(blocks[1], PrefixId::EMPTY, &[5, 6])
            .unwrap();
        let a_child = pool.cache_block(blocks[2], a, &[7, 8]).unwrap();
        // The same tokens after another prefix are another block.
        assert_eq!(pool.lookup(b, &[7, 8]), None);
        assert_eq!(pool.lookup(a, &[7, 8]), Some((blocks[2], a_child)));
        assert_eq!(
            pool.lookup(a, &[7]),
            None,
            "partial blocks are never cached"
        );
        // A duplicate stays out of the cache but chains onto the cached copy.
        assert_eq!(pool.cache_block(blocks[3], a, &[7, 8]), Some(a_child));
        assert_eq!(pool.prefix_id(blocks[3]), None);
        assert_eq!(pool.num_cached_blocks(), 3);
        // Caching a cached block again is fine only with the same content.
        assert_eq!(
            pool.cache_block(blocks[0], PrefixId::EMPTY, &[1, 2]),
            Some(a)
        );
        assert_eq!(pool.cache_block(blocks[0], PrefixId::EMPTY, &[1, 3]), None);
        assert_eq!(
            pool.cache_block(BlockId(99), PrefixId::EMPTY, &[1, 2]),
            None
        );
    }

    #[test]
    fn a_hash_collision_costs_a_hit_never_correctness() {
        let mut pool = BlockPool::new(2, 2).unwrap();
        let blocks = pool.allocate(2).unwrap();
        pool.cache_block(blocks[0], PrefixId::EMPTY, &[1, 2])
            .unwrap();
        // Make [3, 4] hash to block 0's entry, as a collision would.
        let colliding = pool.key_hash(PrefixId::EMPTY, &[3, 4]);
        pool.cached.insert(colliding, blocks[0]);
        assert_eq!(pool.lookup(PrefixId::EMPTY, &[3, 4]), None);
        assert_eq!(pool.cache_block(blocks[1], PrefixId::EMPTY, &[3, 4]), None);
        assert_eq!(pool.prefix_id(blocks[1]), None);
    }

    #[test]
    fn evicted_parent_orphans_its_children() {
        let mut pool = BlockPool::new(2, 1).unwrap();
        let blocks = pool.allocate(2).unwrap();
        let parent = pool.cache_block(blocks[0], PrefixId::EMPTY, &[1]).unwrap();
        pool.cache_block(blocks[1], parent, &[2]).unwrap();
        pool.free([blocks[0]]);
        // The parent is refilled with other content and cached again: a new identity.
        let refill = pool.allocate(1).unwrap();
        let new_parent = pool.cache_block(refill[0], PrefixId::EMPTY, &[1]).unwrap();
        assert_ne!(new_parent, parent);
        assert_eq!(pool.lookup(new_parent, &[2]), None);
    }

    #[test]
    fn reset_needs_every_block_free() {
        let mut pool = BlockPool::new(2, 1).unwrap();
        let blocks = pool.allocate(1).unwrap();
        pool.cache_block(blocks[0], PrefixId::EMPTY, &[1]).unwrap();
        assert!(!pool.reset_prefix_cache());
        pool.free(blocks);
        assert!(pool.lookup(PrefixId::EMPTY, &[1]).is_some());
        assert!(pool.reset_prefix_cache());
        assert_eq!(pool.lookup(PrefixId::EMPTY, &[1]), None);
        assert_eq!(pool.num_cached_blocks(), 0);
        assert_eq!(pool.num_free_blocks(), 2);
    }

    #[test]
    fn bad_ids_are_ignored() {
        let mut pool = BlockPool::new(2, 1).unwrap();
        pool.touch(&[BlockId(7)]);
        pool.free([BlockId(7), BlockId(0)]);
        assert_eq!(pool.num_free_blocks(), 2);
        assert_eq!(pool.ref_count(BlockId(7)), 0);
        assert_eq!(pool.prefix_id(BlockId(7)), None);
    }
}
