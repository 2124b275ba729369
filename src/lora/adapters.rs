//! LoRA factors held on the host in peft's layout: attaching them to a module, reading them back,
//! and their safetensors and peft (`adapter_model.safetensors` + `adapter_config.json`) forms.

use super::*;

/// A tensor on the host: row-major `f32` values and their shape.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    /// Shape.
    pub shape: Vec<usize>,
    /// Values, row-major.
    pub values: Vec<f32>,
}

impl HostTensor {
    pub(super) fn new(shape: Vec<usize>, values: Vec<f32>) -> Self {
        debug_assert_eq!(shape.iter().product::<usize>(), values.len());
        Self { shape, values }
    }

    /// `[first dim, product of the rest]`.
    fn rows_cols(&self) -> (usize, usize) {
        let rows = self.shape.first().copied().unwrap_or(1);
        (rows, self.values.len() / rows.max(1))
    }

    fn little_endian(&self) -> Vec<u8> {
        self.values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }
}

fn transpose(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; values.len()];
    for i in 0..rows {
        for j in 0..cols {
            out[j * rows + i] = values[i * cols + j];
        }
    }
    out
}

/// The factors of one adapter, in peft's layout: `a` is `lora_A.weight` (`[r, in]`, or
/// `[r, c, kh, kw]` for a convolution) or `lora_embedding_A` (`[r, num]`); `b` is
/// `lora_B.weight` (`[out, r]`, `[out, r, 1, 1]`) or `lora_embedding_B` (`[dim, r]`).
#[derive(Debug, Clone, PartialEq)]
pub struct LoraFactors {
    /// The factors' layout: [`ParamKind::Linear`] (any `nn.Linear`, `MultiheadAttention.out_proj`
    /// included), [`ParamKind::Embedding`] or [`ParamKind::Conv2d`].
    pub kind: ParamKind,
    /// peft's A.
    pub a: HostTensor,
    /// peft's B.
    pub b: HostTensor,
}

impl LoraFactors {
    /// The rank.
    pub fn rank(&self) -> usize {
        self.a.shape.first().copied().unwrap_or(0)
    }

    /// The Burn factors `(a, b)`, `[rows, r]` and `[r, cols]` for a Burn weight `[rows, cols]`:
    /// both are peft's factor flattened to 2-D and transposed.
    pub(super) fn to_burn(&self) -> ((Vec<f32>, [usize; 2]), (Vec<f32>, [usize; 2])) {
        let (r, a_cols) = self.a.rows_cols();
        let (b_rows, b_r) = self.b.rows_cols();
        (
            (transpose(&self.a.values, r, a_cols), [a_cols, r]),
            (transpose(&self.b.values, b_rows, b_r), [b_r, b_rows]),
        )
    }

    /// From Burn factors `a` `[rows, r]`, `b` `[r, cols]` of a parameter recorded as `info`.
    pub(super) fn from_burn(
        info: &ParamInfo,
        a: (Vec<f32>, [usize; 2]),
        b: (Vec<f32>, [usize; 2]),
    ) -> Self {
        let ((a, [a_rows, r]), (b, [_, b_cols])) = (a, b);
        let (a_shape, b_shape) = match info.kind {
            ParamKind::Conv2d => {
                let mut a_shape = info.torch_shape.clone();
                a_shape[0] = r;
                (a_shape, vec![b_cols, r, 1, 1])
            }
            _ => (vec![r, a_rows], vec![b_cols, r]),
        };
        Self {
            kind: layout_kind(info.kind),
            a: HostTensor::new(a_shape, transpose(&a, a_rows, r)),
            b: HostTensor::new(b_shape, transpose(&b, r, b_cols)),
        }
    }

    /// peft's key suffixes for A and B.
    fn peft_suffixes(kind: ParamKind) -> (&'static str, &'static str) {
        match kind {
            ParamKind::Embedding => ("lora_embedding_A", "lora_embedding_B"),
            _ => ("lora_A.weight", "lora_B.weight"),
        }
    }
}

