//! LoRA exactly as Hugging Face peft does it (CLIP-IT fine-tunes both towers with
//! `peft.LoraConfig(target_modules=<every Linear, Embedding and Conv2d>, r, lora_alpha, lora_dropout)`).
//!
//! # Targets
//! peft can only wrap `nn.Linear`, `nn.Embedding` and `nn.Conv2d` modules. Which Burn parameter
//! was which module in the PyTorch model comes from the [`ParamNames`] map the loaders fill
//! (`Model::params`): `nn.Linear` weights (HF `q/k/v/out_proj`, `fc1/fc2`, the HF projections,
//! timm's fused `attn.qkv`, `attn.proj`, `mlp.fc1/fc2`, open_clip `mlp.c_fc/c_proj`), the
//! `nn.Embedding` tables (token embeddings, and HF CLIP's position embeddings, which are
//! `nn.Embedding`s too) and the `nn.Conv2d` patch embedding (timm `patch_embed.proj`, open_clip
//! `visual.conv1`, HF `patch_embedding`). Bare `nn.Parameter`s (open_clip/CONCH `in_proj_weight`,
//! `text_projection`, `visual.proj`, positional embeddings, class tokens, CONCH's pooler
//! projections), biases and norms are never adapted, as in peft.
//!
//! peft quirk, reproduced: it also wraps the `out_proj` of `nn.MultiheadAttention` (open_clip and
//! CONCH), but the attention reads `out_proj.weight` directly, so that adapter never changes peft's
//! forward pass and never gets a gradient (it only shows after `merge_and_unload`). Hence
//! [`LoraTargets::mha_out_proj`] is off by default: training then matches CLIP-IT's exactly, and
//! imported peft adapters for those modules are reported as inert and left out.
//!
//! # Maths and layout
//! peft adds `scale · B A` to a weight (`scale = alpha / r`, or `alpha / √r` with rsLoRA). Burn
//! stores a linear weight as `[in, out]`, the transpose of PyTorch's `[out, in]`, so the Burn
//! factors are `a = Aᵀ` `[in, r]` and `b = Bᵀ` `[r, out]` and the weight becomes
//! `base + scale · a b` (Burn's [`LoraAdapter`]). Embeddings (`[num, dim]` in both) use
//! `a = lora_embedding_Aᵀ` `[num, r]`, `b = lora_embedding_Bᵀ` `[r, dim]`. The patch-embedding
//! convolution is a linear layer over flattened `(c, kh, kw)` patches here, so its peft factors
//! `lora_A` `[r, c, kh, kw]` and `lora_B` `[out, r, 1, 1]` flatten to the same `a`, `b`.
//!
//! Initialisation as peft's `init_lora_weights=True`: `A` Kaiming-uniform with `a = √5`, i.e.
//! `U(−1/√fan_in, 1/√fan_in)` (`fan_in` = `in`, or `c·kh·kw` for the convolution), `B = 0`; for
//! embeddings `A = 0` and `B ~ N(0, 1)`. At init the model is therefore unchanged.
//!
//! # Burn's `Module::apply_lora`
//! Burn 0.22's `Lora` reparameterizer draws `A ~ N(0, 1/r)`, adapts every 2-D parameter
//! (positional embeddings, class-token tables, `in_proj` and bare projections included) and has
//! no embedding init. Its machinery is what this module uses, though: a custom
//! [`Reparameterizer`] passed to `Module::apply_reparameterization` attaches Burn's own
//! [`LoraAdapter`] (`Param::val()` = `base + scale · a b`, factors visible to autodiff, the
//! optimizer and records, `materialize()` to merge) to the peft targets only, with peft's init,
//! and freezes every base parameter it visits, as `get_peft_model` does.
//!
//! # Dropout
//! peft applies `lora_dropout` to the input of `A` (Linear only). A weight reparameterization
//! cannot express that, so training accepts only dropout 0 (the paper's default); an imported
//! adapter with another value still loads (dropout does nothing at inference).
//!
//! # Files
//! [`save_adapter`] writes one safetensors file in peft's key layout with the [`LoraConfig`] and
//! peft's `adapter_config.json` in its metadata; [`export_peft`] writes the folder peft's
//! `PeftModel.from_pretrained` reads (`adapter_model.safetensors` + `adapter_config.json`);
//! [`import_peft`] reads one. Module names are the checkpoint's own, so the adapter fits the
//! bare PyTorch model the checkpoint belongs to (e.g. `timm.create_model(...)`, `CLIPModel`).

mod adapters;
mod config;

