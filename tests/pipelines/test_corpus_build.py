"""Building the quickstart corpus: reproducible bytes, readable by stock readers, verifiable, regenerable."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from corpus_helpers import corpus_files, small_config

from pipelines.build import BuildError, build_corpus
from pipelines.inspect import inspect_corpus
from pipelines.read import iter_samples, shard_urls
from pipelines.regenerate import regenerate
from pipelines.schema import MANIFEST, Manifest


def test_reference_build_is_a_valid_corpus(reference):
    m = reference.manifest
    root = Path(reference.root)
    assert m.samples == 38 and len(m.shards) == 10  # 19 bundled photos x 2 variants, 4 per shard
    assert Manifest.from_json((root / MANIFEST).read_text()).samples == m.samples
    keys = [s.key for s in iter_samples(reference.root)]
    assert len(keys) == len(set(keys)) == 38 and all("." not in k for k in keys)
    report = json.loads(Path(reference.report_path).read_text())
    assert report["samples"] == 38 and sum(report["domains"].values()) == 38
    for sheet in report["contact_sheets"].values():
        assert (root / sheet).read_bytes().startswith(b"\x89PNG")
    assert (root / "report.html").read_text().count("<img") == len(report["contact_sheets"])


def test_rebuild_and_one_worker_give_identical_bytes(reference, tmp_path):
    again = build_corpus(small_config(tmp_path / "one_worker"), progress=False, workers=1)
    assert corpus_files(again.root) == corpus_files(reference.root)
    # a rerun of a finished build resumes everything and rewrites the same manifest
    rerun = build_corpus(small_config(tmp_path / "one_worker"), progress=False, workers=2)
    assert rerun.built == 0 and rerun.skipped == 10
    assert corpus_files(rerun.root) == corpus_files(reference.root)


def test_reads_back_with_webdataset_and_ray_data(reference):
    import ray
    import webdataset as wds

    urls = shard_urls(reference.root)
    stock = list(wds.WebDataset(urls, shardshuffle=False))
    ours = list(iter_samples(reference.root))
    assert [s["__key__"] for s in stock] == [s.key for s in ours]
    assert all(json.loads(s["json"])["task"] == o.meta["task"] for s, o in zip(stock, ours, strict=True))
    rows = ray.data.read_webdataset(urls, decoder=None).take_all()
    assert sorted(r["__key__"] for r in rows) == sorted(s.key for s in ours)
    with_ref = [r for r in rows if r.get("ref_input.png")]
    assert with_ref, "the quickstart adds exemplars to some samples"


def test_every_sample_regenerates_from_its_json(reference):
    keys = [s.key for s in iter_samples(reference.root)]
    results = [regenerate(reference.root, k) for k in keys[::3]]
    assert all(r.ok for r in results), [(r.key, r.checks) for r in results if not r.ok]
    assert any("ref_input.png" in r.checks for r in results)


def test_inspect_finds_a_tampered_shard(reference, tmp_path):
    import shutil

    assert inspect_corpus(reference.root).ok
    copy = tmp_path / "copy"
    shutil.copytree(reference.root, copy)
    shard = copy / reference.manifest.shards[3].name
    data = bytearray(shard.read_bytes())
    data[700] ^= 0xFF
    shard.write_bytes(bytes(data))
    (copy / reference.manifest.shards[5].name).unlink()
    res = inspect_corpus(str(copy))
    assert not res.ok and len(res.problems) == 2
    assert any("sha256" in p for p in res.problems) and any("missing" in p for p in res.problems)


def test_changed_config_is_refused_unless_overwrite(tmp_path, ray_local):
    out = tmp_path / "c"
    cfg = small_config(out, "output.samples_per_shard=19", "variants_per_source=1")
    build_corpus(cfg, progress=False)
    changed = small_config(out, "output.samples_per_shard=19", "variants_per_source=1", "output.seed=5")
    with pytest.raises(BuildError, match="different config"):
        build_corpus(changed, progress=False)
    res = build_corpus(changed, progress=False, overwrite=True)
    assert res.manifest.config_sha256 == changed.digest() and res.built == 1


def test_bad_input_folder_completes_with_reasons(tmp_path, ray_local):
    from test_corpus_decode import bad_inputs, good_inputs

    src = tmp_path / "src"
    src.mkdir()
    for name, (data, _) in bad_inputs().items():
        (src / name).write_bytes(data)
    for name, data in good_inputs().items():
        (src / name).write_bytes(data)
    cfg = small_config(tmp_path / "out", f"sources=[{{uri: '{src}'}}]", "geometry.crop_size=32", "geometry.min_size=32",
                       "geometry.max_pixels=10000000", "variants_per_source=1")
    res = build_corpus(cfg, progress=False)
    report = json.loads(Path(res.report_path).read_text())
    reasons = {Path(u).name: why for u, why in report["rejected"]}
    assert reasons == {n: why for n, (_, why) in bad_inputs().items()}
    samples = {Path(s.meta["source"]).name: s for s in iter_samples(res.root)}
    assert set(samples) == set(good_inputs())
    assert samples["rotated.jpg"].meta["source_size"] == [64, 48]  # EXIF rotation applied before cropping
    assert all(np.isfinite(s.input).all() and s.input.shape == (32, 32, 3) for s in samples.values())
    assert res.manifest.extra["rejects"] == dict(Counter(r for _, r in bad_inputs().values()))


def test_shards_carry_fixed_tar_metadata_and_member_order(reference):
    """What byte-identity rests on, asserted directly: a wall-clock mtime or the builder's uid would differ on
    every machine, yet two builds on one machine in one second would still agree."""
    import tarfile

    from pipelines.read import split_member
    from pipelines.schema import MEMBERS

    for rec in reference.manifest.shards:
        with tarfile.open(Path(reference.root) / rec.name) as tar:
            infos = tar.getmembers()
            order = [(split_member(i.name)[0], split_member(i.name)[1]) for i in infos]
            metas = [json.loads(tar.extractfile(i).read()) for i in infos if i.name.endswith(".json")]
        assert tar.pax_headers == {} and all(i.type == tarfile.REGTYPE for i in infos)
        assert {(i.mtime, i.uid, i.gid, i.uname, i.gname, i.mode) for i in infos} == {(0, 0, 0, "omnilv", "omnilv",
                                                                                         0o644)}
        keys = list(dict.fromkeys(k for k, _ in order))
        for key in keys:  # each sample's members adjacent, in schema order
            mine = [m for k, m in order if k == key]
            assert mine == [m for m in MEMBERS if m in mine]
            assert order[[k for k, _ in order].index(key):][:len(mine)] == [(key, m) for m in mine]
        assert [(m["source"], m["variant"]) for m in metas] == sorted((m["source"], m["variant"]) for m in metas)


def test_one_percent_corrupt_sources_are_rejected_one_by_one(tmp_path, ray_local):
    import io

    from PIL import Image

    rng = np.random.default_rng(0)
    src = tmp_path / "src"
    src.mkdir()
    for i in range(100):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (36, 40, 3), dtype=np.uint8)).save(buf, "PNG")
        data = buf.getvalue()
        (src / f"{i:03d}.png").write_bytes(data[: len(data) // 2] if i == 37 else data)  # 1 in 100 cut short
    cfg = small_config(tmp_path / "out", f"sources=[{{uri: '{src}'}}]", "geometry.crop_size=32",
                       "geometry.min_size=32", "variants_per_source=1", "output.samples_per_shard=25",
                       "mixture.tasks={gaussian_noise: 1.0}", "mixture.exemplar_probability=0")
    res = build_corpus(cfg, progress=False)
    rejects = res.manifest.extra["rejects"]
    assert res.manifest.samples + sum(rejects.values()) == 100 and res.manifest.samples == 99
    report = json.loads(Path(res.report_path).read_text())
    assert [Path(u).name for u, _ in report["rejected"]] == ["037.png"] and rejects == {"truncated": 1}
