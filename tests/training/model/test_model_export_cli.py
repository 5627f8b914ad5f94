"""Export -> load round trip, encoders, metrics, and the restore / eval commands end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from typer.testing import CliRunner

from omnilv.cli import app
from pipelines.schema import Manifest, Sample, ShardRecord, shard_name
from training.eval.metrics import PSNR_CAP, psnr, ssim
from training.eval.restore import load_image, save_image
from training.model import OmniLV
from training.model.encoders import ImageCodec, TextEncoder
from training.model.export import ExportError, export_model, load_exported
from training.model.flow import FlowMatching

runner = CliRunner()


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """A tiny random model with non-zero adapter/prompt weights (so a round trip has something to lose)."""
    torch.manual_seed(0)
    flow = FlowMatching(OmniLV.from_preset("tiny"), timestep_sampling="uniform", text_dropout=0.2)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    out = tmp_path_factory.mktemp("export") / "model"
    export_model(flow, "tiny", "pixel", out, sampler={"steps": 2})
    torch.save(flow.state_dict(), out.parent / "reference.pt")
    return out


def test_export_round_trip_gives_identical_outputs(exported):
    flow, text, codec, meta = load_exported(exported)
    ref = FlowMatching(OmniLV.from_preset("tiny"))
    ref.load_state_dict(torch.load(exported.parent / "reference.pt", weights_only=True))
    ref.eval()
    assert meta["text_encoder"] == "tiny" and meta["codec"] == "pixel" and meta["sampler"]["steps"] == 2
    assert flow.timestep_sampling == "uniform" and flow.text_dropout == 0.2
    assert (exported / "backbone" / "config.json").is_file() and not list(exported.rglob("*.bin"))
    emb, mask = text.encode(["Remove the noise."])
    g = torch.Generator().manual_seed(0)
    x, cond = torch.randn(1, 3, 8, 8, generator=g), torch.randn(1, 3, 8, 8, generator=g)
    refs = (torch.randn(1, 3, 8, 8, generator=g), torch.randn(1, 3, 8, 8, generator=g), torch.tensor([True]))
    t = torch.tensor([0.4])
    with torch.no_grad():
        assert torch.equal(flow.net(x, t, cond, emb, mask, *refs), ref.net(x, t, cond, emb, mask, *refs))
    assert codec.channels == 3


def test_load_errors_name_the_problem(exported, tmp_path):
    with pytest.raises(ExportError, match="no omnilv.json"):
        load_exported(tmp_path)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "omnilv.json").write_text((exported / "omnilv.json").read_text())
    with pytest.raises(ExportError, match=r"missing \S+; the export is incomplete"):
        load_exported(broken)


def test_text_encoders_tiny_and_minilm_encode_offline():
    tiny = TextEncoder.from_spec("tiny")
    emb, mask = tiny.encode(["Remove the noise.", "Deblur"])
    assert emb.shape[:2] == mask.shape and emb.shape[2] == tiny.dim == 32 and mask.dtype == torch.bool
    assert mask[0].sum() > mask[1].sum() and torch.all(emb[1][~mask[1]] == 0)
    assert torch.equal(TextEncoder.from_spec("tiny").encode(["x"])[0], tiny.encode(["x"])[0])  # seeded
    assert not any(p.requires_grad for p in tiny.parameters())
    minilm = TextEncoder.from_spec("minilm")
    emb, mask = minilm.encode(["Remove the noise.", "Remove the rain."])
    assert emb.shape == (2, mask.shape[1], 384) and torch.isfinite(emb).all()
    assert not torch.allclose(emb[0], emb[1])
    with pytest.raises(ValueError, match="not a Hugging Face model folder"):
        TextEncoder.from_spec("/nonexistent/gemma")


def test_pixel_codec_is_identity_and_vae_folder_is_required():
    codec = ImageCodec.from_spec("pixel")
    img = torch.rand(1, 3, 5, 7) * 2 - 1
    assert torch.equal(codec.decode(codec.encode(img)), img) and codec.downsample == 1
    with pytest.raises(ValueError, match="AutoencoderKL"):
        ImageCodec.from_spec("/nonexistent/vae")


def test_metrics_are_sane():
    rng = np.random.default_rng(0)
    a = rng.random((16, 16, 3), dtype=np.float32)
    assert psnr(a, a) == PSNR_CAP and ssim(a, a) == pytest.approx(1.0)
    noisy = np.clip(a + rng.normal(0, 0.1, a.shape), 0, 1).astype(np.float32)
    noisier = np.clip(a + rng.normal(0, 0.3, a.shape), 0, 1).astype(np.float32)
    assert psnr(a, noisy) == pytest.approx(-10 * np.log10(np.mean((a - noisy).astype(np.float64) ** 2)))
    assert 15 < psnr(a, noisy) < 25 and psnr(a, noisier) < psnr(a, noisy)
    assert ssim(a, noisier) < ssim(a, noisy) < 0.99
    with pytest.raises(ValueError, match="shape"):
        psnr(a, a[:8])


def test_restore_cli_writes_a_same_size_image(exported, tmp_path, small_image):
    src = save_image(small_image[:37, :50], tmp_path / "in.png")  # odd size: padded then cropped back
    ref_a, ref_b = save_image(small_image[:20, :20], tmp_path / "a.png"), save_image(small_image[:20, :20],
                                                                                    tmp_path / "b.png")
    out = tmp_path / "out.png"
    res = runner.invoke(app, ["restore", "--checkpoint", str(exported), "--instruction", "Remove the noise.",
                              "--ref-input", str(ref_a), "--ref-target", str(ref_b), "--guidance", "2",
                              str(src), str(out)])
    assert res.exit_code == 0, res.output
    assert load_image(out).shape == (37, 50, 3)


def test_restore_cli_bad_paths_give_clear_errors(exported, tmp_path):
    res = runner.invoke(app, ["restore", "--checkpoint", str(exported), "--instruction", "x",
                              str(tmp_path / "missing.png"), str(tmp_path / "o.png")])
    assert res.exit_code == 2 and "missing.png: no such image file" in res.output
    (tmp_path / "junk.png").write_bytes(b"not an image")
    res = runner.invoke(app, ["restore", "--checkpoint", str(tmp_path), "--instruction", "x",
                              str(tmp_path / "junk.png"), str(tmp_path / "o.png")])
    assert res.exit_code == 2 and "junk.png: not a readable" in res.output
    save_image(np.zeros((8, 8, 3)), tmp_path / "ok.png")
    res = runner.invoke(app, ["restore", "--checkpoint", str(tmp_path), "--instruction", "x",
                              str(tmp_path / "ok.png"), str(tmp_path / "o.png")])
    assert res.exit_code == 2 and "not an exported OmniLV folder" in res.output


def _tiny_corpus(root: Path, small_image: np.ndarray) -> Path:
    """Two tasks: 'identity' (input == target) and 'noise' (input = target + noise)."""
    rng = np.random.default_rng(0)
    clean = [np.ascontiguousarray(small_image[i * 16:(i + 1) * 16, :24]) for i in range(4)]
    samples = [Sample(f"id{i}", c, c, "Keep it.", {"task": "identity"}) for i, c in enumerate(clean[:2])]
    samples += [Sample(f"nz{i}", np.clip(c + rng.normal(0, 0.1, c.shape), 0, 1).astype(np.float32), c,
                       "Remove the noise.", {"task": "noise"}) for i, c in enumerate(clean[2:])]
    root.mkdir(parents=True)
    with wds.TarWriter(str(root / shard_name(0))) as tw:
        for s in samples:
            tw.write(s.to_members())
    shard = root / shard_name(0)
    manifest = Manifest([ShardRecord(shard.name, len(samples), shard.stat().st_size, "0" * 64,
                                     {"identity": 2, "noise": 2})])
    (root / "manifest.json").write_text(manifest.to_json())
    return root


def test_eval_cli_writes_json_html_and_sheet(exported, tmp_path, small_image):
    corpus = _tiny_corpus(tmp_path / "corpus", small_image)
    out = tmp_path / "report"
    res = runner.invoke(app, ["eval", "--checkpoint", str(exported), str(corpus), "--out", str(out), "--steps", "1"])
    assert res.exit_code == 0, res.output
    results = json.loads((out / "results.json").read_text())
    assert results["samples"] == 4 and set(results["tasks"]) == {"identity", "noise"}
    assert results["tasks"]["identity"]["psnr_input"] == PSNR_CAP
    assert 15 < results["tasks"]["noise"]["psnr_input"] < 25
    assert np.isfinite(results["tasks"]["noise"]["psnr"]) and -1 <= results["tasks"]["noise"]["ssim"] <= 1
    assert (out / "index.html").read_text().count("<tr>") == 3
    from pipelines.sheets import CAPTION, HEADER

    assert load_image(out / "sheet.png").shape[:2] == (HEADER + 2 * (1 + CAPTION + 128), 3 * 128)  # a row a task
    res = runner.invoke(app, ["eval", "--checkpoint", str(exported), str(corpus), "--out", str(out), "--limit", "1"])
    assert res.exit_code == 0 and json.loads((out / "results.json").read_text())["samples"] == 1


def test_eval_cli_missing_corpus_is_a_clear_error(exported, tmp_path):
    res = runner.invoke(app, ["eval", "--checkpoint", str(exported), str(tmp_path / "nope")])
    assert res.exit_code == 2 and "no manifest" in res.output
