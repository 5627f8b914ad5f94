"""The latent cache: a real Ray Data build with a tiny real AutoencoderKL, read back, and trained on."""

from __future__ import annotations

import hashlib
import io
import json
import math
import pickle
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from pipelines.build import tar_bytes
from pipelines.ingest import SkipLedger, crop_pair
from pipelines.read import iter_samples, load_manifest
from pipelines.schema import MANIFEST
from training.config import load_train_config
from training.data.batches import collate, to_tensor
from training.data.latent_cache import cache_latents
from training.data.latent_format import COLUMNS, LATENTS_JSON, LatentCacheError
from training.data.latent_read import check_fits, load_meta, read_latents
from training.model.encoders import ImageCodec, TextEncoder

SIZE = 16
LAYER = -2


class Boom:
    """Unpickling this writes a file: proof that a reader deserialised a pickle."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.write_text, (Path(self.path), "unpickled!"))


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory) -> Path:
    """A tiny real diffusers VAE (4 latent channels, no downsampling), saved locally: nothing is downloaded."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(8,), layers_per_block=1, latent_channels=4, norm_num_groups=8,
                        sample_size=32)
    folder = tmp_path_factory.mktemp("vae")
    vae.save_pretrained(folder)
    return folder


def build(corpus: Path, out: Path, vae: Path, **kw):
    """A cache read at the text encoder's second-to-last layer, as Lumina-Next configs read Gemma (not the default)."""
    return cache_latents(str(corpus), str(out), str(vae), "tiny", sizes=[(SIZE, SIZE)], text_layer=LAYER,
                         use_exemplars=True, batch_size=8, num_cpus=0.5, **kw)