/// LoRA adapters by PyTorch module name (e.g. `blocks.0.attn.qkv`), with their config: what an
/// adapter file holds, independent of any model instance.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraAdapters {
    /// Hyper-parameters.
    pub config: LoraConfig,
    /// Factors by module name.
    pub modules: BTreeMap<String, LoraFactors>,
}

/// What [`LoraAdapters::attach`] did with each adapter.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AttachReport {
    /// Modules that received their adapter.
    pub attached: Vec<String>,
    /// Adapters for modules this module tree does not have (another tower, a part of the PyTorch
    /// model this crate does not load, such as CONCH's caption decoder).
    pub unmatched: Vec<String>,
    /// Adapters left out because peft's forward pass never uses them (`out_proj` of
    /// `nn.MultiheadAttention`, unless [`LoraTargets::mha_out_proj`] is set).
    pub inert: Vec<String>,
}

impl LoraAdapters {
    /// The adapters of `module` (see [`lora_state`]), named with `names`. Reads the factors
    /// from the device synchronously (not allowed in wasm; use [`LoraAdapters::from_module_async`]).
    pub fn from_module<M: Module>(
        module: &M,
        names: &ParamNames,
        config: &LoraConfig,
    ) -> Result<Self> {
        let mut modules = BTreeMap::new();
        for s in lora_state(module) {
            let info = named(names, s.base)?;
            let factors = LoraFactors::from_burn(info, matrix_to_host(s.a)?, matrix_to_host(s.b)?);
            modules.insert(info.module().to_string(), factors);
        }
        Ok(Self { config: config.clone(), modules })
    }

    /// [`LoraAdapters::from_module`] with asynchronous reads (the browser's case).
    pub async fn from_module_async<M: Module>(
        module: &M,
        names: &ParamNames,
        config: &LoraConfig,
    ) -> Result<Self> {
        let mut modules = BTreeMap::new();
        for s in lora_state(module) {
            let info = named(names, s.base)?;
            let factors = LoraFactors::from_burn(
                info,
                matrix_to_host_async(s.a).await?,
                matrix_to_host_async(s.b).await?,
            );
            modules.insert(info.module().to_string(), factors);
        }
        Ok(Self { config: config.clone(), modules })
    }

    /// Adds the adapters of `other` (e.g. the other tower's); fails if the configs differ or a
    /// module appears in both.
    pub fn merge_from(&mut self, other: LoraAdapters) -> Result<()> {
        if other.config != self.config {
            return Err(Error::msg("cannot combine LoRA adapters with different configs"));
        }
        for (name, f) in other.modules {
            if self.modules.insert(name.clone(), f).is_some() {
                return Err(Error::msg(format!("LoRA adapter for '{name}' appears twice")));
            }
        }
        Ok(())
    }

