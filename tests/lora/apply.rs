//! Adapters made here: which modules `apply_lora` targets, peft's init, the options and errors,
//! the parameter names they rely on, and which parameters train.

use std::collections::HashSet;

use burn::module::list_param_ids;
use burn::optim::GradientsParams;
use clipit::weights::ParamKind;

use super::*;

/// Number of adapters `apply_lora` attaches per tower, and peft's init.
#[test]
fn apply_lora_targets_and_peft_init() {
    let device = cpu();
    let cfg = LoraConfig::new(4, 8.0);
    // (fixture, vision adapters, text adapters)
    for (name, n_vision, n_text) in [
        ("timm_vit_small", 9, None),
        ("hf_clip_quickgelu", 15, Some(15)),
        ("open_clip", 5, Some(5)),
        ("conch", 9, Some(5)),
    ] {
        let model = Model::load(&fixture(name), &device).unwrap();
        let probe = Probe::new(name);
        let base = probe.run(&model, &device);
        let vision = lora::apply_lora(model.vision.clone(), &model.params, &cfg, 7).unwrap();
        let state = lora::lora_state(&vision);
        assert_eq!(state.len(), n_vision, "{name}: vision targets");
        let text = model.text.clone().map(|t| lora::apply_lora(t, &model.params, &cfg, 7).unwrap());
        assert_eq!(
            text.as_ref().map(|t| lora::lora_state(t).len()),
            n_text,
            "{name}: text targets"
        );
        let mut all = state;
        all.extend(text.as_ref().map(lora::lora_state).unwrap_or_default());
        for s in &all {
            let info = model.params.get(s.base).unwrap();
            let (a, [rows, r]) = matrix_to_host(s.a.clone()).unwrap();
            let (b, [_, _]) = matrix_to_host(s.b.clone()).unwrap();
            assert_eq!(r, 4);
            if info.kind == ParamKind::Embedding {
                assert!(
                    a.iter().all(|&v| v == 0.0),
                    "{name}: {}: embedding A must be zero",
                    info.tensor
                );
                let mean = b.iter().sum::<f32>() / b.len() as f32;
                let std =
                    (b.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / b.len() as f32).sqrt();
                assert!(
                    b.len() < 64 || (0.6..1.4).contains(&std),
                    "{name}: {}: embedding B std {std}",
                    info.tensor
                );
                assert!(b.iter().any(|&v| v != 0.0));
            } else {
                // Kaiming-uniform(a=√5): U(-1/√fan_in, 1/√fan_in); fan_in = Burn rows (in, or c·kh·kw).
                let bound = 1.0 / (rows as f32).sqrt();
                let max = a.iter().fold(0f32, |m, v| m.max(v.abs()));
                assert!(
                    max <= bound && max > 0.8 * bound,
                    "{name}: {}: A max {max} vs bound {bound}",
                    info.tensor
                );
                assert!(b.iter().all(|&v| v == 0.0), "{name}: {}: B must be zero", info.tensor);
            }
        }
        // B = 0 (embedding A = 0): the model is unchanged at init.
        let mut adapted = model;
        adapted.vision = vision;
        adapted.text = text;
        check_same(name, "outputs at init", &probe.run(&adapted, &device), &base, 1e-6);
    }
}

