"""MUSIQ from a local checkpoint in pyiqa's layout (random weights, real size), its patches, and ``eval --musiq``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from omnilv.cli import app
from pipelines.read import ReadStats, iter_samples
from training.eval.musiq import MUSIQ, MusiqError, multiscale_patches

runner = CliRunner()
BLOCK = "transformer_encoder.transformer.encoderblock_"
#: Read off pyiqa/archs/musiq_arch.py (pyiqa 0.1.16): a renamed or reshaped key must fail here.
PYIQA_KEYS = {
    "conv_root.weight": (64, 3, 7, 7), "gn_root.bias": (64,), "block1.conv2.weight": (64, 64, 3, 3),
    "block1.conv_proj.weight": (256, 64, 1, 1), "block1.gn_proj.weight": (256,), "embedding.weight": (384, 16384),
    "transformer_encoder.posembed_input.position_emb": (1, 100, 384),
    "transformer_encoder.scaleembed_input.scale_emb": (3, 384), "transformer_encoder.cls": (1, 1, 384),
    BLOCK + "0.attention.query.weight": (384, 384), BLOCK + "13.attention.out.bias": (384,),
    BLOCK + "5.mlp.fc1.weight": (1152, 384), BLOCK + "13.norm2.weight": (384,),
    "transformer_encoder.encoder_norm.bias": (384,),
}
#: pyiqa 0.1.16's MUSIQ (its musiq_arch.py run with torchvision stubbed out) on these weights and ``image``
PYIQA_SCORES = {"koniq": -0.5535899, "ava": 6.1390166}


def _random_state(num_classes: int, seed: int) -> dict[str, torch.Tensor]:
    """Weights at pyiqa's scale: fan-in normal matrices, norms near 1, small embeddings and biases."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, v in MUSIQ(num_classes).state_dict().items():
        if v.ndim == 1 and ("norm" in key or ".gn" in key or key.startswith("gn_")) and key.endswith("weight"):
            state[key] = 1 + 0.1 * torch.randn(v.shape, generator=g)
        elif v.ndim == 1 or "emb" in key or key.endswith("cls"):
            state[key] = 0.05 * torch.randn(v.shape, generator=g)
        else:
            state[key] = torch.randn(v.shape, generator=g) / v[0].numel() ** 0.5
    return state


@pytest.fixture(scope="module")
def koniq(tmp_path_factory) -> Path:
    """A folder holding a single-score checkpoint saved the way pyiqa's release files are (a flat state dict)."""
    folder = tmp_path_factory.mktemp("musiq")
    torch.save(_random_state(1, 0), folder / "musiq_koniq_ckpt-e95806b9.pth")
    return folder


@pytest.fixture(scope="module")
def image(small_image) -> np.ndarray:
    return np.ascontiguousarray(small_image[:64, :96])  # (64, 96, 3)


def test_checkpoint_in_pyiqa_layout_loads_and_scores(koniq, image, tmp_path):
    path = koniq / "musiq_koniq_ckpt-e95806b9.pth"
    state = torch.load(path, weights_only=True)
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    assert len(shapes) == 248 and shapes["head.weight"] == (1, 384)
    assert {k: shapes.get(k) for k in PYIQA_KEYS} == PYIQA_KEYS
    model = MUSIQ.from_folder(koniq)
    assert not model.training
    torch.testing.assert_close(model.embedding.weight, state["embedding.weight"], rtol=0, atol=0)
    score = model.score(image)
    assert score == pytest.approx(PYIQA_SCORES["koniq"], abs=2e-5)
    assert model.score(image) == score == MUSIQ.from_file(path).score(image)
    noisy = np.clip(image + np.random.default_rng(0).normal(0, 0.1, image.shape), 0, 1).astype(np.float32)
    assert abs(model.score(noisy) - score) > 1e-4
    assert abs(model.score(image[:, ::-1]) - score) > 1e-4  # the spatial embedding sees the layout
    # a training checkpoint: weights under "params", names from DataParallel ("module.")
    torch.save({"params": {f"module.{k}": v for k, v in state.items()}, "iter": torch.tensor(5)}, tmp_path / "t.pt")
    assert MUSIQ.from_path(tmp_path / "t.pt").score(image) == score


def test_multiscale_patches_by_hand():
    img = torch.full((3, 64, 96), 0.5)
    img[:, 32:, 64:] = -0.25  # bottom-right patch of the original scale
    patches, spatial, scale = multiscale_patches(img)
    # 224: 64×96 → 149×224 (round(64·224/96)), 5×7 patches; 384: 256×384, 8×12; original: 2×3
    assert patches.shape == (35 + 96 + 6, 3, 32, 32)
    assert scale.tolist() == [0] * 35 + [1] * 96 + [2] * 6
    # spatial hash: patch row r of R goes to grid row floor(10·r / R), same for columns; index = 10·row + col
    rows5, cols7 = [0, 2, 4, 6, 8], [0, 1, 2, 4, 5, 7, 8]
    assert spatial[:35].tolist() == [10 * r + c for r in rows5 for c in cols7]
    rows8, cols12 = [0, 1, 2, 3, 5, 6, 7, 8], [0, 0, 1, 2, 3, 4, 5, 5, 6, 7, 8, 9]
    assert spatial[35:131].tolist() == [10 * r + c for r in rows8 for c in cols12]
    assert spatial[131:].tolist() == [0, 3, 6, 50, 53, 56]
    # original scale: the image's own 32×32 blocks, row by row
    assert (patches[131:136] == 0.5).all() and (patches[136] == -0.25).all()
    # 149 rows pad to 160 as TensorFlow's SAME does: 5 zero rows on top, 6 at the bottom
    top, bottom = patches[0, 0], patches[28, 0]  # first patch of the first and of the last patch row
    assert (top[:5] == 0).all() and top[5:].abs().min() > 0.2
    assert (bottom[26:] == 0).all() and bottom[:26].abs().min() > 0.2


