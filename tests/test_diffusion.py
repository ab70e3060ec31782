"""Tests for the diffusion schedule, the ADM training loss and the timestep samplers."""

import io
import math

import numpy as np
import pytest
import torch

from edt_lab.diffusion import (
    LossSecondMomentSampler,
    UniformSampler,
    discretized_gaussian_log_likelihood,
    make_timestep_sampler,
    make_training_scheduler,
    min_snr_weight,
    normal_kl,
    q_sample,
    training_losses,
)


@pytest.fixture(scope="module")
def scheduler():
    return make_training_scheduler()


def _batch(t, C=4, size=8, seed=0):
    """Data x0 in [-1, 1] (B, C, H, W) with B = len(t), and its noise (B, C, H, W)."""
    generator = torch.Generator().manual_seed(seed)
    x0 = torch.rand(len(t), C, size, size, generator=generator) * 2 - 1
    noise = torch.randn(x0.shape, generator=generator)
    return x0, noise


def _true_log_variance(scheduler, t):
    """Posterior log variance of q(x_{t-1} | x_t, x0) at steps t > 0, float64 (B,)."""
    abar = scheduler.alphas_cumprod.double()
    return torch.log(scheduler.betas.double()[t] * (1 - abar[t - 1]) / (1 - abar[t]))


