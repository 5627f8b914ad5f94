"""OmniLV network: shapes, exact no-op at init, where the adapter and the visual prompt act."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.model import OmniLV, OmniLVConfig
from training.model.presets import preset


def _inputs(B: int = 2, C: int = 3, H: int = 8, W: int = 12, T: int = 32, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(B, 5, dtype=torch.bool)
    mask[-1, 3:] = False
    return {"x_t": torch.randn(B, C, H, W, generator=g), "t": torch.rand(B, generator=g),
            "cond": torch.randn(B, C, H, W, generator=g), "text": torch.randn(B, 5, T, generator=g),
            "text_mask": mask}


def _refs(B: int = 2, C: int = 3, H: int = 8, W: int = 12, mask=(True, False)) -> dict:
    g = torch.Generator().manual_seed(1)
    return {"ref_input": torch.randn(B, C, H, W, generator=g), "ref_target": torch.randn(B, C, H, W, generator=g),
            "ref_mask": torch.tensor(mask)}


def _model(**overrides) -> OmniLV:
    torch.manual_seed(0)
    return OmniLV.from_preset("tiny", **overrides)


def _perturb(module: torch.nn.Module, seed: int = 3) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))


def test_forward_backward_shapes_and_every_trainable_parameter_gets_a_gradient():
    model = _model()
    out = model(**_inputs(), **_refs())
    assert out.shape == (2, 3, 8, 12)
    out.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []  # ZeRO/DDP need every trainable parameter in every step, even without exemplars
    model.zero_grad()
    model(**_inputs()).sum().backward()
    assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []


@pytest.mark.parametrize("with_refs", [False, True])
def test_fresh_model_equals_the_bare_backbone_exactly(with_refs):
    model = _model(num_layers=4)
    x = _inputs()
    ours = model(**x, **(_refs(mask=(True, True)) if with_refs else {}))
    rope = model.rope(4, 6, torch.device("cpu"))
    bare = model.backbone(x["x_t"], x["t"], x["text"], x["text_mask"], rope, cross_attention_kwargs={}).sample
    assert torch.equal(ours, bare)


def _injections(model: OmniLV, x: dict) -> list[torch.Tensor]:
    """What was added to each layer's input beyond the previous layer's output (hooks on the real modules)."""
    seen: dict[str, torch.Tensor] = {}
    hooks = [model.backbone.patch_embedder.register_forward_hook(lambda m, a, out: seen.__setitem__("emb", out[0]))]
    for i, layer in enumerate(model.backbone.layers):
        hooks.append(layer.register_forward_pre_hook(lambda m, a, i=i: seen.__setitem__(f"in{i}", a[0])))
        hooks.append(layer.register_forward_hook(lambda m, a, out, i=i: seen.__setitem__(f"out{i}", out)))
    with torch.no_grad():
        model(**x)
    for h in hooks:
        h.remove()
    prev = ["emb"] + [f"out{i}" for i in range(len(model.backbone.layers) - 1)]
    return [seen[f"in{i}"] - seen[p] for i, p in enumerate(prev)]


@pytest.mark.parametrize("where,expected", [("first_half", [0, 1]), ("second_half", [2, 3]), ("all", [0, 1, 2, 3])])
def test_adapter_adds_only_to_the_configured_layers(where, expected):
    model = _model(num_layers=4, adapter_layers=where)
    x = _inputs()
    assert all(torch.count_nonzero(d) == 0 for d in _injections(model, x))  # zero-init: nothing added
    before = model(**x)
    _perturb(model.adapter)
    injected = [i for i, d in enumerate(_injections(model, x)) if torch.count_nonzero(d) > 0]
    assert injected == expected
    assert not torch.equal(model(**x), before)


def test_adapter_perturbation_leaves_layers_before_injection_untouched():
    model = _model(num_layers=4, adapter_layers="second_half")
    x, outs = _inputs(), {}
    hooks = [layer.register_forward_hook(lambda m, a, o, i=i: outs.__setitem__(i, o))
             for i, layer in enumerate(model.backbone.layers)]
    model(**x)
    first = {i: outs[i].clone() for i in outs}
    _perturb(model.adapter)
    model(**x)
    for h in hooks:
        h.remove()
    assert torch.equal(outs[0], first[0]) and torch.equal(outs[1], first[1])
    assert not torch.equal(outs[2], first[2])


def test_visual_prompt_is_added_to_the_input_tokens_only_and_respects_the_mask():
    model = _model(num_layers=4, adapter_layers="second_half")  # layer 0's input = tokens + prompt only
    _perturb(model.prompt)
    x, seen = _inputs(), {}
    hooks = [model.backbone.time_caption_embed.register_forward_hook(lambda m, a, o: seen.__setitem__("temb", o)),
             model.backbone.layers[0].register_forward_pre_hook(lambda m, a: seen.__setitem__("in0", a[0]))]
    with torch.no_grad():
        model(**x)
        plain_in, plain_temb = seen["in0"].clone(), seen["temb"].clone()
        out_on = model(**x, **_refs(mask=(True, False)))
        on_in, on_temb = seen["in0"].clone(), seen["temb"].clone()
        out_off = model(**x, **_refs(mask=(False, False)))
    for h in hooks:
        h.remove()
    assert on_in.shape == plain_in.shape  # addition, not concatenation: same token count
    assert torch.count_nonzero(on_in[0] - plain_in[0]) > 0  # sample 0 has an exemplar
    assert torch.equal(on_in[1], plain_in[1])  # sample 1's mask is off: exactly unchanged
    assert torch.equal(on_temb, plain_temb)  # time/text conditioning untouched
    assert torch.equal(out_off, model(**x))
    assert not torch.equal(out_on[0], out_off[0]) and torch.equal(out_on[1], out_off[1])


def _bilinear(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resampling of the last two axes, written out: pixel centres at i + 0.5 on both grids (source
    coordinate ``(i + 0.5) * n_in / n_out - 0.5``), clamped at the edges, no antialiasing."""
    for axis, n_out in zip((-2, -1), size, strict=True):
        n_in = x.shape[axis]
        src = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0.0)
        i0 = np.floor(src).astype(int)
        w = (src - i0).reshape([-1] + [1] * (-axis - 1))  # broadcast along ``axis``
        x = np.take(x, i0, axis) * (1 - w) + np.take(x, np.minimum(i0 + 1, n_in - 1), axis) * w
    return x


