//! The Llama-family decoder: embedding, N x (RMSNorm, GQA attention with RoPE, RMSNorm,
//! SwiGLU MLP), final RMSNorm, output head. Optional q/k/v bias covers Qwen2.

use burn::tensor::{FloatDType, Tensor, TensorData};

use super::attention::{AttentionPlan, HeadLayout};
use super::backend::ModelBackend;
use super::batch::{BatchError, ForwardBatch, LogitsWanted};
use super::config::LlamaConfig;
use super::cpu::KeyLayout;
use super::kv_cache::{LayerPools, PagedKvCache};
use super::rope::{RotaryRows, RotaryTable};
use super::weights::{HostTensor, ProjectionWeight, WeightError, WeightPolicy, WeightSource};

/// Logits copied back to the host, one row per requested position.
#[derive(Clone, Debug, PartialEq)]
pub struct Logits {
    /// Row-major `[rows, vocab_size]`.
    pub data: Vec<f32>,
    /// Width of a row.
    pub vocab_size: usize,
}

impl Logits {
    /// Number of rows.
    pub fn num_rows(&self) -> usize {
        self.data.len() / self.vocab_size.max(1)
    }

    /// Row `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.vocab_size..(i + 1) * self.vocab_size]
    }

    /// Row `i`, for processing in place (sampling penalties and masks).
    pub fn row_mut(&mut self, i: usize) -> &mut [f32] {
        &mut self.data[i * self.vocab_size..(i + 1) * self.vocab_size]
    }
}

/// Why a forward pass failed.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// The batch does not fit the model or the cache.
    #[error(transparent)]
    Batch(#[from] BatchError),
    /// The backend could not hand the logits back.
    #[error("reading logits from the device failed: {0}")]
    Readback(String),
    /// The cache stores another float type than the model computes in.
    #[error("the KV cache stores {cache:?} but the model computes in {model:?}")]
    Dtype {
        /// The cache's type.
        cache: FloatDType,
        /// The model's type.
        model: FloatDType,
    },
    /// An earlier pass failed midway (a backend panic) and took the cache pools with it.
    #[error("the KV cache was lost when an earlier step failed; restart the server")]
    CacheLost,
}

#[derive(Debug)]
struct RmsNorm<B: ModelBackend> {
    /// `[1, hidden]`
    weight: Tensor<B, 2>,
    eps: f64,
}

impl<B: ModelBackend> RmsNorm<B> {
    /// # Shapes
    /// - `x`: `[rows, hidden]`, returned in the same shape
    fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        B::rms_norm(x, &self.weight, self.eps)
    }
}

#[derive(Debug)]
struct DecoderLayer<B: ModelBackend> {
    attn_norm: RmsNorm<B>,
    /// `[(heads + kv_heads) * head_dim, hidden]`: q and k projections stacked, so RoPE
    /// rotates both in one contiguous pass.
    qk: B::Projection,
    /// `[1, (heads + kv_heads) * head_dim]`
    qk_bias: Option<Tensor<B, 2>>,
    /// `[kv_heads * head_dim, hidden]`
    v: B::Projection,
    /// `[1, kv_heads * head_dim]`
    v_bias: Option<Tensor<B, 2>>,
    /// `[hidden, heads * head_dim]`
    output: B::Projection,
    ffn_norm: RmsNorm<B>,
    /// `[2 * intermediate, hidden]`: gate and up projections stacked, so one matmul feeds
    /// SwiGLU.
    gate_up: B::Projection,
    /// `[hidden, intermediate]`
    down: B::Projection,
}

/// A Llama-family model on backend `B`.
#[derive(Debug)]
pub struct Llama<B: ModelBackend> {
    config: LlamaConfig,
    /// `[vocab, hidden]`
    embedding: B::Embedding,
    layers: Vec<DecoderLayer<B>>,
    final_norm: RmsNorm<B>,
    /// `[vocab, hidden]`. A tied head is the embedding's table: one copy of the blocks where both
    /// keep them, a packed f32 copy otherwise.
    head: B::Projection,
    rope: RotaryTable<B>,
    device: B::Device,
    /// What weights, activations and the KV cache are stored and computed in.
    dtype: FloatDType,
    /// What the weights take in memory (quantized blocks at their size).
    weight_bytes: usize,
}

