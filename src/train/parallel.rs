//! Data-parallel training over several devices with Burn's own multi-device primitives.
//!
//! Each step splits the batch across the devices, runs the forward and backward passes of each
//! part in its own thread on its own copy of the model, moves the gradients to the main device
//! (the first one) with [`GradientsParams::to_device`], sums them with Burn's
//! [`GradientsAccumulator`] and makes one optimiser step there; the next step forks the updated
//! model onto every device again. This is burn-train 0.22.1's multi-device learner
//! (`ExecutionStrategy::MultiDevice` with `MultiDeviceOptim::OptimMainDevice`:
//! `MultiDevicesTrainStep` forks the model per worker thread, `run_optim_main` moves and
//! accumulates the gradients and steps once), written out here because clipit's loop (validation,
//! checkpoints, clipping by the global norm, resume) is not burn-train's `Learner`.
//!
//! Why not a collective all-reduce: Burn 0.22.1 moved collectives into the backends
//! (`burn::tensor::distributed::all_reduce`, the `DistributedContext` and burn-train's DDP
//! strategy). Only CUDA implements them; a wgpu or CPU device panics in cubecl's
//! `ComputeServer::all_reduce`, burn-flex and burn-ndarray have none, and the separate
//! `burn-collective` crate stops at 0.21.0 on crates.io. So the collective path could not be
//! tested on any machine lent to this project, and it cannot mix backends; the main-device
//! strategy runs on every backend, including a CPU backend beside a GPU one.
//!
//! The result equals one step on the whole batch: each part's loss is weighted by its share of
//! the batch before its backward pass, so the summed gradients are those of the batch mean (the
//! CLIP-IT loss is a mean of per-image terms). Methods whose loss couples the images of a batch
//! (the contrastive InfoNCE) cannot be split this way.

use burn::module::Module;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::{Device, Tensor};

use super::trainer::{LossParts, PendingStep, StepLog, TrainBatch, Trainer};
use crate::backend::Backend;
use crate::{Error, Result};

/// The devices a `--devices` value names, each created (not autodiff), or why they cannot be.
///
/// A value is a comma-separated list, the first being the main device (optimiser, validation,
/// checkpoints): `cpu` (burn-flex), `wgpu` (wgpu's default adapter), `wgpu:cpu` (wgpu's CPU
/// adapter, e.g. Mesa lavapipe), `wgpu:N` (the N-th discrete GPU), `cuda:N`. A number N means N
/// devices of `backend`: `cuda:0` to `cuda:N-1`, or `wgpu:0` to `wgpu:N-1`; the CPU backend is one
/// device (list `cpu,wgpu:cpu` for two on the CPU).
pub fn parse_devices(spec: &str, backend: Backend) -> Result<Vec<Device>> {
    let bad = |why: String| Error::msg(format!("--devices {spec}: {why}"));
    let names: Vec<String> = match spec.trim().parse::<usize>() {
        Ok(0) => return Err(bad("at least one device is needed".into())),
        Ok(1) => vec![backend.to_string()],
        Ok(n) => match backend {
            Backend::Cpu => {
                return Err(bad(
                    "the CPU backend is one device; list devices instead, e.g. cpu,wgpu:cpu".into(),
                ))
            }
            other => (0..n).map(|i| format!("{other}:{i}")).collect(),
        },
        Err(_) => spec.split(',').map(|s| s.trim().to_string()).collect(),
    };
    let mut devices: Vec<Device> = Vec::with_capacity(names.len());
    for name in &names {
        let device = device_named(name).map_err(|e| bad(format!("{name}: {e}")))?;
        if devices.contains(&device) {
            return Err(bad(format!("{name} is listed twice (or names the same device twice)")));
        }
        devices.push(device);
    }
    Ok(devices)
}

/// One device of a `--devices` list (see [`parse_devices`]).
pub fn device_named(name: &str) -> Result<Device> {
    match name.split_once(':') {
        None => name.parse::<Backend>()?.device(),
        Some(("wgpu", which)) => wgpu_device(which),
        Some(("cuda", index)) => cuda_device(index),
        Some(_) => Err(Error::msg(format!(
            "unknown device '{name}' (cpu, wgpu, wgpu:cpu, wgpu:N, cuda:N)"
        ))),
    }
}

fn index(text: &str) -> Result<usize> {
    text.parse().map_err(|_| Error::msg(format!("'{text}' is not a device index")))
}

/// wgpu's CPU adapter (`cpu`) or the N-th discrete GPU, each initialised once per process.
#[cfg(all(feature = "wgpu", not(target_arch = "wasm32")))]
fn wgpu_device(which: &str) -> Result<Device> {
    use burn::tensor::DeviceKind;
    use std::collections::HashMap;
    use std::sync::Mutex;
    static DEVICES: Mutex<Option<HashMap<String, std::result::Result<Device, String>>>> =
        Mutex::new(None);
    let kind = match which {
        "cpu" => DeviceKind::Cpu,
        n => DeviceKind::DiscreteGpu(index(n)?),
    };
    crate::backend::settle_gpu_autotune();
    let mut cache = DEVICES.lock().unwrap_or_else(|e| e.into_inner());
    cache
        .get_or_insert_with(HashMap::new)
        .entry(which.to_string())
        .or_insert_with(|| {
            Device::wgpu_options()
                .device_kind(kind)
                .init()
                .map_err(|e| format!("no such wgpu adapter: {e}"))
        })
        .clone()
        .map_err(Error::msg)
}

#[cfg(not(all(feature = "wgpu", not(target_arch = "wasm32"))))]
fn wgpu_device(_which: &str) -> Result<Device> {
    Backend::Wgpu.device()
}