@pytest.fixture(scope="module")
def cache(ray_local, tiny_corpus, vae_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("cache") / "latents"
    return out, build(tiny_corpus, out, vae_dir)


def members(out: Path) -> dict[str, dict[str, bytes]]:
    """Every sample of every manifest-listed cache shard, by key (test-side reader of our own files)."""
    found: dict[str, dict[str, bytes]] = {}
    for rec in load_manifest(str(out)).shards:
        with tarfile.open(out / rec.name) as tar:
            for info in tar:
                key, _, member = info.name.partition(".")
                found.setdefault(key, {})[member] = tar.extractfile(info).read()
    return found


def npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def test_cache_holds_every_sample_in_manifest_listed_shards(cache, tiny_corpus, vae_dir):
    out, res = cache
    manifest = load_manifest(str(out))
    assert manifest.extra["kind"] == "omnilv-latents" and manifest.samples == res.samples == 32
    for rec in manifest.shards:
        data = (out / rec.name).read_bytes()
        assert len(data) == rec.bytes and hashlib.sha256(data).hexdigest() == rec.sha256
    assert sorted(p.name for p in out.glob("shard-*.tar")) == [s.name for s in manifest.shards]
    found = members(out)
    assert sorted(found) == [f"k{i:04d}" for i in range(32)]
    assert {m for ms in found.values() for m in ms} == {"target.npy", "input.npy", "ref_input.npy",
                                                       "ref_target.npy", "text.npy", "txt", "json"}
    meta = json.loads((out / LATENTS_JSON).read_text())
    assert meta["codec"] == str(vae_dir.resolve()) and meta["text"] == "tiny" and meta["text_layer"] == LAYER
    assert meta["latent_shapes"] == [[4, SIZE, SIZE]] and meta["scaling"]["scaling_factor"] == pytest.approx(0.18215)
    assert meta["corpus_manifest_sha256"] == hashlib.sha256((tiny_corpus / MANIFEST).read_bytes()).hexdigest()


def test_latents_and_text_equal_a_direct_encoding_of_the_same_crop(cache, tiny_corpus, vae_dir):
    out, _ = cache
    found = members(out)
    codec, text = ImageCodec.from_spec(str(vae_dir)), TextEncoder.from_spec("tiny", layer=LAYER)
    last = TextEncoder.from_spec("tiny")
    for sample in list(iter_samples(str(tiny_corpus)))[:3]:
        inp, tgt = crop_pair(sample.input, sample.target, (SIZE, SIZE), None)  # centre crop: random_crop off
        ref_in, ref_tgt = crop_pair(sample.ref_input, sample.ref_target, (SIZE, SIZE), None)
        got = found[sample.key]
        for member, img in (("input.npy", inp), ("target.npy", tgt), ("ref_input.npy", ref_in),
                            ("ref_target.npy", ref_tgt)):
            want = codec.encode(to_tensor(img[None])).numpy()[0]  # (4, 16, 16)
            np.testing.assert_allclose(npy(got[member]), want, atol=1e-5)
        emb, mask = text.encode([sample.instruction])
        assert np.array_equal(npy(got["text.npy"]), emb[0, : int(mask.sum())].numpy())
        assert not np.allclose(npy(got["text.npy"]), last.encode([sample.instruction])[0][0, : int(mask.sum())])
        assert got["txt"].decode() == sample.instruction


def test_reading_back_gives_the_same_arrays_and_training_batches(cache):
    out, res = cache
    found = members(out)
    rows = read_latents(str(out)).take_all()
    assert sorted(r["key"] for r in rows) == sorted(found)
    for row in rows[:4]:
        got = found[row["key"]]
        assert row["x1"].dtype == np.float32 and row["text"].dtype == np.float32
        assert np.array_equal(row["x1"], npy(got["target.npy"])) and np.array_equal(row["cond"], npy(got["input.npy"]))
        assert np.array_equal(row["ref_input"], npy(got["ref_input.npy"])) and row["ref_mask"]
        n = int(row["text_mask"].sum())
        assert np.array_equal(row["text"][:n], npy(got["text.npy"])) and not row["text"][n:].any()
    batch = collate({k: np.stack([r[k] for r in rows[:4]]) for k in rows[0]})
    assert batch["x1"].shape == (4, 4, SIZE, SIZE) and batch["text"].shape[1] == batch["text_mask"].sum(1).max()


def test_a_cache_is_never_overwritten_silently_nor_written_into_a_corpus(cache, tiny_corpus, vae_dir):
    out, _ = cache
    with pytest.raises(LatentCacheError, match="already holds a latent cache"):
        build(tiny_corpus, out, vae_dir)
    with pytest.raises(LatentCacheError, match="holds a corpus"):
        build(tiny_corpus, tiny_corpus, vae_dir)


def test_a_samples_bytes_do_not_depend_on_its_batch_neighbours(vae_dir):
    from training.data.latent_cache import EncodeLatents

    rng = np.random.default_rng(0)
    n = 6
    batch = {"key": np.array([f"k{i}" for i in range(n)], dtype=object), "task": np.array(["t"] * n, dtype=object),
             "txt": np.array(["Remove the noise.", "Sharpen it."] * 3, dtype=object),
             "ref_mask": np.array([True, False] * 3), "bucket": np.zeros(n, np.int32),
             **{c: rng.random((n, SIZE, SIZE, 3), dtype=np.float32) for c in ("input", "target", "ref_input",
                                                                                "ref_target")}}
    enc = EncodeLatents(str(vae_dir), "tiny", micro_batch=4, shards=2)
    whole = enc(batch)
    alone = enc({k: v[3:4] for k, v in batch.items()})  # the 4th sample by itself
    for col in ("input", "target", "ref_input", "text"):
        assert whole[col][3] == alone[col][0], col
    assert whole["ref_input"][5] == b"" and whole["ref_input"][4]  # no exemplar, nothing stored


@pytest.mark.slow
def test_rebuild_is_byte_identical(cache, tiny_corpus, vae_dir, tmp_path):
    out, _ = cache
    again = tmp_path / "latents"
    build(tiny_corpus, again, vae_dir)
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(p.name for p in again.iterdir())
    for name in names:
        assert (out / name).read_bytes() == (again / name).read_bytes(), name


def test_a_cache_built_with_another_codec_or_text_layer_is_refused(cache, tiny_corpus, vae_dir, tmp_path):
    from training.run.driver import make_trainer

    out, _ = cache
    cfg = load_train_config({"codec": "pixel", "text_layer": LAYER, "data": {"latents": str(out), "resolution": SIZE}})
    with pytest.raises(LatentCacheError, match="codec") as err:
        make_trainer(cfg)
    assert "'pixel'" in str(err.value) and str(vae_dir.resolve()) in str(err.value)
    cfg = load_train_config({"codec": str(vae_dir), "text_layer": LAYER,
                             "data": {"latents": str(out), "resolution": 32}})
    with pytest.raises(LatentCacheError, match="crop sizes"):
        make_trainer(cfg)
    cfg = load_train_config({"codec": str(vae_dir), "data": {"latents": str(out), "resolution": SIZE}})  # layer -1
    with pytest.raises(LatentCacheError, match=r"text_layer: config -1, cache -2"):
        make_trainer(cfg)


def test_a_cache_from_before_the_text_layer_was_recorded_holds_the_last_layer(cache, vae_dir):
    out, _ = cache
    old = {k: v for k, v in load_meta(str(out)).items() if k != "text_layer"}
    fits = dict(codec=str(vae_dir), text="tiny", sizes=[(SIZE, SIZE)], use_exemplars=True)
    check_fits(old, str(out), text_layer=-1, **fits)
    with pytest.raises(LatentCacheError, match=r"text_layer: config -2, cache -1"):
        check_fits(old, str(out), text_layer=-2, **fits)
    check_fits(load_meta(str(out)), str(out), text_layer=LAYER, **fits)


def test_cache_latents_command_encodes_at_the_configs_text_layer(tiny_corpus, tmp_path, monkeypatch):
    import training.data.latent_cache as latent_cache
    from omnilv.cli import app
    from training.data import CacheResult

    seen = {}

    def fake(*args, **kwargs):
        seen.update(kwargs)
        return CacheResult(str(tmp_path / "c"), 1, 1, {"latent_shapes": [], "text_dim": 8})

    monkeypatch.setattr(latent_cache, "cache_latents", fake)
    res = CliRunner().invoke(app, ["cache-latents", "configs/train/tiny_stage1.yaml", "--set", "text_layer=-2",
                                   "--set", f"data.corpus={tiny_corpus}", "--out", str(tmp_path / "c")])
    assert res.exit_code == 0, res.output
    assert seen["text_layer"] == -2


def test_pickle_members_in_a_cache_shard_are_skipped_never_unpickled(ray_local, cache, tmp_path):
    out, _ = cache
    hostile = tmp_path / "hostile"
    shutil.copytree(out, hostile)
    canary = tmp_path / "canary.txt"
    payload = pickle.dumps(Boom(str(canary)))
    boom = np.empty(1, dtype=object)
    boom[0] = Boom(str(canary))
    buf = io.BytesIO()
    np.save(buf, boom, allow_pickle=True)  # a pickled object array disguised as a latent
    rec = load_manifest(str(hostile)).shards[0]
    samples = [{"__key__": k, **m} for k, m in members(hostile).items() if k in _keys(hostile / rec.name)]
    samples[0].update({"pyd": payload, "pickle": payload})
    samples[1]["target.npy"] = buf.getvalue()
    (hostile / rec.name).write_bytes(tar_bytes(samples, (*COLUMNS, "pyd", "pickle")))
    ledger = SkipLedger.remote()
    rows = read_latents(str(hostile), ledger=ledger, max_tasks=1).take_all()
    assert len(rows) == 31 and samples[1]["__key__"] not in {r["key"] for r in rows}
    assert not canary.exists(), "a cache member was unpickled"
    assert ray_local.get(ledger.totals.remote()) == {"member:pyd": 1, "member:pickle": 1, "corrupt:target.npy": 1}


def test_a_cache_shard_cut_after_the_build_is_left_out_and_counted(ray_local, cache, tmp_path):
    out, res = cache
    cut = tmp_path / "cut"
    shutil.copytree(out, cut)
    rec = load_manifest(str(cut)).shards[0]
    (cut / rec.name).write_bytes((out / rec.name).read_bytes()[: rec.bytes // 2])  # a partial copy
    ledger = SkipLedger.remote()
    rows = read_latents(str(cut), ledger=ledger, max_tasks=1).take_all()
    assert len(rows) == res.samples - rec.samples and not {r["key"] for r in rows} & _keys(out / rec.name)
    assert ray_local.get(ledger.totals.remote()) == {"shard:truncated": 1}


def _keys(shard: Path) -> set[str]:
    with tarfile.open(shard) as tar:
        return {n.partition(".")[0] for n in tar.getnames()}


@pytest.mark.slow
def test_training_on_the_cache_runs_with_the_vae_channels(cache, vae_dir, tmp_path):
    from training.run import run_stage as train

    out, _ = cache
    cfg = load_train_config({
        "codec": str(vae_dir), "text": "tiny", "text_layer": LAYER,
        "data": {"latents": str(out), "resolution": SIZE, "batch_size": 4, "use_exemplars": True},
        "schedule": {"steps": 2, "checkpoint_every": 2, "log_every": 1, "eval_every": 0},
        "deepspeed": {"zero_stage": 2}, "stage": {"name": "latent"},
        "run": {"workers": 1, "cpus_per_worker": 1, "storage_path": str(tmp_path), "export": False}})
    m = train(cfg, progress=False).metrics
    assert m["step"] == 2 and m["world_size"] == 1 and math.isfinite(m["loss"])
    assert m["exemplar_fraction"] == 1.0  # the cached exemplar latents reach the model


def test_cli_help_teaches_and_errors_are_for_people(tiny_corpus, tmp_path):
    from omnilv.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["cache-latents", "--help"])
    assert res.exit_code == 0 and "omnilv cache-latents tiny_stage1" in res.output and "data.latents" in res.output
    res = runner.invoke(app, ["cache-latents", "configs/train/tiny_stage1.yaml", "--set",
                              f"data.corpus={tmp_path / 'nowhere'}", "--out", str(tmp_path / "c")])
    assert res.exit_code == 2 and "no manifest" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["cache-latents", "configs/train/tiny_stage1.yaml", "--set", f"data.corpus={tiny_corpus}",
                              "--set", f"codec={tmp_path / 'no-vae'}", "--out", str(tmp_path / "c")])
    assert res.exit_code == 2 and "not an AutoencoderKL folder" in res.output


def test_resume_plan_counts_the_cache_shards(cache, vae_dir, tmp_path):
    """A rerun on a latent cache leaves out the cache shards its interrupted epoch already read."""
    import json

    from training.data import make_datasets
    from training.run import resume_plan

    out, _ = cache
    counts = [s.samples for s in load_manifest(str(out)).shards]
    cfg = load_train_config({
        "codec": str(vae_dir), "text": "tiny", "text_layer": LAYER,
        "data": {"latents": str(out), "resolution": SIZE, "batch_size": 4},
        "stage": {"name": "lr"}, "run": {"workers": 1, "storage_path": str(tmp_path)}})
    (tmp_path / "lr").mkdir()
    step = -(-counts[0] // 4)  # the first whole step past the first cache shard
    (tmp_path / "lr" / "checkpoint_manager_snapshot.json").write_text(
        json.dumps({"checkpoint_results": [{"metrics": {"step": step}}]}))
    assert resume_plan(cfg) == {"step": step, "shards": 1, "samples": counts[0], "epoch_samples": sum(counts)}
    datasets = make_datasets(cfg, skip_shards=resume_plan(cfg)["shards"])
    assert datasets["resume"].count() == sum(counts[1:]) and datasets["train"].count() == sum(counts)