def test_spatial_hash_follows_pyiqa_float32_resize():
    """205 patches along a side (a 6560 px image): pyiqa's nearest resize, in float32, puts patch 41 on grid row 1,
    where exact arithmetic (41·10 / 205 = 2) would say 2."""
    spatial = multiscale_patches(torch.zeros(3, 32, 205 * 32))[1][-205:]
    assert spatial[40:42].tolist() == [1, 1] and spatial[204] == 9


def test_ava_score_is_the_mean_of_ten_bins(tmp_path, image):
    save_file(_random_state(10, 1), str(tmp_path / "musiq_ava_ckpt-e8d3f067.safetensors"))
    model = MUSIQ.from_folder(tmp_path)
    assert model.num_classes == 10 and model.head[0].weight.shape == (10, 384)
    scores = [model.score(image), model.score(image[::-1])]
    assert all(1 <= s <= 10 for s in scores) and scores[0] != scores[1]
    assert scores[0] == pytest.approx(PYIQA_SCORES["ava"], abs=2e-5)
    with torch.no_grad():  # a head that ignores the image: half the mass on bin 3, half on bin 8
        model.head[0].weight.zero_()
        model.head[0].bias.copy_(torch.tensor([-50.0] * 2 + [0.0] + [-50.0] * 4 + [0.0] + [-50.0] * 2))
    assert model.score(image) == pytest.approx(5.5, abs=1e-5)


def test_missing_wrong_and_hostile_files_are_clear_errors(koniq, tmp_path, image, hostile_pickle):
    with pytest.raises(MusiqError, match="no such file"):
        MUSIQ.from_path(tmp_path / "musiq.pth")
    other = tmp_path / "other"
    other.mkdir()
    torch.save({"features.0.weight": torch.zeros(1)}, other / "alexnet.pth")
    with pytest.raises(MusiqError, match="no MUSIQ checkpoint.*musiq_koniq_ckpt-e95806b9.pth"):
        MUSIQ.from_folder(other)
    with pytest.raises(MusiqError, match="not a MUSIQ checkpoint"):
        MUSIQ.from_file(other / "alexnet.pth")
    for name in ("a.pth", "b.pt"):
        torch.save({"transformer_encoder.posembed_input.position_emb": torch.zeros(1)}, other / name)
    with pytest.raises(MusiqError, match="several MUSIQ checkpoints.*a.pth, b.pt"):
        MUSIQ.from_folder(other)
    state = torch.load(koniq / "musiq_koniq_ckpt-e95806b9.pth", weights_only=True)
    del state[BLOCK + "13.mlp.fc2.bias"]
    torch.save(state, tmp_path / "cut.pth")
    with pytest.raises(MusiqError, match="cut.pth: does not fit pyiqa's MUSIQ layout.*encoderblock_13.mlp.fc2.bias"):
        MUSIQ.from_file(tmp_path / "cut.pth")
    with pytest.raises(ValueError, match="≥ 32×32"):
        MUSIQ.from_folder(koniq).score(image[:20])
    write_hostile, canary = hostile_pickle
    hostile = tmp_path / "hostile"
    hostile.mkdir()
    write_hostile(hostile / "musiq.pth", "transformer_encoder.posembed_input.position_emb")
    with pytest.raises(MusiqError, match="musiq.pth: not a plain state dict"):
        MUSIQ.from_folder(hostile)
    assert not canary.exists()
    torch.save({"transformer_encoder.posembed_input.position_emb": 3}, hostile / "musiq.pth")
    with pytest.raises(MusiqError, match="musiq.pth: not a state dict of tensors"):
        MUSIQ.from_file(hostile / "musiq.pth")


def test_eval_cli_reports_musiq_per_task(koniq, tmp_path, eval_inputs):
    model, corpus = eval_inputs
    out = tmp_path / "report"
    path = koniq / "musiq_koniq_ckpt-e95806b9.pth"
    res = runner.invoke(app, ["eval", "--checkpoint", str(model), str(corpus), "--out", str(out),
                              "--musiq", str(path)])
    assert res.exit_code == 0, res.output
    results = json.loads((out / "results.json").read_text())
    tasks = results["tasks"]
    model = MUSIQ.from_file(path)
    stored = [s.input for s in iter_samples(str(corpus), ReadStats())]  # as the shard holds them (quantised)
    assert tasks["identity"]["musiq_input"] == pytest.approx(model.score(stored[0]), rel=1e-6)  # the tiny one skipped
    assert tasks["noise"]["musiq_input"] == pytest.approx(model.score(stored[1]), rel=1e-6)
    assert all(np.isfinite(t["musiq"]) for t in tasks.values())
    assert results["skipped"]["musiq: image under 32 px"] == 1
    assert "MUSIQ restored" in (out / "index.html").read_text() and "MUSIQ" in res.output
    bad = runner.invoke(app, ["eval", "--checkpoint", str(model), str(corpus), "--musiq",
                              str(tmp_path / "corpus")])
    assert bad.exit_code == 2 and "no MUSIQ checkpoint" in bad.output