def test_schedule_matches_closed_form(scheduler):
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    assert scheduler.config.variance_type == "learned_range"
    assert scheduler.config.prediction_type == "epsilon" and not scheduler.config.clip_sample
    torch.testing.assert_close(scheduler.betas.double(), betas, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(scheduler.alphas_cumprod.double(), torch.cumprod(1 - betas, 0), rtol=1e-4, atol=1e-7)
    with pytest.raises(ValueError, match="positive"):
        make_training_scheduler(0)


def test_q_sample(scheduler):
    t = torch.tensor([0, 10, 500, 999])
    x0, noise = _batch(t)
    abar = scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    torch.testing.assert_close(q_sample(scheduler, x0, t, noise), abar.sqrt() * x0 + (1 - abar).sqrt() * noise)
    with pytest.raises(ValueError, match="noise"):
        q_sample(scheduler, x0, t, noise[:, :2])


def test_normal_kl():
    m1, lv1, m2, lv2 = torch.tensor(0.3), torch.tensor(-1.0), torch.tensor(-0.2), torch.tensor(0.5)
    s1, s2 = math.exp(0.5 * lv1.item()), math.exp(0.5 * lv2.item())
    expected = math.log(s2 / s1) + (s1 ** 2 + (m1.item() - m2.item()) ** 2) / (2 * s2 ** 2) - 0.5
    assert normal_kl(m1, lv1, m2, lv2).item() == pytest.approx(expected, rel=1e-5)
    x = torch.randn(10)
    assert torch.all(normal_kl(x, x, x, x) == 0)


@pytest.mark.parametrize("mean,scale", [(0.1, 0.05), (-0.97, 0.3), (0.5, 0.5), (0.0, 3.0)])
def test_discretized_likelihood_sums_to_one(mean, scale):
    bins = torch.arange(256, dtype=torch.float32) * 2 / 255 - 1  # every 8-bit value in [-1, 1]
    means, log_scales = torch.full_like(bins, mean), torch.full_like(bins, math.log(scale))
    log_probs = discretized_gaussian_log_likelihood(bins, means, log_scales)
    assert log_probs.exp().sum().item() == pytest.approx(1.0, abs=1e-4)
    # The edge bins hold the tails; among the inner bins the one at the mean is the most likely.
    assert bins[1 + log_probs[1:-1].argmax()].item() == pytest.approx(mean, abs=1.5 / 255)


def test_vb_is_zero_at_true_posterior(scheduler):
    t = torch.tensor([1, 5, 100, 999])
    x0, noise = _batch(t)
    x_t = q_sample(scheduler, x0, t, noise)
    # eps = the true noise recovers x0 exactly; v = -1 selects the posterior variance itself.
    output = torch.cat([noise, -torch.ones_like(noise)], dim=1)
    losses = training_losses(output, x0, x_t, t, noise, scheduler)
    assert torch.all(losses["mse"] == 0)
    assert losses["vb"].abs().max().item() < 1e-4
    # Any other variance costs bits (near t=T beta and the posterior variance almost coincide).
    wrong = torch.cat([noise, torch.ones_like(noise)], dim=1)
    assert torch.all(training_losses(wrong, x0, x_t, t, noise, scheduler)["vb"][:3] > 1e-4)


def test_vb_at_t0_is_decoder_nll(scheduler):
    t = torch.tensor([0, 0])
    x0, noise = _batch(t)
    x0 = (torch.round((x0 + 1) * 127.5) / 127.5 - 1).clamp(-253 / 255, 253 / 255)  # 8-bit data, inner bins
    x_t = q_sample(scheduler, x0, t, noise)
    output = torch.cat([noise, torch.zeros_like(noise)], dim=1)  # exact mean, v = 0
    vb = training_losses(output, x0, x_t, t, noise, scheduler)["vb"]
    # Decoder std at t=0 with v=0: geometric mean of beta_0 and the (clipped) posterior variance of t=1.
    log_var = 0.5 * torch.log(scheduler.betas.double()[0]) + 0.5 * _true_log_variance(scheduler, torch.tensor(1))
    half_bin = (1 / 255) / torch.exp(0.5 * log_var)
    expected_bits = -math.log2(math.erf(half_bin.item() / math.sqrt(2)))  # mass of the bin around the mean
    torch.testing.assert_close(vb, torch.full((2,), expected_bits), rtol=5e-3, atol=0)


def test_learned_range_matches_diffusers_sampler(scheduler):
    # Our v -> log variance must be the one diffusers' DDPMScheduler uses when it samples (t > 0).
    t, v = torch.tensor([2, 5, 20]), torch.tensor([-0.5, 0.2, 0.9])  # early steps, where the two ends differ
    log_var = torch.log(scheduler.betas.double()[t]) * (v + 1) / 2 + _true_log_variance(scheduler, t) * (1 - v) / 2
    for step, value, ours in zip(t.tolist(), v, log_var):
        theirs = scheduler._get_variance(step, predicted_variance=value)
        assert ours.item() == pytest.approx(theirs.item(), rel=1e-4)
    # With the exact mean, vb is the KL between two equal-mean Gaussians with those log variances.
    x0, noise = _batch(t, C=1, size=2)
    x_t = q_sample(scheduler, x0, t, noise)
    output = torch.cat([noise, v.view(-1, 1, 1, 1).expand_as(noise)], dim=1)
    vb = training_losses(output, x0, x_t, t, noise, scheduler)["vb"]
    zero = torch.zeros(3, dtype=torch.float64)
    expected = normal_kl(zero, _true_log_variance(scheduler, t), zero, log_var) / math.log(2)
    torch.testing.assert_close(vb.double(), expected, rtol=1e-3, atol=0)


def test_gradients_stop_gradient_split(scheduler):
    torch.manual_seed(0)
    t = torch.tensor([0, 3, 400, 999])
    x0, noise = _batch(t)
    x_t = q_sample(scheduler, x0, t, noise)
    output = torch.randn(4, 8, 8, 8, requires_grad=True)
    losses = training_losses(output, x0, x_t, t, noise, scheduler)
    (grad_vb,) = torch.autograd.grad(losses["vb"].sum(), output, retain_graph=True)
    assert torch.all(grad_vb[:, :4] == 0) and grad_vb[:, 4:].abs().sum() > 0
    (grad_mse,) = torch.autograd.grad(losses["mse"].sum(), output)
    assert torch.all(grad_mse[:, 4:] == 0) and grad_mse[:, :4].abs().sum() > 0
    torch.testing.assert_close(losses["loss"], losses["mse"] + losses["vb"])


def test_fixed_variance_model_and_bad_inputs(scheduler):
    t = torch.tensor([0, 500])
    x0, noise = _batch(t)
    x_t = q_sample(scheduler, x0, t, noise)
    eps = torch.randn_like(x0)
    losses = training_losses(eps, x0, x_t, t, noise, scheduler)
    weight = torch.from_numpy(_released_min_snr_weight()[t.numpy()]).float()
    torch.testing.assert_close(losses["mse"], weight * ((noise - eps) ** 2).mean(dim=(1, 2, 3)))
    assert torch.all(losses["vb"] == 0) and torch.equal(losses["loss"], losses["mse"])
    with pytest.raises(ValueError, match="channels"):
        training_losses(torch.randn(2, 3, 8, 8), x0, x_t, t, noise, scheduler)
    with pytest.raises(ValueError, match="steps in"):
        training_losses(eps, x0, x_t, torch.tensor([0, 1000]), noise, scheduler)


def _released_min_snr_weight():
    """w(t) = min(SNR, 5) / SNR for t = 0..999 of the released linear schedule, computed here from scratch, (T,)."""
    betas = np.linspace(1e-4, 0.02, 1000, dtype=np.float64)
    abar = np.cumprod(1.0 - betas)
    snr = abar / (1.0 - abar)
    return np.minimum(snr, 5.0) / snr


def test_min_snr_weight_values():
    w = _released_min_snr_weight()
    # The values quoted by the spec (section 6), so the from-scratch formula is itself checked.
    assert w[0] == pytest.approx(5e-4, rel=0.02) and w[10] == pytest.approx(0.011, rel=0.05)
    assert w[100] == pytest.approx(0.59, rel=0.02) and np.all(w[130:] == 1.0) and w[129] < 1.0
    ours = min_snr_weight(make_training_scheduler(), torch.arange(1000)).double().numpy()
    np.testing.assert_allclose(ours, w, rtol=1e-6)
    with pytest.raises(ValueError, match="gamma"):
        min_snr_weight(make_training_scheduler(), torch.arange(3), gamma=0)


def test_loss_is_the_released_weighted_mse_plus_vb_at_every_timestep(scheduler):
    # 1,000 random (x0, t, noise, output) cases, one per timestep: mse and loss against the released terms.
    t = torch.arange(1000)
    x0, noise = _batch(t, C=2, size=4, seed=1)
    x_t = q_sample(scheduler, x0, t, noise)
    output = torch.randn(1000, 4, 4, 4, generator=torch.Generator().manual_seed(2))
    losses = training_losses(output, x0, x_t, t, noise, scheduler)
    raw = ((noise.double() - output[:, :2].double()) ** 2).mean(dim=(1, 2, 3)).numpy()
    expected_mse = _released_min_snr_weight() * raw
    relative = np.abs(losses["mse"].double().numpy() - expected_mse) / expected_mse
    assert relative.max() < 1e-5, relative.max()
    # The VB term is unchanged by the weight (it trains the variance only), and loss = weighted mse + vb.
    unweighted = training_losses(output, x0, x_t, t, noise, scheduler, min_snr_gamma=None)
    torch.testing.assert_close(unweighted["mse"].double(), torch.from_numpy(raw), rtol=1e-5, atol=0)
    torch.testing.assert_close(losses["vb"], unweighted["vb"])
    torch.testing.assert_close(losses["loss"], losses["mse"] + losses["vb"])


def _warm_up(sampler, loss_of_t):
    """Feed every timestep its full history of losses loss_of_t(t)."""
    t = torch.arange(sampler.num_timesteps).repeat(sampler.history_per_term)
    sampler.update(t, loss_of_t(t.double()))


def test_uniform_sampler():
    sampler = make_timestep_sampler("uniform", 50)
    assert isinstance(sampler, UniformSampler)
    t, w = sampler.sample(4000, "cpu", torch.Generator().manual_seed(0))
    assert t.dtype == torch.long and t.min() >= 0 and t.max() < 50 and torch.all(w == 1)
    assert torch.bincount(t, minlength=50).min() > 40  # every step is drawn about 80 times


def test_second_moment_sampler_warm_up_and_preference():
    sampler = make_timestep_sampler("loss-second-moment", 20)
    assert isinstance(sampler, LossSecondMomentSampler)
    sampler.update(torch.arange(19).repeat(10), torch.ones(190))  # step 19 still lacks its history
    assert not sampler.warmed_up()
    _, w = sampler.sample(64, "cpu", torch.Generator().manual_seed(0))
    assert torch.all(w == 1)
    sampler.update(torch.full((10,), 19), torch.ones(10))
    _warm_up(sampler, lambda t: 1.0 + t)  # larger losses at larger t
    assert sampler.warmed_up()
    p = sampler.probabilities()
    assert torch.all(p[1:] > p[:-1]) and p.sum().item() == pytest.approx(1.0)
    t, w = sampler.sample(20000, "cpu", torch.Generator().manual_seed(1))
    assert (t >= 10).float().mean() > 0.6
    torch.testing.assert_close(w, (1 / (20 * p[t])).float())
    assert (p * (1 / (20 * p))).sum().item() == pytest.approx(1.0)  # E_p[w] = 1 exactly
    assert w.double().mean().item() == pytest.approx(1.0, abs=0.03)  # and empirically


def test_second_moment_sampler_keeps_last_losses():
    sampler = LossSecondMomentSampler(3, history_per_term=2)
    sampler.update(torch.tensor([0, 0, 0]), torch.tensor([1.0, 2.0, 3.0]))
    assert sampler.loss_history[0].tolist() == [2.0, 3.0] and sampler.loss_counts.tolist() == [2, 0, 0]
    with pytest.raises(ValueError, match="steps in"):
        sampler.update(torch.tensor([3]), torch.tensor([1.0]))


def _reference_update(history, counts, t, losses):
    """The released update, one sample at a time: a full history drops its oldest loss."""
    history, counts = history.clone(), counts.clone()
    K = history.shape[1]
    for step, loss in zip(t.tolist(), losses.double().tolist()):
        if counts[step] == K:
            history[step, :-1] = history[step, 1:].clone()
            history[step, -1] = loss
        else:
            history[step, counts[step]] = loss
            counts[step] += 1
    return history, counts


def test_second_moment_sampler_update_equals_the_per_sample_loop():
    # Batches that repeat timesteps (more often than the history holds), over empty, filling and full histories.
    generator = torch.Generator().manual_seed(0)
    sampler = LossSecondMomentSampler(7, history_per_term=3)
    history, counts = sampler.loss_history.clone(), sampler.loss_counts.clone()
    for size in (0, 1, 5, 12, 30, 4, 64):
        t = torch.randint(0, 7, (size,), generator=generator)
        losses = torch.rand(size, generator=generator)
        sampler.update(t, losses)
        history, counts = _reference_update(history, counts, t, losses)
        assert torch.equal(sampler.loss_counts, counts)
        assert torch.equal(sampler.loss_history, history), size


def test_sampler_state_round_trip():
    sampler = make_timestep_sampler("loss-second-moment", 30)
    _warm_up(sampler, lambda t: (t - 15).abs() + 0.1)
    buffer = io.BytesIO()
    torch.save(sampler.state_dict(), buffer)
    buffer.seek(0)
    restored = make_timestep_sampler("loss-second-moment", 30)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert restored.warmed_up()
    for a, b in zip(sampler.sample(100, "cpu", torch.Generator().manual_seed(5)),
                    restored.sample(100, "cpu", torch.Generator().manual_seed(5))):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="timesteps"):
        make_timestep_sampler("loss-second-moment", 10).load_state_dict(sampler.state_dict())


def test_unknown_sampler_and_bad_arguments():
    with pytest.raises(ValueError, match="unknown timestep sampler"):
        make_timestep_sampler("importance", 1000)
    with pytest.raises(ValueError, match="uniform_prob"):
        LossSecondMomentSampler(10, uniform_prob=2.0)
    with pytest.raises(ValueError, match="positive"):
        UniformSampler(0)