#[cfg(feature = "cuda")]
fn cuda_device(n: &str) -> Result<Device> {
    crate::backend::settle_gpu_autotune();
    Ok(Device::cuda(index(n)?))
}

#[cfg(not(feature = "cuda"))]
fn cuda_device(n: &str) -> Result<Device> {
    index(n)?;
    Backend::Cuda.device()
}

/// The autodiff devices of a data-parallel run on `devices` (not autodiff) whose main device is
/// `main`: empty for a single device. Several devices need `devices[0]` to be `main` and a loss
/// that splits across them (`splittable`: CLIP-IT's, not the contrastive one or the linear probe's
/// cached features).
pub fn replicas(devices: &[Device], main: &Device, splittable: bool) -> Result<Vec<Device>> {
    if devices.len() <= 1 {
        return Ok(Vec::new());
    }
    if !splittable {
        return Err(Error::msg(
            "training on several devices (--devices) is for --method clipit: the contrastive \
             loss couples the images of a batch and the linear probe trains on cached features",
        ));
    }
    if devices[0] != main.clone().without_autodiff() {
        return Err(Error::msg("the main training device must be the first of the devices"));
    }
    Ok(devices.iter().map(|d| d.clone().autodiff()).collect())
}

/// The sizes of `n` images split across `parts` devices as evenly as possible, the first ones
/// taking the remainder; devices left without an image get none.
pub fn shard_sizes(n: usize, parts: usize) -> Vec<usize> {
    let parts = parts.max(1);
    (0..parts).map(|i| n / parts + usize::from(i < n % parts)).filter(|&s| s > 0).collect()
}

/// Images `start..start + len` of `batch`, moved to `device`.
fn shard(batch: &TrainBatch, start: usize, len: usize, device: &Device) -> TrainBatch {
    TrainBatch {
        pixels: batch.pixels.clone().narrow(0, start, len).to_device(device),
        labels: batch.labels.clone().narrow(0, start, len).to_device(device),
        text_targets: batch
            .text_targets
            .as_ref()
            .map(|t| t.clone().narrow(0, start, len).to_device(device)),
        token_ids: batch.token_ids.as_ref().map(|ids| ids[start..start + len].to_vec()),
    }
}

/// One device's part of a step: its gradients and its weighted `[loss, ce, kd]`.
type Part = (GradientsParams, Tensor<1>);

/// The forward and backward passes of one part, on `device`, weighted by `share`.
fn run_part<M: Module>(
    model: M,
    device: &Device,
    batch: &TrainBatch,
    share: f64,
    loss: &(impl Fn(&M, &TrainBatch) -> Result<LossParts> + Sync),
) -> Result<Part> {
    let model = model.fork(device);
    let parts = loss(&model, batch)?;
    let values = parts.values().mul_scalar(share);
    let grads = GradientsParams::from_grads(parts.total.mul_scalar(share).backward(), &model);
    Ok((grads, values))
}

/// One data-parallel optimisation step of `trainer` on `batch` (on the main device), split across
/// `devices` (autodiff devices, the first being the trainer's): see the module docs. Equivalent to
/// [`Trainer::step`] with the whole batch on the main device, up to the order of floating-point
/// sums. A worker's error or panic fails the step, naming the device.
pub fn parallel_step<M: Module>(
    trainer: &mut Trainer<M>,
    devices: &[Device],
    epoch: usize,
    batch: &TrainBatch,
    loss: impl Fn(&M, &TrainBatch) -> Result<LossParts> + Sync,
) -> Result<StepLog> {
    let main = devices.first().ok_or_else(|| Error::msg("no device to train on"))?;
    let n = batch.labels.dims()[0];
    let sizes = shard_sizes(n, devices.len());
    let (mut jobs, mut names) = (Vec::new(), Vec::new());
    let mut start = 0;
    for (device, &len) in devices.iter().zip(&sizes) {
        jobs.push((device.clone(), shard(batch, start, len, device), len as f64 / n as f64));
        names.push(format!("{device:?}"));
        start += len;
    }
    let results: Vec<Result<Part>> = std::thread::scope(|scope| {
        let handles: Vec<_> = jobs
            .into_iter()
            .map(|(device, part, share)| {
                let model = trainer.model.clone();
                let loss = &loss;
                std::thread::Builder::new()
                    .name("clipit-train".into())
                    .spawn_scoped(scope, move || run_part(model, &device, &part, share, loss))
            })
            .collect();
        handles
            .into_iter()
            .zip(&names)
            .map(|(handle, name)| {
                let failed = |why: String| Error::msg(format!("training on {name}: {why}"));
                let handle = handle.map_err(|e| failed(format!("cannot start a thread: {e}")))?;
                match handle.join() {
                    Ok(part) => part.map_err(|e| failed(e.to_string())),
                    Err(panic) => Err(failed(panic_message(panic.as_ref()))),
                }
            })
            .collect()
    });
    let mut accumulator = GradientsAccumulator::<M>::new();
    let mut values: Option<Tensor<1>> = None;
    for part in results {
        let (grads, v) = part?;
        accumulator.accumulate(&trainer.model, grads.to_device(main, &trainer.model));
        let v = v.to_device(main);
        values = Some(match values {
            Some(sum) => sum + v,
            None => v,
        });
    }
    let values = values.ok_or_else(|| Error::msg("an empty batch cannot make a step"))?;
    let pending = PendingStep::new(&trainer.model, accumulator.grads(), values);
    trainer.apply(epoch, pending)
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "the worker panicked".to_string()
    }
}