    /// Attaches each adapter whose module is in `module` (by its recorded name in `names`) and
    /// freezes every other parameter of `module`, as `get_peft_model` does. Fails on a shape or
    /// kind mismatch, or when a target already carries an adapter.
    pub fn attach<M: Module>(&self, module: M, names: &ParamNames) -> Result<(M, AttachReport)> {
        self.config.validate()?;
        let scan = scan(&module);
        let mut by_module: HashMap<&str, (ParamId, &ParamInfo)> = HashMap::new();
        for id in list_param_ids(&module) {
            if let Some(info) = names.get(id).filter(|i| i.kind.is_module_weight()) {
                by_module.insert(info.module(), (id, info));
            }
        }
        let mut report = AttachReport::default();
        let mut plan: HashMap<ParamId, (&str, &LoraFactors)> = HashMap::new();
        for (name, factors) in &self.modules {
            let Some(&(id, info)) = by_module.get(name.as_str()) else {
                report.unmatched.push(name.clone());
                continue;
            };
            let compatible = layout_kind(info.kind) == layout_kind(factors.kind);
            if !compatible {
                return Err(Error::msg(format!(
                    "LoRA adapter for '{name}' is a {:?} adapter but the model's module is a {:?}",
                    factors.kind, info.kind
                )));
            }
            if info.kind == ParamKind::MhaOutProj && !self.config.targets.mha_out_proj {
                report.inert.push(name.clone());
                continue;
            }
            if scan.adapted.contains_key(&id) {
                return Err(Error::msg(format!(
                    "'{name}' already carries a LoRA adapter; merge or drop it first"
                )));
            }
            plan.insert(id, (name.as_str(), factors));
        }
        let scale = self.config.scale();
        let mut failure = None;
        let mut attached = Vec::new();
        let module = module.apply_reparameterization(Attach {
            skip: &scan.factors,
            make: |id: ParamId, dims: &[usize], device: &Device| {
                let (name, factors) = plan.get(&id)?;
                let ((a, a_shape), (b, b_shape)) = factors.to_burn();
                if dims.len() != 2 || a_shape[0] != dims[0] || b_shape[1] != dims[1] || a_shape[1] != b_shape[0] {
                    failure.get_or_insert_with(|| {
                        format!(
                            "LoRA adapter for '{name}' has A {:?} and B {:?}, which do not fit the weight (Burn shape {dims:?})",
                            factors.a.shape, factors.b.shape
                        )
                    });
                    return None;
                }
                attached.push(name.to_string());
                Some((matrix(a, a_shape, device), matrix(b, b_shape, device), scale))
            },
        });
        if let Some(msg) = failure {
            return Err(Error::msg(msg));
        }
        attached.sort();
        report.attached = attached;
        Ok((module, report))
    }

    /// The module names, sorted (peft's `target_modules`).
    pub fn target_modules(&self) -> Vec<String> {
        self.modules.keys().cloned().collect()
    }

    fn peft_tensors(&self) -> Vec<(String, &HostTensor)> {
        let mut out = Vec::new();
        for (name, f) in &self.modules {
            let (sa, sb) = LoraFactors::peft_suffixes(f.kind);
            out.push((format!("{PEFT_PREFIX}{name}.{sa}"), &f.a));
            out.push((format!("{PEFT_PREFIX}{name}.{sb}"), &f.b));
        }
        out
    }

    /// The safetensors bytes in peft's layout (`base_model.model.<module>.lora_A.weight`...,
    /// f32), with `metadata` (peft writes `{"format": "pt"}`).
    pub fn to_safetensors(&self, metadata: HashMap<String, String>) -> Result<Vec<u8>> {
        self.to_safetensors_with(&[], metadata)
    }

