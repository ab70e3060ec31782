"""Diffusion schedule and training loss of EDT/DiT (the ADM recipe), built on diffusers' DDPMScheduler."""

import functools
import math

import torch
from diffusers import DDPMScheduler

from .names import TIMESTEP_SAMPLERS


def make_training_scheduler(num_train_timesteps: int = 1000) -> DDPMScheduler:
    """The released schedule: linear betas 1e-4..0.02, epsilon prediction, learned-range variance."""
    if num_train_timesteps < 1:
        raise ValueError(f"num_train_timesteps must be a positive integer, got {num_train_timesteps}")
    return DDPMScheduler(
        num_train_timesteps=num_train_timesteps, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
        variance_type="learned_range", clip_sample=False, prediction_type="epsilon",
    )


def q_sample(scheduler: DDPMScheduler, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Diffuse clean data x0 (B, C, H, W) to step t (B,): sqrt(abar_t) x0 + sqrt(1 - abar_t) noise."""
    if noise.shape != x0.shape:
        raise ValueError(f"noise must have the shape of x0 {tuple(x0.shape)}, got {tuple(noise.shape)}")
    return scheduler.add_noise(x0, noise, t)


# ----------------------------------------------------------------------------------------------------------------
# Pure Gaussian helpers (ADM)
# ----------------------------------------------------------------------------------------------------------------

def normal_kl(mean1, logvar1, mean2, logvar2):
    """Elementwise KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))) in nats."""
    return 0.5 * (logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2) - 1.0)


def _approx_standard_normal_cdf(x):
    """ADM's tanh approximation of the standard normal CDF (kept so the loss matches the released numbers)."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def discretized_gaussian_log_likelihood(x, means, log_scales):
    """Elementwise log-probability of 8-bit data x in [-1, 1] (bins 2/255 wide) under N(means, exp(log_scales)^2)."""
    centered = x - means
    inv_std = torch.exp(-log_scales)
    cdf_plus = _approx_standard_normal_cdf(inv_std * (centered + 1.0 / 255.0))
    cdf_min = _approx_standard_normal_cdf(inv_std * (centered - 1.0 / 255.0))
    # The edge bins take all the mass beyond them, so the 256 bins sum to one.
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_cdf_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_cdf_delta))


# ----------------------------------------------------------------------------------------------------------------
# Training loss
# ----------------------------------------------------------------------------------------------------------------

MIN_SNR_GAMMA = 5.0  # the released (MDTv2) clamp of the signal-to-noise ratio in the MSE weight

def _mean_flat(x):
    """Mean over all non-batch dimensions: (B, ...) -> (B,)."""
    return x.mean(dim=list(range(1, x.ndim)))


def alphas_cumprod64(scheduler: DDPMScheduler) -> torch.Tensor:
    """abar_t (T,) in float64, as the released code computes it (diffusers keeps a float32 product, which is off
    by up to 2e-4 relative in 1 - abar at small t)."""
    return torch.cumprod(1.0 - scheduler.betas.double(), dim=0)


def _posterior_constants(betas: torch.Tensor) -> dict:
    """Closed forms of q(x_{t-1} | x_t, x0) from the schedule's betas (T,), in float64, each (T,)."""
    betas = betas.double()
    abar = torch.cumprod(1.0 - betas, dim=0)
    abar_prev = torch.cat([abar.new_ones(1), abar[:-1]])
    variance = betas * (1.0 - abar_prev) / (1.0 - abar)
    return {
        "abar": abar,
        "sqrt_recip_abar": torch.sqrt(1.0 / abar),
        "sqrt_recipm1_abar": torch.sqrt(1.0 / abar - 1.0),
        "coef_x0": betas * torch.sqrt(abar_prev) / (1.0 - abar),
        "coef_xt": (1.0 - abar_prev) * torch.sqrt(1.0 - betas) / (1.0 - abar),
        # The variance is 0 at t=0; like ADM, reuse the t=1 value there so its log stays finite.
        "log_variance_clipped": torch.log(torch.cat([variance[1:2], variance[1:]])),
        "log_betas": torch.log(betas),
    }