pub use adapters::{AttachReport, HostTensor, LoraAdapters, LoraFactors};
pub use config::{LoraConfig, LoraTargets};

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use burn::module::{
    list_param_ids, LoraAdapter, Module, ModuleVisitor, Param, ParamId, Reparameterizer,
};
use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::retrieval::{matrix_to_host, matrix_to_host_async};
use crate::weights::{ParamInfo, ParamKind, ParamNames, SafeTensors};
use crate::{Error, Result};

/// Prefix of every key in a peft adapter file.
pub const PEFT_PREFIX: &str = "base_model.model.";
/// Metadata key of the [`LoraConfig`] (JSON) in a file written by [`save_adapter`].
pub const CONFIG_METADATA_KEY: &str = "clipit_lora_config";
/// Metadata key of peft's `adapter_config.json` in a file written by [`save_adapter`].
pub const PEFT_CONFIG_METADATA_KEY: &str = "peft_adapter_config";

/// The factor layout of a module kind: an `out_proj` of `nn.MultiheadAttention` is an `nn.Linear`.
fn layout_kind(kind: ParamKind) -> ParamKind {
    match kind {
        ParamKind::MhaOutProj => ParamKind::Linear,
        other => other,
    }
}

fn named(names: &ParamNames, id: ParamId) -> Result<&ParamInfo> {
    names.get(id).ok_or_else(|| {
        Error::msg("a LoRA-adapted parameter has no recorded checkpoint name (use the ParamNames of the model it came from)")
    })
}

fn matrix(values: Vec<f32>, shape: [usize; 2], device: &Device) -> Tensor<2> {
    Tensor::from_data(TensorData::new(values, shape), device)
}

/// One attached adapter: the adapted (base) parameter's id and Burn's factors
/// (`a` `[rows, r]`, `b` `[r, cols]`; the weight is `base + scale · a b`).
#[derive(Debug, Clone)]
pub struct LoraState {
    /// Id of the adapted parameter (look it up in [`ParamNames`]).
    pub base: ParamId,
    /// Factor `a` (its parameter id is `a_id`).
    pub a: Tensor<2>,
    /// Factor `b`.
    pub b: Tensor<2>,
    /// Parameter id of `a`.
    pub a_id: ParamId,
    /// Parameter id of `b`.
    pub b_id: ParamId,
}

/// Every LoRA adapter attached in `module`, in traversal order.
pub fn lora_state<M: Module>(module: &M) -> Vec<LoraState> {
    let scan = scan(module);
    scan.order
        .iter()
        .map(|id| {
            let (a, b) = &scan.adapted[id];
            LoraState { base: *id, a: a.val(), b: b.val(), a_id: a.id, b_id: b.id }
        })
        .collect()
}

/// Attaches fresh adapters, initialised as peft does, to every parameter of `module` that
/// `names` records as a kind `cfg.targets` covers, and freezes every base parameter of
/// `module` (only the factors train, as after `get_peft_model`). Works on any module tree, e.g.
/// `model.vision` or `model.text` alone. `seed` makes the init reproducible (each factor is drawn
/// from a generator seeded by `seed` and the module name). Fails if dropout is not 0, if nothing
/// is targeted or if a target already carries an adapter.
pub fn apply_lora<M: Module>(
    module: M,
    names: &ParamNames,
    cfg: &LoraConfig,
    seed: u64,
) -> Result<M> {
    cfg.check_trainable()?;
    let mut modules = BTreeMap::new();
    for id in list_param_ids(&module) {
        let Some(info) = names.get(id).filter(|i| cfg.targets.covers(i.kind)) else { continue };
        modules.insert(info.module().to_string(), peft_init(info, cfg.r, seed));
    }
    if modules.is_empty() {
        return Err(Error::msg(
            "LoRA: no parameter of this module is a target (check the targets and the ParamNames)",
        ));
    }
    let adapters = LoraAdapters { config: cfg.clone(), modules };
    Ok(adapters.attach(module, names)?.0)
}

/// peft's initial factors for the weight recorded as `info`.
fn peft_init(info: &ParamInfo, r: usize, seed: u64) -> LoraFactors {
    let mut rng = Rng::new(seed, info.module());
    let shape = &info.torch_shape;
    match info.kind {
        ParamKind::Embedding => {
            // lora_embedding_A [r, num] = 0, lora_embedding_B [dim, r] ~ N(0, 1).
            let (num, dim) = (shape[0], shape[1]);
            let b = (0..dim * r).map(|_| rng.normal() as f32).collect();
            LoraFactors {
                kind: ParamKind::Embedding,
                a: HostTensor::new(vec![r, num], vec![0.0; r * num]),
                b: HostTensor::new(vec![dim, r], b),
            }
        }
        _ => {
            // lora_A [r, fan_in...] ~ kaiming_uniform(a=√5) = U(-1/√fan_in, 1/√fan_in), lora_B = 0.
            let out = shape[0];
            let fan_in: usize = shape[1..].iter().product();
            let bound = 1.0 / (fan_in as f64).sqrt();
            let a = (0..r * fan_in).map(|_| ((rng.uniform() * 2.0 - 1.0) * bound) as f32).collect();
            let mut a_shape = shape.clone();
            a_shape[0] = r;
            let b_shape =
                if info.kind == ParamKind::Conv2d { vec![out, r, 1, 1] } else { vec![out, r] };
            LoraFactors {
                kind: layout_kind(info.kind),
                a: HostTensor::new(a_shape, a),
                b: HostTensor::new(b_shape, vec![0.0; out * r]),
            }
        }
    }
}

