//! peft's own adapters: imported, attached, merged, unmerged, exported and saved.

use super::*;

/// peft adapter → Rust model: adapted, merged and unmerged outputs equal peft's; the export
/// is peft's file again.
fn check_peft_fixture(name: &str, inert_expected: usize, unmatched_prefixes: &[&str]) {
    let device = cpu();
    let dir = lora_dir(name);
    let exp = Tensors::open(&dir.join("expected.safetensors"));
    let probe = Probe::new(name);
    let model = Model::load(&fixture(name), &device).unwrap();
    check_outputs(name, "base outputs", &probe.run(&model, &device), &exp, "base_");

    let adapters = LoraAdapters::import_peft(&dir).unwrap();
    assert_eq!((adapters.config.r, adapters.config.alpha, adapters.config.dropout), (4, 8.0, 0.0));
    let (model, attached, inert, unmatched) = attach_all(model, &adapters);
    assert_eq!(
        attached.len() + inert.len() + unmatched.len(),
        adapters.modules.len(),
        "{name}: every adapter accounted for"
    );
    assert_eq!(inert.len(), inert_expected, "{name}: inert {inert:?}");
    assert!(inert.iter().all(|m| m.ends_with("attn.out_proj")), "{name}: inert {inert:?}");
    for m in &unmatched {
        assert!(
            unmatched_prefixes.iter().any(|p| m.starts_with(p)),
            "{name}: unexpected unmatched adapter {m}"
        );
    }

    // Adapted forward = peft's.
    let adapted = probe.run(&model, &device);
    check_outputs(name, "adapted outputs", &adapted, &exp, "");

    // Export = peft's own tensors, bytes and shapes (for every adapter that was attached).
    let cfg = adapters.config.clone();
    let out = tempfile::tempdir().unwrap();
    adapters_of(&model, &cfg).export_peft(out.path()).unwrap();
    let ours = Tensors::open(&out.path().join("adapter_model.safetensors")).raw();
    let theirs: Vec<_> = Tensors::open(&dir.join("adapter_model.safetensors"))
        .raw()
        .into_iter()
        .filter(|(k, _, _)| {
            attached.iter().any(|m| k.starts_with(&format!("base_model.model.{m}.lora_")))
        })
        .collect();
    assert_eq!(ours.len(), 2 * attached.len(), "{name}: exported tensor count");
    assert_eq!(ours, theirs, "{name}: exported tensors differ from peft's");
    if inert.is_empty() && unmatched.is_empty() {
        let peft_bytes = std::fs::read(dir.join("adapter_model.safetensors")).unwrap();
        let our_bytes = std::fs::read(out.path().join("adapter_model.safetensors")).unwrap();
        assert!(our_bytes == peft_bytes, "{name}: exported file is not byte-identical to peft's");
    }
    let cfg_json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg_json["peft_type"], "LORA");
    assert_eq!(cfg_json["r"], 4);
    assert_eq!(cfg_json["lora_alpha"], 8);
    assert_eq!(cfg_json["target_modules"].as_array().unwrap().len(), attached.len());
    // ... and it imports again to the same adapters.
    let again = LoraAdapters::import_peft(out.path()).unwrap();
    assert_eq!(again.modules.len(), attached.len());
    for (m, f) in &again.modules {
        assert_eq!(f, &adapters.modules[m], "{name}: {m} after export + import");
    }

    // Merge: same outputs as peft's merged model (without inert adapters, = the adapted ones).
    let (merged_model, merged) = merge_model(model, &cfg);
    assert!(lora::lora_state(&merged_model.vision).is_empty(), "{name}: adapters left after merge");
    let merged_out = probe.run(&merged_model, &device);
    if inert.is_empty() {
        check_outputs(name, "merged outputs", &merged_out, &exp, "merged_");
    }
    check_same(name, "merged vs adapted", &merged_out, &adapted, 1e-4);

    // Unmerge: the adapters are back and give the adapted outputs again.
    let restored = unmerge_model(merged_model, merged);
    assert_eq!(
        lora::lora_state(&restored.vision).len()
            + restored.text.as_ref().map_or(0, |t| lora::lora_state(t).len()),
        attached.len()
    );
    check_outputs(name, "unmerged outputs", &probe.run(&restored, &device), &exp, "");
}

#[test]
fn peft_timm_vit_small() {
    check_peft_fixture("timm_vit_small", 0, &[]);
}

#[test]
fn peft_hf_clip_quickgelu() {
    check_peft_fixture("hf_clip_quickgelu", 0, &[]);
}