@functools.lru_cache(maxsize=16)
def _cached_tables(betas_bytes: bytes, device: torch.device, dtype: torch.dtype, gamma: float | None) -> dict:
    constants = _posterior_constants(torch.frombuffer(bytearray(betas_bytes), dtype=torch.float64))
    abar = constants.pop("abar")
    tables = {name: c.to(device=device, dtype=dtype) for name, c in constants.items()}
    if gamma is not None:
        snr = abar / (1.0 - abar)
        tables["min_snr_weight"] = (snr.clamp(max=gamma) / snr).float().to(device)
    return tables


def schedule_tables(scheduler: DDPMScheduler, device, dtype: torch.dtype, gamma: float | None = MIN_SNR_GAMMA):
    """The per-timestep constants of the loss (`_posterior_constants` but abar, and "min_snr_weight" for a gamma),
    each (T,), on `device` in `dtype` (the weight in float32), computed once per schedule, device and dtype: a
    training step only indexes them."""
    betas = scheduler.betas.detach().to("cpu", torch.float64).contiguous()
    return _cached_tables(betas.numpy().tobytes(), torch.device(device), dtype, gamma)


def min_snr_weight(scheduler: DDPMScheduler, t: torch.Tensor, gamma: float = MIN_SNR_GAMMA) -> torch.Tensor:
    """MDTv2's min-SNR weight of the epsilon MSE, min(SNR(t), gamma) / SNR(t), (B,) float32, SNR = abar / (1 - abar).

    Small t (SNR far above gamma) weighs little: w ~ 5e-4 at t = 0, 0.59 at t = 100, 1 from t ~ 130 on.
    """
    if not gamma > 0:
        raise ValueError(f"the min-SNR gamma must be positive, got {gamma}")
    return schedule_tables(scheduler, t.device, torch.float32, float(gamma))["min_snr_weight"][t]


def check_timesteps(t: torch.Tensor, num_timesteps: int, batch_size: int | None = None) -> None:
    """ValueError unless t is a (B,) tensor of steps in [0, num_timesteps). The values are checked on the CPU only:
    on a GPU reading them would make every step wait for the device (an out-of-range step fails there when it
    indexes the schedule)."""
    if t.ndim != 1 or (batch_size is not None and len(t) != batch_size):
        raise ValueError(f"t must be a ({batch_size or 'B'},) tensor of steps in [0, {num_timesteps}), got shape "
                         f"{tuple(t.shape)}")
    if t.device.type == "cpu" and len(t) and not torch.compiler.is_compiling() \
            and (t.min() < 0 or t.max() >= num_timesteps):
        raise ValueError(f"t must hold steps in [0, {num_timesteps}), got [{t.min().item()}, {t.max().item()}]")


def training_losses(model_output, x0, x_t, t, noise, scheduler: DDPMScheduler,
                    min_snr_gamma: float | None = MIN_SNR_GAMMA) -> dict:
    """Per-sample losses (B,) `mse`, `vb` (bits/dim), `loss` for outputs [eps, v] (B, 2C, H, W) or eps (B, C, H, W).

    As released, `mse` is the epsilon MSE times `min_snr_weight` (min_snr_gamma None: unweighted, the ADM/DiT loss)
    and `loss` = mse + vb.
    """
    if x_t.shape != x0.shape or noise.shape != x0.shape:
        raise ValueError(f"x0, x_t and noise must share one shape, got {tuple(x0.shape)}, {tuple(x_t.shape)}, "
                         f"{tuple(noise.shape)}")
    B, C = x0.shape[:2]
    if model_output.shape not in (x0.shape, (B, 2 * C, *x0.shape[2:])):
        raise ValueError(f"model_output must have {C} or {2 * C} channels and the shape of x0 otherwise, "
                         f"got {tuple(model_output.shape)} for x0 {tuple(x0.shape)}")
    if min_snr_gamma is not None and not min_snr_gamma > 0:
        raise ValueError(f"the min-SNR gamma must be positive, got {min_snr_gamma}")
    num_timesteps = scheduler.config.num_train_timesteps
    check_timesteps(t, num_timesteps, B)
    tables = schedule_tables(scheduler, x0.device, x0.dtype, None if min_snr_gamma is None else float(min_snr_gamma))

    eps = model_output[:, :C]
    mse = _mean_flat((noise - eps) ** 2)
    if min_snr_gamma is not None:
        mse = mse * tables["min_snr_weight"][t].to(mse.dtype)
    if model_output.shape[1] == C:  # fixed variance: no variational bound term
        return {"mse": mse, "vb": torch.zeros_like(mse), "loss": mse}

    v = model_output[:, C:]

    def at_t(name):  # (T,) -> (B, 1, 1, 1)
        return tables[name][t].view(B, *([1] * (x0.ndim - 1)))

    def posterior_mean(x_start):
        return at_t("coef_x0") * x_start + at_t("coef_xt") * x_t

    true_mean = posterior_mean(x0)
    true_log_var = at_t("log_variance_clipped")
    # The VB term sees a stop-gradient eps: it trains only the variance, the mean is trained by the MSE.
    pred_x0 = at_t("sqrt_recip_abar") * x_t - at_t("sqrt_recipm1_abar") * eps.detach()
    model_mean = posterior_mean(pred_x0)
    frac = (v + 1.0) / 2.0  # learned range: interpolate log variance between posterior variance and beta
    model_log_var = frac * at_t("log_betas") + (1.0 - frac) * true_log_var

    kl = _mean_flat(normal_kl(true_mean, true_log_var, model_mean, model_log_var)) / math.log(2.0)
    decoder_nll = -_mean_flat(discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_log_var)) / math.log(2.0)
    # ADM's rescaling for schedules other than 1000 steps; the factor is exactly 1 for the released schedule.
    vb = torch.where(t == 0, decoder_nll, kl) * (num_timesteps / 1000.0)
    return {"mse": mse, "vb": vb, "loss": mse + vb}