/// SplitMix64 seeded by the user's seed and a name, so each adapter's draws do not depend on the
/// order modules are visited in.
struct Rng(u64);

impl Rng {
    fn new(seed: u64, name: &str) -> Self {
        let h = name
            .bytes()
            .fold(0xcbf29ce484222325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100000001b3));
        Self(seed ^ h.rotate_left(17))
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e3779b97f4a7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn uniform(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box-Muller).
    fn normal(&mut self) -> f64 {
        let (u1, u2) = (self.uniform().max(1e-300), self.uniform());
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

/// Adapters taken out of a module by [`merge`], kept so that [`unmerge`] can restore them.
#[derive(Debug, Clone)]
pub struct MergedLora {
    scale: f64,
    /// (base id, a, b): the factor parameters themselves, with their ids.
    entries: Vec<(ParamId, Param<Tensor<2>>, Param<Tensor<2>>)>,
}

impl MergedLora {
    /// Number of merged adapters.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no adapter was merged.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Folds every adapter into its base weight (`W ← W + scale · a b`, Burn's `materialize`) and
/// returns the plain module, for inference at the base model's cost, plus the adapters so that
/// [`unmerge`] can take them out again. `cfg` must be the config the adapters were made with.
/// Parameter ids are kept, so `ParamNames` still apply.
pub fn merge<M: Module>(module: M, cfg: &LoraConfig) -> (M, MergedLora) {
    let scan = scan(&module);
    let entries = scan.order.iter().map(|id| {
        let (a, b) = scan.adapted[id].clone();
        (*id, a, b)
    });
    let merged = MergedLora { scale: cfg.scale(), entries: entries.collect() };
    (module.materialize(), merged)
}

/// Undoes [`merge`] as peft's `unmerge` does: subtracts `scale · a b` from each merged weight and
/// re-attaches the same factor parameters (same ids, so optimizer state still applies). The
/// restored base equals the original up to float rounding; the other parameters are left as they
/// are. Fails if a weight is missing or already carries an adapter.
pub fn unmerge<M: Module>(module: M, merged: MergedLora) -> Result<M> {
    let scan = scan(&module);
    let present: HashSet<ParamId> = list_param_ids(&module).into_iter().collect();
    for (id, _, _) in &merged.entries {
        if !present.contains(id) {
            return Err(Error::msg("unmerge: a merged weight is not in this module"));
        }
        if scan.adapted.contains_key(id) {
            return Err(Error::msg("unmerge: a merged weight already carries an adapter"));
        }
    }
    let by_id: HashMap<ParamId, (Param<Tensor<2>>, Param<Tensor<2>>)> =
        merged.entries.into_iter().map(|(id, a, b)| (id, (a, b))).collect();
    Ok(module.apply_reparameterization(Restore { by_id, scale: merged.scale, skip: &scan.factors }))
}

/// Applies fresh adapters made by `make` (id, Burn dims, device → a, b, scale) and freezes every
/// other float parameter except those in `skip` (existing adapter factors).
struct Attach<'a, F> {
    skip: &'a HashSet<ParamId>,
    make: F,
}

impl<F> Reparameterizer for Attach<'_, F>
where
    F: FnMut(ParamId, &[usize], &Device) -> Option<(Tensor<2>, Tensor<2>, f64)>,
{
    type Reparam = LoraAdapter;

    fn reparameterize<const D: usize>(
        &mut self,
        _path: &str,
        param: Param<Tensor<D>>,
    ) -> (Param<Tensor<D>>, Option<LoraAdapter>) {
        if self.skip.contains(&param.id) {
            return (param, None);
        }
        let dims = param.lazy_shape().to_vec();
        let device = param.lazy_device();
        let base = param.set_require_grad(false);
        let adapter = (self.make)(base.id, &dims, &device).map(|(a, b, scale)| LoraAdapter {
            a: Param::from_tensor(a),
            b: Param::from_tensor(b),
            scale,
        });
        (base, adapter)
    }
}

/// Re-attaches merged adapters after subtracting their update from the base.
struct Restore<'a> {
    by_id: HashMap<ParamId, (Param<Tensor<2>>, Param<Tensor<2>>)>,
    scale: f64,
    skip: &'a HashSet<ParamId>,
}

impl Reparameterizer for Restore<'_> {
    type Reparam = LoraAdapter;

