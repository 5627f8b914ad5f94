"""Flow-matching objective, ODE sampler with guidance, EMA."""

from __future__ import annotations

import pytest
import torch

from training.model import OmniLV
from training.model.flow import FlowMatching, null_text
from training.run.ema import EMA


def _flow(**kw) -> FlowMatching:
    torch.manual_seed(0)
    return FlowMatching(OmniLV.from_preset("tiny"), **kw)


def _batch(B: int = 2) -> dict:
    g = torch.Generator().manual_seed(0)
    x1 = torch.rand(B, 3, 8, 8, generator=g) * 2 - 1
    return {"x1": x1, "cond": (x1 + 0.3 * torch.randn(x1.shape, generator=g)).clamp(-1, 1),
            "text": torch.randn(B, 4, 32, generator=g), "text_mask": torch.ones(B, 4, dtype=torch.bool)}


@pytest.mark.parametrize("sampling", ["uniform", "logit_normal"])
def test_loss_is_finite_and_falls_on_a_fixed_batch(sampling):
    flow, batch = _flow(timestep_sampling=sampling, text_dropout=0.0), _batch()
    opt = torch.optim.Adam(flow.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        # Same noise and times every step: the objective is fixed, so Adam must bring it down.
        loss = flow(batch, generator=torch.Generator().manual_seed(7))
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5


def test_timestep_sampling_ranges():
    flow = _flow(timestep_sampling="logit_normal")
    t = flow.sample_t(4000, torch.device("cpu"), torch.Generator().manual_seed(0))
    assert t.min() > 0 and t.max() < 1 and abs(t.median().item() - 0.5) < 0.05
    assert ((t > 0.25) & (t < 0.75)).float().mean() > 0.6  # logit-normal concentrates mid-way; uniform: 0.5
    with pytest.raises(ValueError, match="timestep_sampling"):
        _flow(timestep_sampling="cosine")


def test_full_instruction_dropout_equals_training_on_null_text():
    flow, batch = _flow(text_dropout=1.0), _batch()
    dropped = flow(batch, generator=torch.Generator().manual_seed(5))
    ntext, nmask = null_text(batch["text"], batch["text_mask"])
    flow.text_dropout = 0.0
    explicit = flow({**batch, "text": ntext, "text_mask": nmask}, generator=torch.Generator().manual_seed(5))
    # The dropout draw consumes generator state after x0/t, so both calls see the same noise and times.
    assert torch.equal(dropped, explicit)
    assert not torch.equal(explicit, flow(batch, generator=torch.Generator().manual_seed(5)))


def _trained_flow() -> FlowMatching:
    flow = _flow()
    g = torch.Generator().manual_seed(9)
    with torch.no_grad():  # make text and exemplar matter so guidance has something to amplify
        for p in flow.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    return flow.eval()


def test_sampler_shapes_guidance_and_methods():
    flow, b = _trained_flow(), _batch()
    noise = torch.randn(b["x1"].shape, generator=torch.Generator().manual_seed(1))
    args = (b["cond"], b["text"], b["text_mask"])
    euler = flow.sample(*args, steps=4, noise=noise)
    assert euler.shape == b["x1"].shape and torch.isfinite(euler).all()
    assert torch.equal(euler, flow.sample(*args, steps=4, noise=noise.clone()))  # deterministic given noise
    heun = flow.sample(*args, steps=4, method="heun", noise=noise)
    assert torch.isfinite(heun).all() and not torch.allclose(heun, euler)
    guided = flow.sample(*args, steps=4, guidance=3.0, noise=noise)
    assert not torch.allclose(guided, euler)
    with pytest.raises(ValueError, match="method"):
        flow.sample(*args, method="rk4")


def test_guided_velocity_is_the_cfg_combination():
    flow, b = _trained_flow(), _batch()
    x, refs = b["x1"], (None, None, None)
    with torch.no_grad():
        v_text = flow.velocity(x, 0.3, b["cond"], b["text"], b["text_mask"], refs, 1.0)
        v_null = flow.velocity(x, 0.3, b["cond"], *null_text(b["text"], b["text_mask"]), refs, 1.0)
        v_g = flow.velocity(x, 0.3, b["cond"], b["text"], b["text_mask"], refs, 2.5)
    torch.testing.assert_close(v_g, v_null + 2.5 * (v_text - v_null), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(v_text, v_null)


def test_sampler_with_exemplars_runs_with_guidance():
    flow, b = _trained_flow(), _batch()
    ref = {"ref_input": b["cond"].flip(0), "ref_target": b["x1"].flip(0), "ref_mask": torch.tensor([True, False])}
    out = flow.sample(b["cond"], b["text"], b["text_mask"], **ref, steps=2, method="heun", guidance=2.0,
                      generator=torch.Generator().manual_seed(0))
    assert out.shape == b["x1"].shape and torch.isfinite(out).all()


def test_ema_tracks_copies_and_round_trips():
    model = torch.nn.Linear(3, 2)
    ema = EMA(model, decay=0.9, warmup=False)
    start = {k: v.clone() for k, v in ema.shadow.items()}
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)
    torch.testing.assert_close(ema.shadow["weight"], start["weight"] + 0.1)
    torch.testing.assert_close(ema.shadow["bias"], start["bias"])
    other = torch.nn.Linear(3, 2)
    ema.copy_to(other)
    assert torch.equal(other.weight, ema.shadow["weight"])
    fresh = EMA(torch.nn.Linear(3, 2), decay=0.5)
    fresh.load_state_dict(ema.state_dict())
    assert fresh.num_updates == 1 and fresh.decay == 0.9 and torch.equal(fresh.shadow["weight"], ema.shadow["weight"])
    assert EMA(model, decay=0.999).current_decay() == pytest.approx(0.1)  # warmup: early steps forget the init
    with pytest.raises(ValueError, match="decay"):
        EMA(model, decay=1.0)
