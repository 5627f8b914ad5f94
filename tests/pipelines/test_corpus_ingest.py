"""Hostile shards at read time: lying PNG headers, decompression bombs, truncated members and tars, dotted keys and
scattered members. Every reader (``iter_samples`` for preview/eval/report, ``read_corpus`` for training) skips and
counts a bad member or shard, or stops with a clear error; none crashes and none yields a partial sample."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pytest

from pipelines.build import tar_bytes
from pipelines.ingest import SkipLedger, intact_shards, read_corpus
from pipelines.read import ReadStats, iter_samples
from pipelines.schema import MANIFEST, Manifest, Sample, SchemaError, ShardRecord, decode_png, shard_name
from pipelines.storage import Store, s3_options


def png(w: int, h: int, rows: bytes | None = None) -> bytes:
    """A PNG whose header says w x h (8-bit RGB); its pixel data is ``rows`` (default: a tiny, wrong amount)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    body = zlib.compress(rows if rows is not None else b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


BOMB = png(65536, 32768)  # claims 2^31 pixels in ~100 bytes: OpenCV itself would raise cv2.error
LIAR = png(24, 24, b"\0" + b"\x80" * (100 * 3))  # says 24x24, carries one row of 100 pixels


def samples(img: np.ndarray, n: int, prefix: str = "k") -> list[dict[str, bytes]]:
    out = []
    for i in range(n):
        crop = np.ascontiguousarray(img[i:i + 24, i:i + 24], dtype=np.float32)
        out.append(Sample(f"{prefix}{i:03d}", crop, crop[::-1].copy(), "Denoise.", {"task": "t"}).to_members(1))
    return out


def raw_tar(entries: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def corpus(root: Path, shards: list[bytes], built: dict[int, int] | None = None) -> str:
    """A corpus of ``shards``; ``built``: the size the build wrote (the manifest's bytes) of shards changed since."""
    root.mkdir(parents=True)
    records = []
    for i, data in enumerate(shards):
        (root / shard_name(i)).write_bytes(data)
        records.append(ShardRecord(shard_name(i), 1, (built or {}).get(i, len(data)), "0" * 64))
    (root / MANIFEST).write_text(Manifest(records).to_json())
    return str(root)


@pytest.fixture()
def hostile(tmp_path, small_image) -> tuple[str, list[str]]:
    """Shard 0: 2 good samples around a bomb input, a lying target and a truncated exemplar; shard 1: 4 good
    samples, the tar cut inside the third one's input.png. Returns the root and the keys a reader should yield."""
    root = corpus(tmp_path / "hostile", [tar_bytes(bad_members(small_image)), cut_shard(small_image)])
    return root, ["k000", "k004", "t000", "t001"]


def bad_members(img: np.ndarray) -> list[dict[str, bytes]]:
    first = samples(img, 5)
    first[1]["input.png"] = BOMB
    first[2]["target.png"] = LIAR
    first[3]["ref_input.png"], first[3]["ref_target.png"] = first[3]["input.png"][:60], first[3]["target.png"]
    return first


def cut_shard(img: np.ndarray) -> bytes:
    data = tar_bytes(samples(img, 4, "t"))
    return data[:data.index(b"t002.input.png") + 512 + 100]  # that member's header block, then 100 of its bytes


def test_decode_png_checks_the_header_before_decoding():
    assert len(BOMB) < 120
    with pytest.raises(SchemaError, match=r"x.input.png: PNG header claims 65536x32768 pixels"):
        decode_png(BOMB, "x.input.png")
    for bad, why in ((LIAR, "corrupt PNG"), (LIAR[:40], "corrupt PNG"), (b"GIF89a" + BOMB, "not a PNG"),
                     (png(0, 10), "claims 0x10")):
        with pytest.raises(SchemaError, match=why):
            decode_png(bad)


def test_iter_samples_counts_every_bad_member_and_the_cut_shard(hostile):
    root, good = hostile
    stats = ReadStats()
    got = list(iter_samples(root, stats))
    assert [s.key for s in got] == good and stats.samples == 4
    assert all(s.input.shape == s.target.shape == (24, 24, 3) for s in got)  # no partial sample surfaces
    assert dict(stats.skipped) == {"corrupt:input.png": 1, "corrupt:target.png": 1, "corrupt:ref_input.png": 1,
                                   "shard:truncated": 1}


def test_training_ingest_counts_every_bad_member_and_never_crashes(tmp_path, small_image, ray_local):
    root = corpus(tmp_path / "members", [tar_bytes(bad_members(small_image))])
    ledger = SkipLedger.remote()
    rows = read_corpus(root, [(16, 16)], ledger=ledger, max_tasks=1, use_exemplars=True).take_all()
    assert sorted(r["key"] for r in rows) == ["k000", "k004"]
    counts = ray_local.get(ledger.totals.remote())
    assert counts == {"corrupt:input.png": 1, "corrupt:target.png": 1, "corrupt:ref_input.png": 1}, counts


def test_training_ingest_skips_a_tar_cut_inside_a_member(tmp_path, small_image, ray_local):
    """Shards cut, grown or lost after the build are left out before Ray reads (its tar reader would fail the whole
    read on the cut one), each counted; when none is left, a clear error."""
    whole = tar_bytes(samples(small_image, 4, "t"))
    good, cut = tar_bytes(samples(small_image, 2)), cut_shard(small_image)
    root = corpus(tmp_path / "cut", [good, cut, whole + b"\0" * 1024, good], built={1: len(whole), 2: len(whole)})
    (Path(root) / shard_name(3)).unlink()
    ledger = SkipLedger.remote()
    rows = read_corpus(root, [(16, 16)], ledger=ledger, max_tasks=1).take_all()
    assert sorted(r["key"] for r in rows) == ["k000", "k001"]
    assert ray_local.get(ledger.totals.remote()) == {"shard:truncated": 1, "shard:size": 1, "shard:missing": 1}
    only_cut = corpus(tmp_path / "only-cut", [cut], built={0: len(whole)})
    with pytest.raises(SchemaError, match=r"every shard .* not the size it lists \(e.g. shard-000000.tar \(\d+ bytes"):
        read_corpus(only_cut, [(16, 16)], max_tasks=1)


def test_shard_sizes_are_checked_on_s3_too(s3_server, small_image):
    """One listing of the prefix gives every shard's size; a shard cut after the build is left out there too."""
    whole = tar_bytes(samples(small_image, 2))
    store = Store("s3://ingest-sizes/c", s3_options())
    store.ensure_bucket()
    for i, data in enumerate([whole, whole[:-700]]):
        store.write(shard_name(i), data)
    store.write(MANIFEST, Manifest([ShardRecord(shard_name(i), 2, len(whole), "0" * 64) for i in (0, 1)]).to_json()
                .encode())
    assert intact_shards(store.root) == [f"{store.root}/{shard_name(0)}"]
    with pytest.raises(SchemaError, match="every shard the manifest lists after the first 1 is missing"):
        intact_shards(store.root, skip_shards=1)


def test_dotted_keys_and_scattered_members_are_a_clear_error(tmp_path, small_image, ray_local):
    a, b = samples(small_image, 2)
    dotted = [(f"k.v2.{m}", d) for m, d in a.items() if m != "__key__"]
    scattered = [("k000.input.png", a["input.png"]), *[(f"k001.{m}", d) for m, d in b.items() if m != "__key__"],
                 *[(f"k000.{m}", d) for m, d in a.items() if m not in ("__key__", "input.png")]]
    for name, entries, why in (("dotted", dotted, "dotted sample key"), ("scattered", scattered, "not next to")):
        root = corpus(tmp_path / name, [raw_tar(entries)])
        with pytest.raises(SchemaError, match=why):
            list(iter_samples(root))
        # training ingest: Ray's reader refuses scattered members itself; a dotted key's members are not the
        # schema's, so its row lacks them and is a counted skip. Either way no fragment becomes a row.
        ledger = SkipLedger.remote()
        if name == "scattered":
            with pytest.raises(Exception, match="not contiguous"):
                read_corpus(root, [(16, 16)], ledger=ledger, max_tasks=1).take_all()
            continue
        assert read_corpus(root, [(16, 16)], ledger=ledger, max_tasks=1).take_all() == []
        assert ray_local.get(ledger.totals.remote()) == {"member:png": 2, "member:txt": 1, "member:json": 1,
                                                         "corrupt:input.png": 1}


def test_preview_of_a_hostile_corpus_is_a_sheet_not_a_traceback(hostile, tmp_path):
    root, _ = hostile
    out = subprocess.run([sys.executable, "-m", "omnilv", "corpus", "preview", root, "--out",
                          str(tmp_path / "sheet.png"), "--rows", "8"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "4 samples" in out.stdout, out.stdout + out.stderr