    fn reparameterize<const D: usize>(
        &mut self,
        _path: &str,
        param: Param<Tensor<D>>,
    ) -> (Param<Tensor<D>>, Option<LoraAdapter>) {
        if self.skip.contains(&param.id) {
            return (param, None);
        }
        let Some((a, b)) = self.by_id.remove(&param.id) else {
            return (param, None);
        };
        let scale = self.scale;
        let delta = a.val().matmul(b.val()).mul_scalar(scale).detach();
        let base = param.set_require_grad(false).map(|w| {
            let shape = w.shape();
            (w - delta.reshape(shape)).detach()
        });
        (base, Some(LoraAdapter { a, b, scale }))
    }
}

/// What a traversal finds: adapted parameters (base id → factor params), in order, and the ids
/// of every factor.
struct Scan {
    adapted: HashMap<ParamId, (Param<Tensor<2>>, Param<Tensor<2>>)>,
    order: Vec<ParamId>,
    factors: HashSet<ParamId>,
}

fn scan<M: Module>(module: &M) -> Scan {
    let mut v = ScanVisitor {
        last: None,
        current: None,
        field: String::new(),
        a: None,
        out: Scan { adapted: HashMap::new(), order: Vec::new(), factors: HashSet::new() },
    };
    module.visit(&mut v);
    v.out
}

/// Burn visits an adapted parameter as its base, then enters a `Reparameterization` module
/// named `lora` holding the `a` and `b` parameters.
struct ScanVisitor {
    last: Option<ParamId>,
    current: Option<ParamId>,
    field: String,
    a: Option<Param<Tensor<2>>>,
    out: Scan,
}

impl ModuleVisitor for ScanVisitor {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        if container_type == "Reparameterization" {
            self.current = if name == LORA_NAME { self.last } else { None };
            self.a = None;
        } else if self.current.is_some() {
            self.field = name.to_string();
        }
    }

    fn exit_module(&mut self, _name: &str, container_type: &str) {
        if container_type == "Reparameterization" {
            self.current = None;
        }
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let Some(base) = self.current else {
            self.last = Some(param.id);
            return;
        };
        if D != 2 {
            return;
        }
        // Same tensor (same autodiff node), seen at its real rank.
        let p = Param::initialized(param.id, Tensor::<2>::from_bridge(param.val().into_bridge()))
            .set_require_grad(true);
        self.out.factors.insert(param.id);
        match self.field.as_str() {
            "a" => self.a = Some(p),
            "b" => {
                if let Some(a) = self.a.take() {
                    self.out.order.push(base);
                    self.out.adapted.insert(base, (a, p));
                }
            }
            _ => {}
        }
    }
}

const LORA_NAME: &str = <LoraAdapter as burn::module::Reparameterization>::NAME;

/// Writes the adapters of `module` to one safetensors file (see [`LoraAdapters::save`]).
pub fn save_adapter<M: Module>(
    path: &Path,
    module: &M,
    names: &ParamNames,
    cfg: &LoraConfig,
) -> Result<()> {
    LoraAdapters::from_module(module, names, cfg)?.save(path)
}

/// Reads a file written by [`save_adapter`] and attaches its adapters to `module` (see
/// [`LoraAdapters::attach`]); returns the config and what was attached.
pub fn load_adapter<M: Module>(
    path: &Path,
    module: M,
    names: &ParamNames,
) -> Result<(M, LoraConfig, AttachReport)> {
    attach_all(LoraAdapters::load(path)?, module, names)
}

/// Writes the adapters of `module` as peft's folder (see [`LoraAdapters::export_peft`]).
pub fn export_peft<M: Module>(
    dir: &Path,
    module: &M,
    names: &ParamNames,
    cfg: &LoraConfig,
) -> Result<()> {
    LoraAdapters::from_module(module, names, cfg)?.export_peft(dir)
}

/// Reads a peft adapter folder and attaches its adapters to `module` (see
/// [`LoraAdapters::attach`]); returns the config and what was attached.
pub fn import_peft<M: Module>(
    dir: &Path,
    module: M,
    names: &ParamNames,
) -> Result<(M, LoraConfig, AttachReport)> {
    attach_all(LoraAdapters::import_peft(dir)?, module, names)
}

/// Attaches every adapter and returns the module, the adapters' config and the report.
fn attach_all<M: Module>(
    adapters: LoraAdapters,
    module: M,
    names: &ParamNames,
) -> Result<(M, LoraConfig, AttachReport)> {
    let (module, report) = adapters.attach(module, names)?;
    Ok((module, adapters.config, report))
}
