//! What the model needs from a backend beyond burn's tensor ops: cache rows written in place,
//! and projections against weights laid out once for the backend's fastest matmul.

use burn::tensor::backend::Backend;
use burn::tensor::{FloatDType, Int, Tensor, TensorData, TensorPrimitive};

use super::attention::AttentionPlan;
use super::cpu::{
    rms_norm, rotate_heads, swiglu, write_keys_transposed, CpuEmbedding, CpuProjection, KeyLayout,
    PackedMatrix, PagedAttention,
};
use super::kv_cache::LayerPools;
use super::rope::{RotaryRows, RotaryTable};
use super::weights::ProjectionWeight;

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

/// A burn backend the model runs on.
///
/// `slice_assign` on flex copies the whole destination tensor (it clones the storage handle
/// before writing), which would turn every cache write into a copy of the entire pool. So each
/// backend gets the cheapest write it can offer: flex writes into the uniquely owned buffer.
///
/// Projections go through [`Self::Projection`]: flex's matmul re-packs its right-hand side on every
/// call, so on the CPU the weights are packed once at load ([`PackedMatrix`]).
pub trait ModelBackend: Backend {
    /// A projection's weight in the layout this backend multiplies fastest.
    type Projection: std::fmt::Debug + Send + Sync;

    /// The float type this backend computes in when `requested` is asked for. By default the
    /// request itself; flex's kernels are f32 only, so flex answers f32.
    fn compute_dtype(requested: FloatDType) -> FloatDType {
        requested
    }

    /// Runs one forward step: by default on the calling thread. Flex runs it on one of
    /// rayon's threads, so that each kernel's parallel loop starts inside the pool (its tasks
    /// pushed where the other threads steal them) instead of handing the pool a job and putting
    /// the calling thread to sleep until it is done, a sleep and a wake per kernel (`perf` put
    /// about a third of a one-stream decode step in the scheduler; `docs/BENCHMARKS.md`,
    /// "Quantized projections, second pass").
    fn run_step<R: Send>(step: impl FnOnce() -> R + Send) -> R {
        step()
    }

    /// The embedding table in the layout this backend looks rows up in.
    type Embedding: std::fmt::Debug + Send + Sync;

    /// Lays out the `[vocab, hidden]` embedding table, stored as `dtype`. Quantized blocks are
    /// kept by backends that read them (flex) and expanded to f32 by the others.
    fn pack_embedding(
        table: ProjectionWeight,
        device: &Self::Device,
        dtype: FloatDType,
    ) -> Self::Embedding;

    /// The table's rows for `ids` (each below the vocabulary size).
    ///
    /// # Shapes
    /// - returns `[ids.len(), hidden]`
    fn embed(table: &Self::Embedding, ids: &[u32], device: &Self::Device) -> Tensor<Self, 2>;

    /// Lays out a row-major `[out_features, in_features]` weight (PyTorch's `Linear.weight`),
    /// stored as `dtype` (one [`Self::compute_dtype`] returned). Quantized blocks are kept by
    /// backends that multiply them (flex) and expanded to f32 by the others.
    fn pack_projection(
        weight: ProjectionWeight,
        device: &Self::Device,
        dtype: FloatDType,
    ) -> Self::Projection;

    /// `x @ W^T`.
    ///
    /// # Shapes
    /// - `x`: `[rows, in_features]`, returns `[rows, out_features]`
    fn project(x: Tensor<Self, 2>, weight: &Self::Projection) -> Tensor<Self, 2>;

    /// `x * weight / sqrt(mean(x^2) + eps)` per row.
    ///
    /// # Shapes
    /// - `x`: `[rows, width]`, `weight`: `[1, width]`, returns `[rows, width]`
    ///
    /// The mean of squares is taken in f32 whatever the model's type, as transformers does:
    /// in f16 the squares of activations in the hundreds already overflow.
    fn rms_norm(x: Tensor<Self, 2>, weight: &Tensor<Self, 2>, eps: f64) -> Tensor<Self, 2> {
        let dtype = x.dtype();
        let x = x.cast(FloatDType::F32);
        let inv_rms = (x.clone() * x.clone())
            .mean_dim(1)
            .add_scalar(eps)
            .sqrt()
            .recip();
        (x * inv_rms).cast(dtype) * weight.clone()
    }

    /// RoPE on every head of `x` (`[num_tokens, heads * head_dim]`) with the batch's rows.
    fn rotate_heads(
        x: Tensor<Self, 2>,
        rows: &RotaryRows<Self>,
        table: &RotaryTable<Self>,
    ) -> Tensor<Self, 2> {
        table.apply_with_tensor_ops(x, rows)
    }

