"""Memory: no dense attention mask, no host sync in the forward, and activation checkpointing as a switch."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import LuminaAttnProcessor2_0

from training.config import load_train_config
from training.model import OmniLV


class AllOnesMask(LuminaAttnProcessor2_0):
    """What OmniLV ran before: diffusers' processor, self-attention given the patch embedder's all-ones mask."""

    def __call__(self, attn, hidden_states, encoder_hidden_states, attention_mask=None, query_rotary_emb=None,
                 key_rotary_emb=None, base_sequence_length=None):
        if attention_mask is None:
            attention_mask = torch.ones(encoder_hidden_states.shape[:2], dtype=torch.int32)
        return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, query_rotary_emb,
                                key_rotary_emb, base_sequence_length)


def _inputs(B: int = 2, H: int = 16, W: int = 16, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(B, 7, dtype=torch.bool)
    mask[1, 3:] = False  # a padded instruction: cross-attention still needs its key mask
    return {"x_t": torch.randn(B, 3, H, W, generator=g), "t": torch.rand(B, generator=g),
            "cond": torch.randn(B, 3, H, W, generator=g), "text": torch.randn(B, 7, 32, generator=g),
            "text_mask": mask, "ref_input": torch.randn(B, 3, H, W, generator=g),
            "ref_target": torch.randn(B, 3, H, W, generator=g), "ref_mask": torch.tensor([True, False])}


def _model(**overrides) -> OmniLV:
    torch.manual_seed(0)
    net = OmniLV.from_preset("tiny", **overrides)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():  # every weight non-trivial: the adapter and the prompt act, the gates are open
        for p in net.parameters():
            if p.requires_grad:
                p.add_(0.2 * torch.randn(p.shape, generator=g))
    return net


def _loss_and_grads(net: OmniLV, x: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    net.zero_grad()
    loss = net(**x).square().mean()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("kv_heads", [None, 1])
def test_no_mask_for_self_attention_same_output_and_gradients_as_the_all_ones_mask(kv_heads, monkeypatch):
    net = _model(num_layers=4, num_kv_heads=kv_heads)
    old = copy.deepcopy(net)
    for m in old.backbone.modules():
        if hasattr(m, "set_processor"):
            m.set_processor(AllOnesMask())
    x = _inputs()
    masks: list[tuple | None] = []
    sdpa = F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, **kw):
        masks.append(None if attn_mask is None else tuple(attn_mask.shape))
        return sdpa(q, k, v, attn_mask=attn_mask, **kw)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    loss, grads = _loss_and_grads(net, x)
    ours = masks.copy()
    old_loss, old_grads = _loss_and_grads(old, x)
    B, H, N, L = 2, 2, 64, 7
    assert ours == [None, (B, 1, 1, L)] * 4  # per layer: self-attention unmasked, cross-attention (B, 1, 1, L)
    assert masks[8:] == [(B, H, N, N), (B, H, N, L)] * 4  # what diffusers' processor hands SDPA
    torch.testing.assert_close(loss, old_loss, rtol=1e-5, atol=1e-6)
    assert grads.keys() == old_grads.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], old_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_the_forward_needs_no_value_from_the_device():
    # Meta tensors have no values: any host sync (bool(tensor), .item()) in the forward would raise here.
    with torch.device("meta"):
        net = OmniLV.from_preset("tiny")
        x = {k: v.to("meta") for k, v in _inputs().items()}
        x["text_mask"] = torch.zeros(2, 7, dtype=torch.bool)  # all-empty rows: the guard runs, branch-free
        out = net(**x)
    assert out.shape == (2, 3, 16, 16)


def test_activation_checkpointing_gives_the_same_loss_and_gradients():
    net = _model(num_layers=4)
    x = _inputs()
    loss, grads = _loss_and_grads(net, x)
    net.activation_checkpointing = True
    ck_loss, ck_grads = _loss_and_grads(net, x)
    torch.testing.assert_close(ck_loss, loss, rtol=0, atol=1e-7)
    assert ck_grads.keys() == grads.keys()
    for name in grads:
        torch.testing.assert_close(ck_grads[name], grads[name], rtol=1e-5, atol=1e-7, msg=name)
    net.eval()  # inference never checkpoints
    with torch.no_grad():
        assert torch.equal(net(**x), net(**x))


def _kept_for_backward(net: OmniLV, x: dict) -> int:
    """Bytes the graph keeps for backward, counted as bench/train_step.py counts them (one definition)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("bench_train_step",
                                                  Path(__file__).resolve().parents[3] / "bench" / "train_step.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench.kept_for_backward(net, x)


def test_activation_checkpointing_keeps_less_for_backward():
    net = _model(num_layers=4)
    x = _inputs(H=32, W=32)
    full = _kept_for_backward(net, x)
    net.activation_checkpointing = True
    checkpointed = _kept_for_backward(net, x)
    assert checkpointed < 0.5 * full, (checkpointed, full)


def test_the_switch_is_a_config_field_on_in_stage_3():
    from training.run import build_flow

    assert load_train_config("stage3_1024").model.activation_checkpointing
    assert not load_train_config("stage1_512").model.activation_checkpointing
    flow, *_ = build_flow(load_train_config("tiny_stage3", ["stage.init_from="]), torch.device("cpu"))
    assert flow.net.activation_checkpointing