# ----------------------------------------------------------------------------------------------------------------
# Timestep samplers (ADM)
# ----------------------------------------------------------------------------------------------------------------

class UniformSampler:
    """Draw timesteps uniformly; every importance weight is 1."""

    def __init__(self, num_timesteps: int):
        if num_timesteps < 1:
            raise ValueError(f"num_timesteps must be a positive integer, got {num_timesteps}")
        self.num_timesteps = num_timesteps
        self.device = torch.device("cpu")

    def to(self, device) -> "UniformSampler":
        """Keep the sampler's state on `device` (where it then draws), in place; returns the sampler."""
        self.device = torch.device(device)
        return self

    def probabilities(self) -> torch.Tensor:
        """Sampling probability of each timestep, (T,) float64, on the sampler's device."""
        return torch.full((self.num_timesteps,), 1.0 / self.num_timesteps, dtype=torch.float64, device=self.device)

    def sample(self, batch_size: int, device, generator: torch.Generator | None = None):
        """Timesteps t (B,) long and weights 1/(T p_t) (B,) float32, so that E[w * loss] is the uniform mean.
        They are drawn on the generator's device (the sampler's without one) and returned on `device`."""
        p = self.probabilities()
        if generator is not None:
            p = p.to(generator.device)
        t = torch.multinomial(p, batch_size, replacement=True, generator=generator)
        weights = 1.0 / (self.num_timesteps * p[t])
        return t.to(device), weights.float().to(device)

    def update(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        """Uniform sampling learns nothing from the losses."""

    def state_dict(self) -> dict:
        """The sampler's state as plain ints and CPU tensors, for checkpoints."""
        return {"num_timesteps": self.num_timesteps}

    def load_state_dict(self, state: dict) -> None:
        """Restore a state written by `state_dict`."""
        if state.get("num_timesteps") != self.num_timesteps:
            raise ValueError(f"sampler state is for {state.get('num_timesteps')} timesteps, "
                             f"expected {self.num_timesteps}")


class LossSecondMomentSampler(UniformSampler):
    """Draw t with p_t proportional to sqrt(E[loss_t^2]) over recent losses; uniform until warmed up.

    The history is kept on the sampler's device and updated there in a fixed number of tensor ops whatever the
    batch size, with no read-back: a step neither loops over samples nor waits for the device.
    """

    def __init__(self, num_timesteps: int, history_per_term: int = 10, uniform_prob: float = 0.001):
        super().__init__(num_timesteps)
        if history_per_term < 1:
            raise ValueError(f"history_per_term must be a positive integer, got {history_per_term}")
        if not 0.0 <= uniform_prob <= 1.0:
            raise ValueError(f"uniform_prob must be in [0, 1], got {uniform_prob}")
        self.history_per_term = history_per_term
        self.uniform_prob = uniform_prob
        self.loss_history = torch.zeros(num_timesteps, history_per_term, dtype=torch.float64)  # (T, K), oldest first
        self.loss_counts = torch.zeros(num_timesteps, dtype=torch.long)  # (T,)

    def to(self, device) -> "LossSecondMomentSampler":
        super().to(device)
        self.loss_history, self.loss_counts = self.loss_history.to(device), self.loss_counts.to(device)
        return self

    def warmed_up(self) -> bool:
        """True once every timestep has a full history."""
        return bool((self.loss_counts == self.history_per_term).all())

    def probabilities(self) -> torch.Tensor:
        # Chosen on the device (torch.where), so that drawing never waits for it.
        uniform = super().probabilities()
        p = torch.sqrt((self.loss_history ** 2).mean(dim=-1))
        # A little uniform mass keeps every timestep reachable, so the weights stay finite.
        p = p / p.sum() * (1.0 - self.uniform_prob) + self.uniform_prob / self.num_timesteps
        return torch.where((self.loss_counts == self.history_per_term).all(), p, uniform)

    def update(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        """Record the per-sample losses (B,) observed at timesteps t (B,), in batch order: each timestep keeps its
        last history_per_term losses, oldest first."""
        if t.shape != losses.shape or t.ndim != 1:
            raise ValueError(f"t and losses must both be (B,), got {tuple(t.shape)} and {tuple(losses.shape)}")
        check_timesteps(t, self.num_timesteps)
        K, T = self.history_per_term, self.num_timesteps
        t = t.to(self.device)
        counts = self.loss_counts
        arrivals = torch.bincount(t, minlength=T)  # (T,) new losses per timestep
        drop = (counts + arrivals - K).clamp(min=0)  # (T,) oldest losses that leave each history
        # Each new loss's rank among the batch's losses at its timestep (a stable sort keeps batch order).
        order = torch.sort(t, stable=True).indices
        first = torch.cumsum(arrivals, 0) - arrivals  # (T,) where each timestep's run starts in sorted order
        rank = torch.empty_like(t).index_put_((order,), torch.arange(len(t), device=t.device) - first[t[order]])
        # Old losses move left by `drop`; new ones land after them; those pushed out go to a spare column K.
        slots = torch.arange(K, device=t.device) + drop[:, None]  # (T, K) where each kept slot's loss was
        history = torch.where(slots < counts[:, None], self.loss_history.gather(1, slots.clamp(max=K - 1)), 0.0)
        history = torch.cat([history, history.new_zeros(T, 1)], dim=1)  # (T, K + 1)
        column = (counts[t] + rank - drop[t]).clamp(min=-1) % (K + 1)  # -1 (pushed out) -> K
        history.index_put_((t, column), losses.detach().to(history))
        self.loss_history = history[:, :K].contiguous()
        self.loss_counts = (counts + arrivals).clamp(max=K)

    def state_dict(self) -> dict:
        return {"num_timesteps": self.num_timesteps, "loss_history": self.loss_history.cpu().clone(),
                "loss_counts": self.loss_counts.cpu().clone()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        history, counts = state.get("loss_history"), state.get("loss_counts")
        if history is None or counts is None or history.shape != self.loss_history.shape \
                or counts.shape != self.loss_counts.shape:
            raise ValueError(f"sampler state must hold loss_history {tuple(self.loss_history.shape)} and "
                             f"loss_counts {tuple(self.loss_counts.shape)}")
        self.loss_history = history.to(self.device, torch.float64).clone()
        self.loss_counts = counts.to(self.device, torch.long).clone()


def make_timestep_sampler(name: str, num_timesteps: int) -> UniformSampler:
    """A timestep sampler by its ADM name, one of `edt_lab.names.TIMESTEP_SAMPLERS`."""
    if name not in TIMESTEP_SAMPLERS:
        raise ValueError(f"unknown timestep sampler {name!r}, expected one of {sorted(TIMESTEP_SAMPLERS)}")
    return UniformSampler(num_timesteps) if name == "uniform" else LossSecondMomentSampler(num_timesteps)