def test_reference_bilinear_gives_the_figures_worked_by_hand():
    # Up x2, [0, 4] -> 4: sources -0.25 (clamped to 0), 0.25, 0.75, 1.25 (right neighbour clamped) -> 0, 1, 3, 4.
    assert _bilinear(np.array([[0.0, 4.0]]), (1, 4)).tolist() == [[0.0, 1.0, 3.0, 4.0]]
    # Down x2, [1, 3, 5, 7] -> 2: sources 0.5 and 2.5 -> the mean of each pair, 2 and 6.
    assert _bilinear(np.array([[1.0, 3.0, 5.0, 7.0]]), (1, 2)).tolist() == [[2.0, 6.0]]
    x = np.random.default_rng(0).random((3, 16, 24))  # down x2 on both axes: the mean of each 2x2 block
    np.testing.assert_allclose(_bilinear(x, (8, 12)), x.reshape(3, 8, 2, 12, 2).mean((2, 4)), atol=1e-12)


@pytest.mark.parametrize("size", [(16, 24), (4, 6), (16, 16), (5, 7)])
def test_exemplars_of_another_size_are_resampled_to_the_token_grid(size):
    model = _model()
    _perturb(model.prompt)
    x = _inputs()
    g = torch.Generator().manual_seed(2)
    refs = {k: torch.randn(2, 3, *size, generator=g) for k in ("ref_input", "ref_target")}
    # The same exemplars resampled here to the query's 8x12 grid, so the model takes them as they are.
    on_grid = {k: torch.from_numpy(_bilinear(v.double().numpy(), (8, 12))).float() for k, v in refs.items()}
    with torch.no_grad():
        out, expected, bare = model(**x, **refs), model(**x, **on_grid), model(**x)
    assert out.shape == (2, 3, 8, 12)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    assert float((expected - bare).abs().amax(dim=(1, 2, 3)).min()) > 1e-2  # each sample's exemplar acts


def test_all_false_text_mask_does_not_produce_nan():
    x = _inputs()
    x["text_mask"][:] = False
    assert torch.isfinite(_model()(**x)).all()


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="divisible by 4"):
        OmniLVConfig(hidden_size=30, num_attention_heads=3)
    with pytest.raises(ValueError, match="adapter_layers"):
        OmniLVConfig(adapter_layers="middle")
    with pytest.raises(ValueError, match="unknown model preset 'huge'"):
        OmniLV.from_preset("huge")
    with pytest.raises(ValueError, match="multiple of patch_size"):
        _model()(**_inputs(H=7))


def test_paper_preset_matches_the_2b_backbone_shape():
    cfg = OmniLVConfig(**preset("2b"))
    assert (cfg.hidden_size, cfg.num_layers, cfg.num_attention_heads, cfg.patch_size) == (2304, 24, 32, 2)
    assert cfg.injected_layers() == list(range(12))


def test_bf16_weights_accept_fp32_batches():
    # DeepSpeed's bf16 mode casts the module, not the batch: the network must cast its inputs.
    model = _model().to(torch.bfloat16)
    out = model(**_inputs(), **_refs())
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()
    out.float().square().mean().backward()