#[test]
fn apply_lora_options_and_errors() {
    let device = cpu();
    let model = Model::load(&fixture("timm_vit_small"), &device).unwrap();
    let names = &model.params;
    // --no-lin: only the patch embedding (Conv2d).
    let mut cfg = LoraConfig::new(4, 8.0);
    cfg.targets.linear = false;
    let v = lora::apply_lora(model.vision.clone(), names, &cfg, 1).unwrap();
    let state = lora::lora_state(&v);
    assert_eq!(state.len(), 1);
    assert_eq!(names.get(state[0].base).unwrap().tensor, "patch_embed.proj.weight");
    // Same seed, same init; another seed, another.
    let cfg = LoraConfig::new(4, 8.0);
    let a = |seed| {
        matrix_to_host(
            lora::lora_state(&lora::apply_lora(model.vision.clone(), names, &cfg, seed).unwrap())
                [3]
            .a
            .clone(),
        )
        .unwrap()
        .0
    };
    assert_eq!(a(3), a(3));
    assert_ne!(a(3), a(4));
    // Dropout cannot be trained.
    let mut drop = cfg.clone();
    drop.dropout = 0.1;
    let err = lora::apply_lora(model.vision.clone(), names, &drop, 1).unwrap_err().to_string();
    assert!(err.contains("dropout"), "{err}");
    // No double adapters.
    let once = lora::apply_lora(model.vision.clone(), names, &cfg, 1).unwrap();
    let err = lora::apply_lora(once, names, &cfg, 1).unwrap_err().to_string();
    assert!(err.contains("already carries"), "{err}");
    // Serde of the config (defaults: CLIP-IT's r 16, alpha 8).
    let d = LoraConfig::default();
    assert_eq!((d.r, d.alpha, d.scale()), (16, 8.0, 0.5));
    let back: LoraConfig = serde_json::from_str(&serde_json::to_string(&cfg).unwrap()).unwrap();
    assert_eq!(back, cfg);
    let minimal: LoraConfig = serde_json::from_str(r#"{"r": 8, "alpha": 4}"#).unwrap();
    assert_eq!(minimal, LoraConfig::new(8, 4.0));
}

/// Every parameter the loaders build is named, with the right PyTorch module kind.
#[test]
fn param_names_cover_every_parameter() {
    let device = cpu();
    for name in [
        "timm_vit_small",
        "timm_uni",
        "timm_dinov2_reg4",
        "hf_clip_quickgelu",
        "hf_clip_gelu",
        "open_clip",
        "conch",
    ] {
        let model = Model::load(&fixture(name), &device).unwrap();
        let mut ids = list_param_ids(&model.vision);
        ids.extend(model.text.as_ref().map(list_param_ids).unwrap_or_default());
        let unnamed = ids.iter().filter(|id| model.params.get(**id).is_none()).count();
        assert_eq!(unnamed, 0, "{name}: {unnamed} parameters without a recorded name");
        let tensors: HashSet<&str> = model.params.iter().map(|(_, i)| i.tensor.as_str()).collect();
        let st = safetensors_names(name);
        for t in &tensors {
            assert!(st.contains(*t), "{name}: recorded tensor {t} is not in the checkpoint");
        }
    }
    let model = Model::load(&fixture("open_clip"), &device).unwrap();
    let kind_of = |t: &str| model.params.iter().find(|(_, i)| i.tensor == t).map(|(_, i)| i.kind);
    assert_eq!(kind_of("visual.conv1.weight"), Some(ParamKind::Conv2d));
    assert_eq!(
        kind_of("transformer.resblocks.0.attn.out_proj.weight"),
        Some(ParamKind::MhaOutProj)
    );
    assert_eq!(kind_of("transformer.resblocks.0.attn.in_proj_weight"), Some(ParamKind::Parameter));
    assert_eq!(kind_of("transformer.resblocks.0.mlp.c_fc.weight"), Some(ParamKind::Linear));
    assert_eq!(kind_of("token_embedding.weight"), Some(ParamKind::Embedding));
    assert_eq!(kind_of("positional_embedding"), Some(ParamKind::Parameter));
    assert_eq!(kind_of("text_projection"), Some(ParamKind::Parameter));
    assert_eq!(kind_of("ln_final.weight"), Some(ParamKind::Norm));
    let hf = Model::load(&fixture("hf_clip_quickgelu"), &device).unwrap();
    let kind_of = |t: &str| hf.params.iter().find(|(_, i)| i.tensor == t).map(|(_, i)| i.kind);
    assert_eq!(
        kind_of("text_model.embeddings.position_embedding.weight"),
        Some(ParamKind::Embedding)
    );
    assert_eq!(kind_of("vision_model.embeddings.class_embedding"), Some(ParamKind::Parameter));
    assert_eq!(kind_of("visual_projection.weight"), Some(ParamKind::Linear));
    assert_eq!(
        kind_of("vision_model.encoder.layers.0.self_attn.out_proj.weight"),
        Some(ParamKind::Linear)
    );
}

fn safetensors_names(name: &str) -> HashSet<String> {
    let dir = fixture(name);
    let file = ["model.safetensors", "open_clip_model.safetensors"]
        .iter()
        .map(|f| dir.join(f))
        .find(|p| p.exists())
        .unwrap();
    let bytes = std::fs::read(file).unwrap();
    SafeTensors::deserialize(&bytes).unwrap().names().into_iter().map(String::from).collect()
}

/// Only the LoRA factors get gradients (autodiff): the base weights are frozen.
#[test]
fn only_lora_factors_train() {
    let device = cpu().autodiff();
    let cfg = LoraConfig::new(4, 8.0);
    for name in ["timm_vit_small", "hf_clip_quickgelu"] {
        let model = Model::load(&fixture(name), &device).unwrap();
        let probe = Probe::new(name);
        let vision = lora::apply_lora(model.vision.clone(), &model.params, &cfg, 5).unwrap();
        let input = Tensor::<4>::from_data(
            TensorData::new(probe.pixels.0.clone(), probe.pixels.1),
            &device,
        );
        let loss = vision.forward(input).powi_scalar(2).sum();
        let grads = GradientsParams::from_grads(loss.backward(), &vision);
        let state = lora::lora_state(&vision);
        let factor_ids: Vec<_> = state.iter().flat_map(|s| [s.a_id, s.b_id]).collect();
        assert_eq!(grads.len(), factor_ids.len(), "{name}: gradients on non-LoRA parameters");
        for id in &factor_ids {
            assert!(grads.get::<2>(*id).is_some(), "{name}: a LoRA factor got no gradient");
        }
        // B starts at zero, so A's gradient is zero and B's is not.
        let b_grad = matrix_to_host(grads.get::<2>(state[0].b_id).unwrap()).unwrap().0;
        assert!(b_grad.iter().any(|&g| g != 0.0), "{name}: B gradient is zero");

        if let Some(text) = model.text.clone() {
            // Embedding adapters (token and position) train too.
            let text = lora::apply_lora(text, &model.params, &cfg, 5).unwrap();
            let loss = text.forward(probe.ids.as_ref().unwrap()).unwrap().powi_scalar(2).sum();
            let grads = GradientsParams::from_grads(loss.backward(), &text);
            let state = lora::lora_state(&text);
            assert_eq!(
                grads.len(),
                2 * state.len(),
                "{name}: text gradients on non-LoRA parameters"
            );
            let emb = state
                .iter()
                .find(|s| model.params.get(s.base).unwrap().kind == ParamKind::Embedding)
                .unwrap();
            let a_grad = matrix_to_host(grads.get::<2>(emb.a_id).unwrap()).unwrap().0;
            assert!(a_grad.iter().any(|&g| g != 0.0), "{name}: embedding A gets no gradient");
        }
    }
}