    /// [`LoraAdapters::to_safetensors`] plus `extra` tensors (e.g. trained heads) in the same
    /// file; their names must not start with [`PEFT_PREFIX`].
    pub fn to_safetensors_with(
        &self,
        extra: &[(String, HostTensor)],
        metadata: HashMap<String, String>,
    ) -> Result<Vec<u8>> {
        let mut tensors = self.peft_tensors();
        for (name, t) in extra {
            if name.starts_with(PEFT_PREFIX) || t.values.len() != t.shape.iter().product::<usize>()
            {
                return Err(Error::msg(format!("extra tensor '{name}' is malformed or reserved")));
            }
            tensors.push((name.clone(), t));
        }
        let bytes: Vec<Vec<u8>> = tensors.iter().map(|(_, t)| t.little_endian()).collect();
        let views = tensors
            .iter()
            .zip(&bytes)
            .map(|((name, t), b)| {
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, t.shape.clone(), b)
                    .map(|v| (name.clone(), v))
                    .map_err(|e| Error::msg(format!("LoRA tensor {name}: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        safetensors::tensor::serialize(views, Some(metadata))
            .map_err(|e| Error::msg(format!("writing LoRA adapter: {e}")))
    }

    /// Reads the adapters of a safetensors file in peft's layout (keys
    /// `base_model.model.<module>.lora_{A,B}.weight` or `.lora_embedding_{A,B}`), with `config`.
    pub fn from_safetensors(st: &SafeTensors, config: LoraConfig) -> Result<Self> {
        Self::from_safetensors_skipping(st, config, None)
    }

    /// [`LoraAdapters::from_safetensors`], ignoring the tensors whose names start with `skip`
    /// (the extra tensors of [`LoraAdapters::to_safetensors_with`]).
    pub fn from_safetensors_skipping(
        st: &SafeTensors,
        config: LoraConfig,
        skip: Option<&str>,
    ) -> Result<Self> {
        let bad = |msg: String| Error::format(st.name(), msg);
        let mut parts: BTreeMap<String, (Option<HostTensor>, Option<HostTensor>, bool)> =
            BTreeMap::new();
        let keys = st.tensors().keys().filter(|k| skip.is_none_or(|p| !k.starts_with(p)));
        for key in keys {
            let rest = key.strip_prefix(PEFT_PREFIX).unwrap_or(key);
            let (module, which, embedding) = if let Some(m) = rest.strip_suffix(".lora_A.weight") {
                (m, 0, false)
            } else if let Some(m) = rest.strip_suffix(".lora_B.weight") {
                (m, 1, false)
            } else if let Some(m) = rest.strip_suffix(".lora_embedding_A") {
                (m, 0, true)
            } else if let Some(m) = rest.strip_suffix(".lora_embedding_B") {
                (m, 1, true)
            } else {
                return Err(bad(format!(
                    "unexpected tensor '{key}': only lora_A/lora_B/lora_embedding_A/lora_embedding_B (plain LoRA) are supported"
                )));
            };
            let (values, shape) = st.read_f32(key)?;
            let entry = parts.entry(module.to_string()).or_insert((None, None, embedding));
            if entry.2 != embedding {
                return Err(bad(format!("'{module}' mixes embedding and linear LoRA tensors")));
            }
            let slot = if which == 0 { &mut entry.0 } else { &mut entry.1 };
            *slot = Some(HostTensor::new(shape, values));
        }
        let mut modules = BTreeMap::new();
        for (name, (a, b, embedding)) in parts {
            let (Some(a), Some(b)) = (a, b) else {
                return Err(bad(format!("'{name}' lacks its A or its B factor")));
            };
            let kind = match (embedding, a.shape.len()) {
                (true, 2) => ParamKind::Embedding,
                (false, 2) => ParamKind::Linear,
                (false, 4) => ParamKind::Conv2d,
                _ => {
                    return Err(bad(format!("'{name}': A has an unsupported shape {:?}", a.shape)))
                }
            };
            let r = a.shape[0];
            let b_ok = match kind {
                ParamKind::Conv2d => {
                    b.shape.len() == 4 && b.shape[1] == r && b.shape[2] == 1 && b.shape[3] == 1
                }
                _ => b.shape.len() == 2 && b.shape[1] == r,
            };
            if !b_ok {
                return Err(bad(format!(
                    "'{name}': A {:?} and B {:?} do not share the rank",
                    a.shape, b.shape
                )));
            }
            if r != config.r {
                return Err(bad(format!(
                    "'{name}' has rank {r} but the config says r = {}",
                    config.r
                )));
            }
            modules.insert(name, LoraFactors { kind, a, b });
        }
        Ok(Self { config, modules })
    }

    /// Writes one safetensors file (atomically) in peft's key layout, carrying the
    /// [`LoraConfig`] and peft's `adapter_config.json` in its metadata.
    pub fn save(&self, path: &Path) -> Result<()> {
        crate::fsutil::write_atomic(path, &self.to_bytes()?)
    }

    /// The bytes [`LoraAdapters::save`] writes.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        self.to_bytes_with(&[], HashMap::new())
    }

    /// [`LoraAdapters::to_bytes`] with `extra` tensors and metadata in the same file (see
    /// [`LoraAdapters::to_safetensors_with`]); [`LoraAdapters::from_safetensors_with_extra`] reads it.
    pub fn to_bytes_with(
        &self,
        extra: &[(String, HostTensor)],
        mut meta: HashMap<String, String>,
    ) -> Result<Vec<u8>> {
        meta.insert("format".to_string(), "pt".to_string());
        meta.insert(
            CONFIG_METADATA_KEY.to_string(),
            serde_json::to_string(&self.config).expect("config serialises"),
        );
        meta.insert(
            PEFT_CONFIG_METADATA_KEY.to_string(),
            self.config.peft_config_json(&self.target_modules()).to_string(),
        );
        self.to_safetensors_with(extra, meta)
    }

    /// Reads a file written by [`LoraAdapters::save`].
    pub fn load(path: &Path) -> Result<Self> {
        Self::from_safetensors_with_config(&SafeTensors::open(path)?, None)
    }

    /// Reads the bytes of a file written by [`LoraAdapters::save`] (`name` is used in errors).
    pub fn from_bytes(bytes: Arc<[u8]>, name: &str) -> Result<Self> {
        Self::from_safetensors_with_config(&SafeTensors::from_bytes(bytes, name)?, None)
    }

    /// The adapters of a file written by [`LoraAdapters::to_bytes_with`], ignoring the extra
    /// tensors (whose names start with `skip`).
    pub fn from_safetensors_with_extra(st: &SafeTensors, skip: &str) -> Result<Self> {
        Self::from_safetensors_with_config(st, Some(skip))
    }

    fn from_safetensors_with_config(st: &SafeTensors, skip: Option<&str>) -> Result<Self> {
        let json = st.metadata().get(CONFIG_METADATA_KEY).ok_or_else(|| {
            Error::format(
                st.name(),
                format!("no '{CONFIG_METADATA_KEY}' metadata: not a clipit LoRA adapter (for a peft folder use import_peft)"),
            )
        })?;
        let config: LoraConfig = serde_json::from_str(json)
            .map_err(|e| Error::format(st.name(), format!("invalid LoRA config: {e}")))?;
        config.validate().map_err(|e| Error::format(st.name(), e.to_string()))?;
        Self::from_safetensors_skipping(st, config, skip)
    }

    /// Writes peft's folder layout: `adapter_model.safetensors` (metadata `{"format": "pt"}`) and
    /// `adapter_config.json`, which `PeftModel.from_pretrained(model, dir)` loads onto the
    /// PyTorch model the checkpoint belongs to. Creates `dir` if needed.
    pub fn export_peft(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
        crate::fsutil::write_atomic(
            dir.join("adapter_model.safetensors"),
            &self.to_safetensors(meta)?,
        )?;
        let json =
            serde_json::to_string_pretty(&self.config.peft_config_json(&self.target_modules()))
                .expect("json");
        crate::fsutil::write_atomic(dir.join("adapter_config.json"), json.as_bytes())
    }

    /// Reads a folder written by peft's `save_pretrained` (or [`LoraAdapters::export_peft`]).
    pub fn import_peft(dir: &Path) -> Result<Self> {
        let cfg_path = dir.join("adapter_config.json");
        let text = std::fs::read(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
        let config = Self::peft_config(&text, &cfg_path.display().to_string())?;
        let st = SafeTensors::open(&dir.join("adapter_model.safetensors"))?;
        Self::from_safetensors(&st, config)
    }

    /// [`LoraAdapters::import_peft`] from the two files' bytes (the browser's case).
    pub fn import_peft_bytes(adapter_config_json: &[u8], adapter_model: Arc<[u8]>) -> Result<Self> {
        let config = Self::peft_config(adapter_config_json, "adapter_config.json")?;
        Self::from_safetensors(
            &SafeTensors::from_bytes(adapter_model, "adapter_model.safetensors")?,
            config,
        )
    }

    fn peft_config(json: &[u8], name: &str) -> Result<LoraConfig> {
        let json: serde_json::Value = serde_json::from_slice(json)
            .map_err(|e| Error::format(name, format!("invalid JSON: {e}")))?;
        LoraConfig::from_peft_json(&json, name)
    }
}