    /// `silu(gate) * up`, from the gate and up projections side by side.
    ///
    /// # Shapes
    /// - `gate_up`: `[rows, 2 * width]` (`[gate | up]`), returns `[rows, width]`
    fn swiglu(gate_up: Tensor<Self, 2>) -> Tensor<Self, 2> {
        let [_, double] = gate_up.dims();
        let width = double / 2;
        let gate = gate_up.clone().narrow(1, 0, width);
        burn::tensor::activation::silu(gate) * gate_up.narrow(1, width, width)
    }

    /// Attention of every packed query over its sequence's cached context (causal). The
    /// default gathers dense tensors with burn ops; backends with a paged kernel override it.
    ///
    /// # Shapes
    /// - `queries`: `[num_tokens, >= num_heads * head_dim]`, query heads first (RoPE applied)
    /// - `pools`: the layer's per-KV-head pools, each `[num_slots, head_dim]`, already holding
    ///   this pass's keys and values
    /// - returns `[num_tokens, num_heads * head_dim]`
    fn attend(
        plan: &AttentionPlan<Self>,
        queries: &Tensor<Self, 2>,
        pools: &LayerPools<Self>,
    ) -> Tensor<Self, 2> {
        plan.attend_dense(queries, pools)
    }

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

    /// [`Self::write_cache_rows`] for key pools, whose layout is the backend's choice: rows
    /// by default; flex transposes each block (`[head_dim, block_size]`) for its attention.
    fn write_cache_keys(
        pool: Tensor<Self, 2>,
        runs: &[RowRun],
        src: &Tensor<Self, 2>,
        src_col: usize,
        _layout: KeyLayout,
    ) -> Tensor<Self, 2> {
        Self::write_cache_rows(pool, runs, src, src_col)
    }
}

impl ModelBackend for burn::backend::Flex {
    type Projection = CpuProjection;
    type Embedding = CpuEmbedding;

    /// The CPU kernels compute in f32: half precision would only add conversions here, since
    /// the projections are bound by reading f32 panels and the CPUs we target have no fast
    /// half-precision arithmetic.
    fn compute_dtype(_requested: FloatDType) -> FloatDType {
        FloatDType::F32
    }

    fn run_step<R: Send>(step: impl FnOnce() -> R + Send) -> R {
        // The caller's subscriber and span go along, so whatever the step records stays
        // under the step's span.
        let dispatch = tracing::dispatcher::get_default(|d| d.clone());
        let span = tracing::Span::current();
        super::cpu::run_with_workers_awake(|| {
            tracing::dispatcher::with_default(&dispatch, || span.in_scope(step))
        })
    }

    fn pack_projection(
        weight: ProjectionWeight,
        _device: &Self::Device,
        _dtype: FloatDType,
    ) -> CpuProjection {
        match weight {
            ProjectionWeight::F32(w) => {
                CpuProjection::Packed(PackedMatrix::pack(&w.data, w.shape[0], w.shape[1]))
            }
            ProjectionWeight::Blocks {
                matrix: blocks,
                keep_f32,
            } => {
                let packed = keep_f32.then(|| {
                    PackedMatrix::pack(&blocks.dequantize(), blocks.rows(), blocks.cols())
                });
                CpuProjection::Blocks { blocks, packed }
            }
        }
    }

    fn pack_embedding(
        table: ProjectionWeight,
        _device: &Self::Device,
        _dtype: FloatDType,
    ) -> CpuEmbedding {
        match table {
            ProjectionWeight::F32(t) => CpuEmbedding::F32(t),
            // A lookup expands one row per token: never worth an f32 copy of the table.
            ProjectionWeight::Blocks { matrix, .. } => CpuEmbedding::Blocks(matrix),
        }
    }

    fn embed(table: &CpuEmbedding, ids: &[u32], _device: &Self::Device) -> Tensor<Self, 2> {
        let rows = table.lookup(ids);
        let hidden = rows.len().checked_div(ids.len()).unwrap_or(0);
        Tensor::from_data(
            TensorData::new(rows, [ids.len(), hidden]),
            &Default::default(),
        )
    }

    fn project(x: Tensor<Self, 2>, weight: &CpuProjection) -> Tensor<Self, 2> {
        let [rows, _] = x.dims();
        let x = x.into_primitive().tensor().to_contiguous();
        let out = weight.matmul(x.storage::<f32>());
        // `TensorData::new` wraps the vector; flex adopts those bytes without a copy.
        Tensor::from_data(
            TensorData::new(out, [rows, weight.out_features()]),
            &Default::default(),
        )
    }

