//! The one operation the paged KV cache needs that burn does not do in place on every backend.

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorPrimitive};

/// A run of consecutive cache slots written from consecutive rows of the new keys/values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RowRun {
    /// First destination slot (`block_id * block_size + offset`).
    pub dst_slot: usize,
    /// First source row in the packed batch.
    pub src_row: usize,
    /// Number of rows.
    pub len: usize,
}

/// A burn backend that can overwrite rows of a cache pool.
///
/// `slice_assign` on flex copies the whole destination tensor (it clones the storage handle
/// before writing), which would turn every cache write into a copy of the entire pool. So each
/// backend gets the cheapest write it can offer: flex writes into the uniquely owned buffer.
pub trait CacheBackend: Backend {
    /// Returns `pool` with rows `run.dst_slot..run.dst_slot + run.len` replaced by rows
    /// `run.src_row..` of `src`, columns `src_col..src_col + width`, for every run.
    ///
    /// # Shapes
    /// - `pool`: `[num_slots, width]`
    /// - `src`: `[num_rows, src_width]` with `src_col + width <= src_width`
    fn write_cache_rows(
        pool: Tensor<Self, 2>,
        runs: &[RowRun],
        src: &Tensor<Self, 2>,
        src_col: usize,
    ) -> Tensor<Self, 2>;
}

impl CacheBackend for burn::backend::Flex {
    fn write_cache_rows(
        pool: Tensor<Self, 2>,
        runs: &[RowRun],
        src: &Tensor<Self, 2>,
        src_col: usize,
    ) -> Tensor<Self, 2> {
        let [_, width] = pool.dims();
        let [_, src_width] = src.dims();
        let mut pool = pool.into_primitive().tensor();
        let full_buffer = pool.bytes().len() == pool.layout().num_elements() * 4;
        if !(pool.is_contiguous() && pool.layout().start_offset() == 0 && full_buffer) {
            pool = pool.to_contiguous();
        }
        let src = src.clone().into_primitive().tensor().to_contiguous();
        let src_rows: &[f32] = src.storage();
        // Unique ownership (the cache is the only holder) makes this a write, not a copy.
        let dst_rows: &mut [f32] = pool.storage_mut();
        for run in runs {
            for i in 0..run.len {
                let dst = (run.dst_slot + i) * width;
                let from = (run.src_row + i) * src_width + src_col;
                dst_rows[dst..dst + width].copy_from_slice(&src_rows[from..from + width]);
            }
        }
        Tensor::from_primitive(TensorPrimitive::Float(pool))
    }
}

#[cfg(feature = "cuda")]
impl CacheBackend for burn::backend::Cuda {
    fn write_cache_rows(
        pool: Tensor<Self, 2>,
        runs: &[RowRun],
        src: &Tensor<Self, 2>,
        src_col: usize,
    ) -> Tensor<Self, 2> {
        let [_, width] = pool.dims();
        runs.iter().fold(pool, |pool, run| {
            let rows = src
                .clone()
                .slice([run.src_row..run.src_row + run.len, src_col..src_col + width]);
            pool.slice_assign([run.dst_slot..run.dst_slot + run.len, 0..width], rows)
        })
    }
}