#[test]
fn peft_conch() {
    // Inert: the text tower's 2 out_proj and the contrastive pooler's; unmatched: the parts
    // CONCH's Rust model does not load.
    check_peft_fixture("conch", 3, &["text_decoder.", "visual.attn_pool_caption."]);
}

/// With `mha_out_proj` on, the MultiheadAttention out_proj adapters work: the Rust forward then
/// equals peft's *merged* model (the only place peft uses them).
#[test]
fn conch_mha_out_proj_opt_in_matches_peft_merge() {
    let device = cpu();
    let dir = lora_dir("conch");
    let exp = Tensors::open(&dir.join("expected.safetensors"));
    let mut adapters = LoraAdapters::import_peft(&dir).unwrap();
    adapters.config.targets.mha_out_proj = true;
    let model = Model::load(&fixture("conch"), &device).unwrap();
    let (model, attached, inert, _) = attach_all(model, &adapters);
    assert!(inert.is_empty());
    assert!(attached.contains("visual.attn_pool_contrast.attn.out_proj"));
    // Read back from the model, the factors are peft's (the out_proj ones stored as Linear).
    let back = adapters_of(&model, &adapters.config);
    assert_eq!(back.modules.len(), attached.len());
    for (m, f) in &back.modules {
        assert_eq!(f, &adapters.modules[m], "{m}");
    }
    check_outputs(
        "conch",
        "mha_out_proj on vs peft merged",
        &Probe::new("conch").run(&model, &device),
        &exp,
        "merged_",
    );
}

#[test]
fn save_and_load_round_trip() {
    let device = cpu();
    let name = "hf_clip_quickgelu";
    let exp = Tensors::open(&lora_dir(name).join("expected.safetensors"));
    let adapters = LoraAdapters::import_peft(&lora_dir(name)).unwrap();
    let (model, ..) = attach_all(Model::load(&fixture(name), &device).unwrap(), &adapters);
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("adapter.safetensors");
    adapters_of(&model, &adapters.config).save(&path).unwrap();
    // One tower through the free functions too.
    let vision_only = tmp.path().join("vision.safetensors");
    lora::save_adapter(&vision_only, &model.vision, &model.params, &adapters.config).unwrap();

    let loaded = LoraAdapters::load(&path).unwrap();
    assert_eq!(loaded, adapters);
    let fresh = Model::load(&fixture(name), &device).unwrap();
    let (fresh, ..) = attach_all(fresh, &loaded);
    check_outputs(name, "after save + load", &Probe::new(name).run(&fresh, &device), &exp, "");

    let mut fresh = Model::load(&fixture(name), &device).unwrap();
    let (vision, cfg, report) =
        lora::load_adapter(&vision_only, fresh.vision.clone(), &fresh.params).unwrap();
    fresh.vision = vision;
    assert_eq!(cfg, adapters.config);
    assert!(report.unmatched.is_empty() && report.inert.is_empty());
    assert_eq!(report.attached.len(), 15);
    assert_close(
        name,
        "vision after load_adapter",
        &Probe::new(name).image(&fresh, &device),
        &exp.f32("image_embeds").0,
        1e-4,
    );

    // A peft folder is not a clipit adapter file and vice versa.
    assert!(LoraAdapters::load(&lora_dir(name).join("adapter_model.safetensors"))
        .unwrap_err()
        .to_string()
        .contains("import_peft"));
}

/// peft configs this crate cannot reproduce are refused with a reason.
#[test]
fn unsupported_peft_configs_are_refused() {
    let base = serde_json::json!({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "lora_dropout": 0.1, "bias": "none",
        "use_rslora": true, "rank_pattern": {}, "alpha_pattern": {}, "modules_to_save": null, "use_dora": false});
    let cfg = LoraConfig::from_peft_json(&base, "x").unwrap();
    assert_eq!((cfg.r, cfg.alpha, cfg.dropout, cfg.rslora), (4, 8.0, 0.1, true));
    assert_eq!(cfg.scale(), 4.0);
    assert!(cfg.check_trainable().is_err(), "dropout 0.1 cannot be trained");
    for (key, value, why) in [
        ("use_dora", serde_json::json!(true), "DoRA"),
        ("bias", serde_json::json!("all"), "biases"),
        ("rank_pattern", serde_json::json!({"fc1": 8}), "rank_pattern"),
        ("modules_to_save", serde_json::json!(["head"]), "modules_to_save"),
        ("peft_type", serde_json::json!("IA3"), "LORA"),
    ] {
        let mut j = base.clone();
        j[key] = value;
        let err = LoraConfig::from_peft_json(&j, "x").unwrap_err().to_string();
        assert!(err.contains(why), "{key}: {err}");
    }
}