fn to_device<B: ModelBackend, const D: usize>(
    tensor: HostTensor,
    shape: [usize; D],
    device: &B::Device,
    dtype: FloatDType,
) -> Tensor<B, D> {
    Tensor::from_data(TensorData::new(tensor.data, shape), (device, dtype.into()))
}

fn concat_rows(parts: Vec<HostTensor>) -> HostTensor {
    let cols = parts[0].shape.get(1).copied();
    let rows = parts.iter().map(|p| p.shape[0]).sum();
    let data = parts.into_iter().flat_map(|p| p.data).collect();
    HostTensor {
        shape: match cols {
            Some(cols) => vec![rows, cols],
            None => vec![rows],
        },
        data,
    }
}

impl<B: ModelBackend> Llama<B> {
    /// Loads every weight from `source` as `dtype`, or as what the backend computes in
    /// instead ([`ModelBackend::compute_dtype`]; see [`Self::dtype`]), keeping projections in
    /// the checkpoint's blocks where `weights` says so, and reporting `(tensors done, total)`
    /// to `progress`.
    pub fn load(
        config: LlamaConfig,
        source: &mut dyn WeightSource,
        device: &B::Device,
        dtype: FloatDType,
        weights: WeightPolicy,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self, WeightError> {
        let dtype = B::compute_dtype(dtype);
        if !B::supports_dtype(device, dtype.into()) {
            return Err(WeightError::Dtype {
                dtype,
                backend: B::name(device),
            });
        }
        let c = &config;
        let (hidden, inter, hd) = (c.hidden_size, c.intermediate_size, c.head_dim);
        let q_dim = c.num_heads * hd;
        let kv_dim = c.kv_dim();
        let qk_dim = q_dim + kv_dim;
        let total = c.num_layers + 2;
        let norm = |t: HostTensor| RmsNorm {
            weight: to_device(t, [1, hidden], device, dtype),
            eps: c.rms_norm_eps,
        };

        let element_bytes = burn::tensor::DType::from(dtype).size();
        let mut projection_bytes = 0;
        let mut pack = |weight: ProjectionWeight| {
            projection_bytes += weight.stored_bytes(element_bytes);
            B::pack_projection(weight, device, dtype)
        };

        let table = source.projection("token_embd.weight", [c.vocab_size, hidden], weights)?;
        // A tied head multiplies by the embedding's table: kept as blocks, one copy serves both.
        let tied_head = c.tie_word_embeddings.then(|| table.clone());
        let embedding_bytes = match &table {
            ProjectionWeight::Blocks { matrix, .. } => matrix.num_bytes(),
            ProjectionWeight::F32(_) => c.vocab_size * hidden * element_bytes,
        };
        let embedding = B::pack_embedding(table, device, dtype);
        progress(1, total);

        let mut layers = Vec::with_capacity(c.num_layers);
        for i in 0..c.num_layers {
            let name = |part: &str| format!("blk.{i}.{part}");
            let mut projection = |part: &str, shape| source.projection(&name(part), shape, weights);
            let q = projection("attn_q.weight", [q_dim, hidden])?;
            let k = projection("attn_k.weight", [kv_dim, hidden])?;
            let v = projection("attn_v.weight", [kv_dim, hidden])?;
            let output = projection("attn_output.weight", [hidden, q_dim])?;
            let gate = projection("ffn_gate.weight", [inter, hidden])?;
            let up = projection("ffn_up.weight", [inter, hidden])?;
            let down = projection("ffn_down.weight", [hidden, inter])?;
            let qk = ProjectionWeight::concat_rows(vec![q, k]);
            let (qk_bias, v_bias) = if c.attention_bias {
                let q = source.require(&name("attn_q.bias"), &[q_dim])?;
                let k = source.require(&name("attn_k.bias"), &[kv_dim])?;
                let v = source.require(&name("attn_v.bias"), &[kv_dim])?;
                (
                    Some(to_device(
                        concat_rows(vec![q, k]),
                        [1, qk_dim],
                        device,
                        dtype,
                    )),
                    Some(to_device(v, [1, kv_dim], device, dtype)),
                )
            } else {
                (None, None)
            };
            layers.push(DecoderLayer {
                attn_norm: norm(source.require(&name("attn_norm.weight"), &[hidden])?),
                qk: pack(qk),
                qk_bias,
                v: pack(v),
                v_bias,
                output: pack(output),
                ffn_norm: norm(source.require(&name("ffn_norm.weight"), &[hidden])?),
                gate_up: pack(ProjectionWeight::concat_rows(vec![gate, up])),
                down: pack(down),
            });
            progress(i + 2, total);
        }

        let final_norm = norm(source.require("output_norm.weight", &[hidden])?);
        let shared_bytes = match &tied_head {
            Some(ProjectionWeight::Blocks { matrix, .. }) => matrix.num_bytes(),
            _ => 0,
        };
        let head = match tied_head {
            Some(table) => table,
            None => source.projection("output.weight", [c.vocab_size, hidden], weights)?,
        };
        let head = pack(head);
        progress(total, total);
        let bias_elements = if c.attention_bias { qk_dim + kv_dim } else { 0 };
        let other_elements = (2 * c.num_layers + 1) * hidden + c.num_layers * bias_elements;
        let weight_bytes =
            projection_bytes - shared_bytes + embedding_bytes + other_elements * element_bytes;

        let rope = RotaryTable::new(
            hd,
            c.max_position_embeddings,
            c.rope_theta,
            c.rope_style,
            device,
            dtype,
        );
        Ok(Self {
            config,
            embedding,
            layers,
            final_norm,
            head,
            rope,
            device: device.clone(),
            dtype,
            weight_bytes,
        })
    }

    /// The model's shape.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// The device the weights live on.
    pub fn device(&self) -> &B::Device {
        &self.device
    }

    /// What the weights are stored and the model computes in; the KV cache should match.
    pub fn dtype(&self) -> FloatDType {
        self.dtype
    }

    /// What the weights take in memory: f32 or half tensors at their element size, quantized
    /// blocks at theirs.
    pub fn weight_bytes(&self) -> usize {
        self.weight_bytes
    }

    fn heads(&self) -> HeadLayout {
        HeadLayout {
            num_heads: self.config.num_heads,
            num_kv_heads: self.config.num_kv_heads,
            head_dim: self.config.head_dim,
        }
    }

    /// Runs one step for a batch of sequences, writing their new keys and values into
    /// `cache` and returning the logits `batch.logits` asks for.
    ///
    /// # Shapes
    /// - `batch.token_ids`: `[num_tokens]`, packed by sequence
    /// - returns `[num_sequences or num_tokens, vocab]`
    pub fn forward(
        &self,
        batch: &ForwardBatch,
        cache: &mut PagedKvCache<B>,
    ) -> Result<Logits, ForwardError> {
        B::run_step(|| self.forward_step(batch, cache))
    }

    fn forward_step(
        &self,
        batch: &ForwardBatch,
        cache: &mut PagedKvCache<B>,
    ) -> Result<Logits, ForwardError> {
        let c = &self.config;
        let pool = cache.config();
        if pool.dtype != self.dtype {
            return Err(ForwardError::Dtype {
                cache: pool.dtype,
                model: self.dtype,
            });
        }
        batch.validate(
            c.vocab_size,
            c.max_position_embeddings,
            pool.block_size,
            pool.num_blocks,
        )?;
        let n = batch.token_ids.len();
        if n == 0 {
            return Ok(Logits {
                data: Vec::new(),
                vocab_size: c.vocab_size,
            });
        }
        let device = &self.device;
        let positions: Vec<usize> = batch
            .sequences
            .iter()
            .flat_map(|s| s.num_cached_tokens..s.context_len())
            .collect();
        let rotary = self
            .rope
            .rows(&positions, c.num_heads + c.num_kv_heads, device);
        let plan = AttentionPlan::<B>::new(&batch.sequences, pool.block_size, self.heads(), device);

        let mut x = B::embed(&self.embedding, &batch.token_ids, device);
        let mut pools = cache.take_layers();
        if pools.len() != self.layers.len() {
            cache.restore_layers(pools);
            return Err(ForwardError::CacheLost);
        }
        for (layer, layer_pools) in self.layers.iter().zip(pools.iter_mut()) {
            x = self.layer_forward(layer, x, &rotary, &plan, layer_pools);
        }
        cache.restore_layers(pools);

        let x = match batch.logits {
            LogitsWanted::EveryPosition => x,
            LogitsWanted::LastPerSequence => {
                let mut last = Vec::with_capacity(batch.sequences.len());
                let mut end = 0i64;
                for s in &batch.sequences {
                    end += s.num_new_tokens as i64;
                    last.push(end - 1);
                }
                let rows = last.len();
                x.select(0, Tensor::from_data(TensorData::new(last, [rows]), device))
            }
        };
        let x = self.final_norm.forward(x);
        let logits = B::project(x, &self.head);
        let data = logits
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .map_err(|e| ForwardError::Readback(format!("{e:?}")))?;
        Ok(Logits {
            data,
            vocab_size: c.vocab_size,
        })
    }

    /// # Shapes
    /// - `x`: `[num_tokens, hidden]`, returned in the same shape
    fn layer_forward(
        &self,
        layer: &DecoderLayer<B>,
        x: Tensor<B, 2>,
        rotary: &RotaryRows<B>,
        plan: &AttentionPlan<B>,
        pools: &mut LayerPools<B>,
    ) -> Tensor<B, 2> {
        let c = &self.config;
        let q_dim = c.num_heads * c.head_dim;

        let h = layer.attn_norm.forward(x.clone());
        let mut qk = B::project(h.clone(), &layer.qk);
        if let Some(bias) = &layer.qk_bias {
            qk = qk + bias.clone();
        }
        let mut v = B::project(h, &layer.v);
        if let Some(bias) = &layer.v_bias {
            v = v + bias.clone();
        }
        let qk = self.rope.apply(qk, rotary);

        // Write first, then attend: the cache then holds the whole context uniformly.
        let hd = c.head_dim;
        let runs = &plan.write_runs;
        let layout = KeyLayout {
            block_size: plan.block_size(),
            head_dim: hd,
        };
        for h in 0..c.num_kv_heads {
            replace_with(&mut pools.keys[h], |p| {
                B::write_cache_keys(p, runs, &qk, q_dim + h * hd, layout)
            });
            replace_with(&mut pools.values[h], |p| {
                B::write_cache_rows(p, runs, &v, h * hd)
            });
        }
        let attended = plan.attend(&qk, pools);
        let x = x + B::project(attended, &layer.output);

        let h = layer.ffn_norm.forward(x.clone());
        let gated = B::swiglu(B::project(h, &layer.gate_up));
        x + B::project(gated, &layer.down)
    }
}

/// Moves the tensor out of `slot`, transforms it and puts the result back, so the
/// transformation sees the only handle to its storage.
fn replace_with<B: ModelBackend>(
    slot: &mut Tensor<B, 2>,
    f: impl FnOnce(Tensor<B, 2>) -> Tensor<B, 2>,
) {
    let device = slot.device();
    let taken = std::mem::replace(slot, Tensor::empty([0, 0], &device));
    *slot = f(taken);
}