    fn rms_norm(x: Tensor<Self, 2>, weight: &Tensor<Self, 2>, eps: f64) -> Tensor<Self, 2> {
        let [rows, width] = x.dims();
        let x = x.into_primitive().tensor().to_contiguous();
        let weight = weight.clone().into_primitive().tensor().to_contiguous();
        let out = rms_norm(x.storage::<f32>(), weight.storage::<f32>(), eps as f32);
        Tensor::from_data(TensorData::new(out, [rows, width]), &Default::default())
    }

    fn rotate_heads(
        x: Tensor<Self, 2>,
        rows: &RotaryRows<Self>,
        table: &RotaryTable<Self>,
    ) -> Tensor<Self, 2> {
        let mut x = x.into_primitive().tensor().to_contiguous();
        let cos = rows.cos.clone().into_primitive().tensor().to_contiguous();
        let sin = rows.sin.clone().into_primitive().tensor().to_contiguous();
        // The projection's output is ours alone, so this rotates in place.
        rotate_heads(
            x.storage_mut::<f32>(),
            cos.storage::<f32>(),
            sin.storage::<f32>(),
            table.style(),
            table.head_dim(),
        );
        Tensor::from_primitive(TensorPrimitive::Float(x))
    }

    fn swiglu(gate_up: Tensor<Self, 2>) -> Tensor<Self, 2> {
        let [rows, double] = gate_up.dims();
        let gate_up = gate_up.into_primitive().tensor().to_contiguous();
        let out = swiglu(gate_up.storage::<f32>(), double / 2);
        Tensor::from_data(
            TensorData::new(out, [rows, double / 2]),
            &Default::default(),
        )
    }

    fn attend(
        plan: &AttentionPlan<Self>,
        queries: &Tensor<Self, 2>,
        pools: &LayerPools<Self>,
    ) -> Tensor<Self, 2> {
        let heads = plan.heads();
        let [num_tokens, query_stride] = queries.dims();
        let queries = queries.clone().into_primitive().tensor().to_contiguous();
        // Handles on the pools' storage (reference counts, not copies), dropped before the
        // next layer writes its cache in place.
        let storage = |pools: &[Tensor<Self, 2>]| -> Vec<_> {
            pools
                .iter()
                .map(|p| p.clone().into_primitive().tensor().to_contiguous())
                .collect()
        };
        let (keys, values) = (storage(&pools.keys), storage(&pools.values));
        let key_slices: Vec<&[f32]> = keys.iter().map(|p| p.storage::<f32>()).collect();
        let value_slices: Vec<&[f32]> = values.iter().map(|p| p.storage::<f32>()).collect();
        let out = PagedAttention {
            queries: queries.storage::<f32>(),
            query_stride,
            keys: &key_slices,
            values: &value_slices,
            heads,
            block_size: plan.block_size(),
            sequences: plan.sequences(),
        }
        .run();
        Tensor::from_data(
            TensorData::new(out, [num_tokens, heads.num_heads * heads.head_dim]),
            &Default::default(),
        )
    }

    fn write_cache_rows(
        pool: Tensor<Self, 2>,
        runs: &[RowRun],
        src: &Tensor<Self, 2>,
        src_col: usize,
    ) -> Tensor<Self, 2> {
        let [_, width] = pool.dims();
        write_flex_pool(pool, src, |dst_rows, src_rows, src_width| {
            for run in runs {
                for i in 0..run.len {
                    let dst = (run.dst_slot + i) * width;
                    let from = (run.src_row + i) * src_width + src_col;
                    dst_rows[dst..dst + width].copy_from_slice(&src_rows[from..from + width]);
                }
            }
        })
    }

    fn write_cache_keys(
        pool: Tensor<Self, 2>,
        runs: &[RowRun],
        src: &Tensor<Self, 2>,
        src_col: usize,
        layout: KeyLayout,
    ) -> Tensor<Self, 2> {
        write_flex_pool(pool, src, |dst, src_rows, src_width| {
            write_keys_transposed(dst, layout, runs, src_rows, src_width, src_col)
        })
    }
}

/// Runs `write(pool, src, src_width)` on a flex pool's own buffer.
fn write_flex_pool(
    pool: Tensor<burn::backend::Flex, 2>,
    src: &Tensor<burn::backend::Flex, 2>,
    write: impl FnOnce(&mut [f32], &[f32], usize),
) -> Tensor<burn::backend::Flex, 2> {
    let [_, src_width] = src.dims();
    let mut pool = pool.into_primitive().tensor();
    let full_buffer = pool.bytes().len() == pool.layout().num_elements() * 4;
    if !(pool.is_contiguous() && pool.layout().start_offset() == 0 && full_buffer) {
        pool = pool.to_contiguous();
    }
    let src = src.clone().into_primitive().tensor().to_contiguous();
    // Unique ownership (the cache is the only holder) makes this a write, not a copy.
    write(pool.storage_mut(), src.storage(), src_width);
    Tensor::from_primitive(TensorPrimitive::Float(pool))
}

