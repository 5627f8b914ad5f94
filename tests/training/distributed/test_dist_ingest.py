"""The training ingest: whitelisted members only, counted skips, aligned crops, buckets."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.ingest import SkipLedger, choose_bucket, crop_pair, read_corpus


def test_pickle_and_corrupt_members_are_skipped_with_a_count_never_decoded(ray_local, hostile_corpus):
    root, canary = hostile_corpus
    ledger = SkipLedger.remote()
    rows = read_corpus(str(root), [(16, 16)], ledger=ledger, read_cpus=0.25, max_tasks=1).take_all()
    keys = sorted(r["key"] for r in rows)
    assert keys == [f"k{i:04d}" for i in range(9) if i != 1]  # k0001 has the truncated input.png
    assert rows[0]["input"].shape == (16, 16, 3) and rows[0]["input"].dtype == np.uint8
    assert rows[0]["target"].dtype == np.uint16
    assert not canary.exists(), "a pickle member was deserialised"
    counts = ray_local.get(ledger.totals.remote())
    assert counts == {"member:pyd": 1, "member:pickle": 1, "corrupt:input.png": 1}
    assert not canary.exists()


def test_crop_pair_uses_one_box_for_input_and_target():
    rng = np.random.default_rng(0)
    a = rng.random((40, 50, 3)).astype(np.float32)
    ca, cb = crop_pair(a, a.copy(), (16, 24), np.random.default_rng(3))
    assert ca.shape == (16, 24, 3) and np.array_equal(ca, cb)
    small = rng.random((8, 8, 3)).astype(np.float32)  # smaller than the crop: resized up, not padded
    ca, cb = crop_pair(small, small, (16, 16), None)
    assert ca.shape == (16, 16, 3) and np.array_equal(ca, cb)


@pytest.mark.parametrize(("h", "w", "want"), [(100, 100, 0), (100, 210, 1), (300, 140, 2)])
def test_bucket_is_the_nearest_aspect_ratio(h, w, want):
    assert choose_bucket(h, w, [(64, 64), (48, 96), (96, 48)]) == want


def test_random_crops_are_new_each_epoch_and_the_same_on_a_rerun(ray_local, tiny_corpus):
    import ray

    ledger = SkipLedger.remote()
    ds = read_corpus(str(tiny_corpus), [(16, 16)], ledger=ledger, read_cpus=0.25, max_tasks=1)

    def crops() -> dict[str, np.ndarray]:  # every iteration is a new execution with new decoders
        return {r["key"]: r["input"] for r in ds.iter_rows()}

    first, again = crops(), crops()
    ray.get(ledger.set_epoch.remote(1))
    second = crops()
    assert first.keys() == second.keys() and len(first) == 32
    assert all(np.array_equal(first[k], again[k]) for k in first)  # same epoch: the same crops
    moved = sum(not np.array_equal(first[k], second[k]) for k in first)
    assert moved > 24, f"only {moved}/32 crops changed with the epoch"  # 9×9 boxes in a 24×24 image
    ray.get(ledger.set_epoch.remote(0))
    assert all(np.array_equal(first[k], v) for k, v in crops().items())


def test_rows_travel_as_integers_and_come_back_as_the_stored_values():
    """Inputs as uint8, targets as uint16: exact for 8- and 16-bit PNG values, a quarter / half of float32's bytes."""
    import torch

    from pipelines.ingest import to_pixels
    from pipelines.schema import quantize
    from training.data import to_tensor

    rng = np.random.default_rng(0)
    img8, img16 = quantize(rng.random((2, 5, 7, 3)), 8), quantize(rng.random((2, 5, 7, 3)), 16)
    as8, as16, t8 = to_pixels(img8, np.uint8), to_pixels(img16, np.uint16), to_pixels(img8, np.uint16)
    assert as8.dtype == np.uint8 and as16.dtype == np.uint16 and as8.nbytes * 4 == img8.astype(np.float32).nbytes
    for pixels, original in ((as8, img8), (as16, img16), (t8, img8)):
        back = (to_tensor(pixels) + 1) / 2  # (B, 3, H, W) in [0, 1]
        assert torch.allclose(back, torch.from_numpy(original).permute(0, 3, 1, 2), atol=1e-6)
    assert to_tensor(img8).dtype == torch.float32  # floats in [0, 1] still work (restore, benches)
