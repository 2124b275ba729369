//! The paper's optimiser: Adam (PyTorch semantics: L2 weight decay added to the gradient,
//! epsilon 1e-8), global gradient-norm clipping as `torch.nn.utils.clip_grad_norm_`, and an
//! optional cosine schedule.

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::decay::WeightDecayConfig;
use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::Tensor;

/// Adam with PyTorch's defaults and the given learning-rate-independent weight decay.
pub fn adam(weight_decay: f64) -> ModuleOptimizer {
    let decay = (weight_decay > 0.0).then(|| WeightDecayConfig::new(weight_decay as f32));
    AdamConfig::new().with_epsilon(1e-8).with_weight_decay(decay).init()
}

/// Ids of the parameters that require gradients (the ones training changes).
pub fn trainable_ids<M: Module>(module: &M) -> Vec<ParamId> {
    struct Collect(Vec<ParamId>);
    impl ModuleVisitor for Collect {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if param.is_require_grad() {
                self.0.push(param.id);
            }
        }
    }
    let mut c = Collect(Vec::new());
    module.visit(&mut c);
    c.0
}

/// Number of trainable scalars.
pub fn trainable_count<M: Module>(module: &M) -> usize {
    struct Count(usize);
    impl ModuleVisitor for Count {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if param.is_require_grad() {
                self.0 += param.val().shape().num_elements();
            }
        }
    }
    let mut c = Count(0);
    module.visit(&mut c);
    c.0
}

/// The squared global L2 norm of the gradients of `module`'s parameters, on the device (no read):
/// `None` when no parameter has a gradient.
pub fn grad_norm_squared<M: Module>(module: &M, grads: &GradientsParams) -> Option<Tensor<1>> {
    struct SumSquares<'a> {
        grads: &'a GradientsParams,
        total: Option<Tensor<1>>,
    }
    impl ModuleVisitor for SumSquares<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(g) = self.grads.get::<D>(param.id) {
                let s = g.square().sum();
                self.total = Some(match self.total.take() {
                    Some(t) => t + s,
                    None => s,
                });
            }
        }
    }
    let mut sum = SumSquares { grads, total: None };
    module.visit(&mut sum);
    sum.total
}

/// Scales all gradients so that their global L2 norm, `norm` (read from [`grad_norm_squared`]),
/// is at most `max_norm` (`clip_grad_norm_`: coefficient `max_norm / (norm + 1e-6)`, applied when
/// below 1).
pub fn clip_to_norm<M: Module>(
    module: &M,
    mut grads: GradientsParams,
    norm: f64,
    max_norm: Option<f64>,
) -> GradientsParams {
    struct Scale<'a> {
        grads: &'a mut GradientsParams,
        coef: f64,
    }
    impl ModuleVisitor for Scale<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(g) = self.grads.remove::<D>(param.id) {
                self.grads.register(param.id, g.mul_scalar(self.coef));
            }
        }
    }
    if let Some(max) = max_norm {
        let coef = max / (norm + 1e-6);
        if coef < 1.0 {
            module.visit(&mut Scale { grads: &mut grads, coef });
        }
    }
    grads
}

/// [`grad_norm_squared`] then [`clip_to_norm`], reading the norm synchronously (native only; the
/// trainer's async step reads it with the loss instead). Returns the norm before clipping.
pub fn clip_global_norm<M: Module>(
    module: &M,
    grads: GradientsParams,
    max_norm: Option<f64>,
) -> (GradientsParams, f64) {
    let norm =
        grad_norm_squared(module, &grads).map_or(0.0, |t| f64::from(t.into_scalar::<f32>()).sqrt());
    (clip_to_norm(module, grads, norm, max_norm), norm)
}

/// Learning rate at `step` of `total` under PyTorch's `CosineAnnealingLR(T_max, eta_min)`.
pub fn cosine_lr(base: f64, eta_min: f64, step: usize, t_max: usize) -> f64 {
    let t = (step % (2 * t_max.max(1))) as f64;
    eta_min
        + (base - eta_min) * (1.0 + (std::f64::consts::PI * t / t_max.max(1) as f64).cos()) / 2.0
}