/// A backend that runs the model on burn's own tensor ops: every default of [`ModelBackend`],
/// a dense `[in_features, out_features]` weight for `matmul`, and `slice_assign` cache writes.
///
/// This is the path `cuda` runs. [`DenseCpu`] runs the same code on the CPU so that the tests
/// exercise it on machines without a GPU; one blanket impl serves both, so the code under test
/// is the code `cuda` runs, not a copy of it.
pub trait DenseBackend: Backend {}

#[cfg(feature = "cuda")]
impl DenseBackend for burn::backend::Cuda {}

/// burn-cubecl on Vulkan (lavapipe, without a GPU): the same CubeCL ops as cuda, for tests.
#[cfg(feature = "vulkan")]
impl DenseBackend for burn::backend::Vulkan {}

/// The dense path on the CPU (burn's `NdArray`), for tests: none of the model's methods are
/// overridden, unlike flex's. It is far slower than flex and not meant to serve.
pub type DenseCpu = burn::backend::NdArray<f32>;

impl DenseBackend for DenseCpu {}

/// The dense path on the CPU in f16 and bf16 as well (`NdArray` computes in f32 and f64 only):
/// burn's `Dispatch` backend on its flex device ([`dense_half_cpu_device`]). It forwards burn's
/// ops to flex without our overrides, so the model takes every default of [`ModelBackend`], in
/// whatever float type its tensors hold. For tests, like [`DenseCpu`].
pub type DenseHalfCpu = burn::Dispatch;

/// The device of [`DenseHalfCpu`] that computes on flex.
pub fn dense_half_cpu_device() -> burn::DispatchDevice {
    burn::DispatchDevice::Flex(burn::backend::flex::FlexDevice)
}

impl DenseBackend for DenseHalfCpu {}

impl<B: DenseBackend> ModelBackend for B {
    /// `[in_features, out_features]`, contiguous.
    type Projection = Tensor<B, 2>;
    /// `[vocab, hidden]`.
    type Embedding = Tensor<B, 2>;

    fn pack_embedding(
        table: ProjectionWeight,
        device: &B::Device,
        dtype: FloatDType,
    ) -> Tensor<B, 2> {
        let table = table.into_f32();
        let shape = [table.shape[0], table.shape[1]];
        Tensor::from_data(TensorData::new(table.data, shape), (device, dtype.into()))
    }

    fn embed(table: &Tensor<B, 2>, ids: &[u32], device: &B::Device) -> Tensor<B, 2> {
        let ids: Vec<i64> = ids.iter().map(|&t| t as i64).collect();
        let ids = Tensor::<B, 1, Int>::from_data(TensorData::new(ids.clone(), [ids.len()]), device);
        table.clone().select(0, ids)
    }

    fn pack_projection(
        weight: ProjectionWeight,
        device: &B::Device,
        dtype: FloatDType,
    ) -> Tensor<B, 2> {
        let weight = weight.into_f32();
        let shape = [weight.shape[1], weight.shape[0]];
        let data = TensorData::new(weight.transposed().data, shape);
        Tensor::from_data(data, (device, dtype.into()))
    }

    fn project(x: Tensor<B, 2>, weight: &Tensor<B, 2>) -> Tensor<B, 2> {
        x.matmul(weight.clone())
    }

    fn write_cache_rows(
        pool: Tensor<B, 2>,
        runs: &[RowRun],
        src: &Tensor<B, 2>,
        src_col: usize,
    ) -> Tensor<B, 2> {
        let [_, width] = pool.dims();
        runs.iter().fold(pool, |pool, run| {
            let rows = src
                .clone()
                .slice([run.src_row..run.src_row + run.len, src_col..src_col + width]);
            pool.slice_assign([run.dst_slot..run.dst_slot + run.len, 0..width], rows)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flex_runs_a_step_on_a_rayon_thread_under_the_callers_span() {
        let subscriber = tracing_subscriber::registry();
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("step");
            let _entered = span.enter();
            let (thread, current) = <burn::backend::Flex as ModelBackend>::run_step(|| {
                (rayon::current_thread_index(), tracing::Span::current().id())
            });
            assert!(thread.is_some(), "the step ran on one of rayon's threads");
            assert_eq!(current, span.id(), "under the caller's span");
        });
    }
}
