"""LPIPS from local weight files (formats of torchvision's AlexNet and lpips' heads), and ``eval --lpips``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from omnilv.cli import app
from training.eval.lpips import CHANNELS, CONVS, LPIPS, LpipsError

runner = CliRunner()
#: lpips 0.1.4's own ``LPIPS(net="alex", version="0.1")`` on the ``weights`` fixture and the pairs of
#: ``_pairs`` (inputs in [-1, 1]), float32 on CPU. Procedure: ``pip download --no-deps lpips==0.1.4``, unzip
#: the wheel, put a stub ``torchvision.models`` in ``sys.modules`` whose ``alexnet()`` returns an object with
#: torchvision's ``AlexNet.features`` Sequential (copied from torchvision/models/alexnet.py; torchvision does
#: not import beside this CPU torch), build ``lpips.LPIPS(net="alex", model_path=<the fixture's alex.pth>)``,
#: copy each ``features.{i}.weight/bias`` of the fixture's trunk file into ``net.slice{s}.{i}.*`` (s = 1..5
#: for i = 0, 3, 6, 8, 10), and call it on each pair. The wheel is not a dependency; nothing is downloaded
#: at test time.
LPIPS_PACKAGE = {"near": 0.016960617154836655, "far": 0.5511841177940369, "mirror": 1.1134326457977295}


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """Random weights saved exactly as the real files are laid out (trunk .pth with classifier keys too)."""
    g = torch.Generator().manual_seed(0)
    folder = tmp_path_factory.mktemp("lpips")
    trunk = {}
    for i, (cin, cout, k, _, _) in CONVS.items():
        trunk[f"features.{i}.weight"] = torch.randn(cout, cin, k, k, generator=g) * (2 / (cin * k * k)) ** 0.5
        trunk[f"features.{i}.bias"] = 0.1 * torch.randn(cout, generator=g)  # non-zero: a dropped bias shows
    trunk["classifier.1.weight"] = torch.randn(8, 4, generator=g)  # torchvision's file has these: ignored
    torch.save(trunk, folder / "alexnet-owt-7be5be79.pth")
    lins = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1, generator=g) for i, c in enumerate(CHANNELS)}
    torch.save(lins, folder / "alex.pth")
    return folder


def test_loads_both_files_and_measures_distance(weights, small_image):
    model = LPIPS.from_folder(weights)
    trunk = torch.load(weights / "alexnet-owt-7be5be79.pth", weights_only=True)
    torch.testing.assert_close(model.features["6"].weight, trunk["features.6.weight"], rtol=0, atol=0)
    img = np.ascontiguousarray(small_image[:64, :64])
    rng = np.random.default_rng(0)
    noisy = [np.clip(img + rng.normal(0, s, img.shape), 0, 1).astype(np.float32) for s in (0.02, 0.2)]
    assert model.distance(img, img) == 0.0
    near, far = model.distance(img, noisy[0]), model.distance(img, noisy[1])
    assert 0 < near < far
    assert model.distance(noisy[1], img) == pytest.approx(far, rel=1e-6)  # symmetric


def _pairs(small_image: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    img = np.ascontiguousarray(small_image[:64, :64])
    rng = np.random.default_rng(0)
    near, far = (np.clip(img + rng.normal(0, s, img.shape), 0, 1).astype(np.float32) for s in (0.02, 0.2))
    rect = np.ascontiguousarray(small_image[:64, :96])  # not square: the spatial mean sees both sides
    return {"near": (img, near), "far": (img, far), "mirror": (rect, np.ascontiguousarray(rect[:, ::-1]))}


def test_distances_equal_the_lpips_packages_own_network(weights, small_image):
    model = LPIPS.from_folder(weights)
    pairs = _pairs(small_image)
    got = {name: model.distance(a, b) for name, (a, b) in pairs.items()}
    assert got == pytest.approx(LPIPS_PACKAGE, rel=1e-5)
    # A batch gives each pair's own distance (B,), not a mix of the batch.
    t = [torch.from_numpy(np.stack(x)).permute(0, 3, 1, 2) * 2 - 1 for x in zip(pairs["near"], pairs["far"],
                                                                                 strict=True)]
    torch.testing.assert_close(model(*t), torch.tensor([LPIPS_PACKAGE["near"], LPIPS_PACKAGE["far"]]),
                               rtol=1e-5, atol=0)


def test_missing_and_hostile_files_are_clear_errors(weights, tmp_path, hostile_pickle):
    only_trunk = tmp_path / "only_trunk"
    only_trunk.mkdir()
    (only_trunk / "a.pth").write_bytes((weights / "alexnet-owt-7be5be79.pth").read_bytes())
    with pytest.raises(LpipsError, match="LPIPS linear heads"):
        LPIPS.from_folder(only_trunk)
    with pytest.raises(LpipsError, match="not a folder"):
        LPIPS.from_folder(tmp_path / "nope")
    write_hostile, canary = hostile_pickle
    hostile = tmp_path / "hostile"
    hostile.mkdir()
    write_hostile(hostile / "alex.pth", "lin0.model.1.weight")
    with pytest.raises(LpipsError, match="alex.pth"):
        LPIPS.from_folder(hostile)
    assert not canary.exists()


def test_eval_cli_reports_lpips_per_task(weights, tmp_path, eval_inputs):
    model, corpus = eval_inputs
    out = tmp_path / "report"
    res = runner.invoke(app, ["eval", "--checkpoint", str(model), str(corpus), "--out", str(out),
                              "--lpips", str(weights)])
    assert res.exit_code == 0, res.output
    tasks = json.loads((out / "results.json").read_text())["tasks"]
    assert tasks["identity"]["lpips_input"] == 0.0 and tasks["noise"]["lpips_input"] > 0
    assert all(np.isfinite(t["lpips"]) for t in tasks.values())
    assert "LPIPS restored" in (out / "index.html").read_text() and "LPIPS" in res.output
    bad = runner.invoke(app, ["eval", "--checkpoint", str(model), str(corpus), "--lpips",
                              str(tmp_path / "corpus")])
    assert bad.exit_code == 2 and "AlexNet trunk" in bad.output
