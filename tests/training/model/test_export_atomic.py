"""A re-export is swapped in whole: a reader or a crash never sees two models mixed (issue 11, defect 10)."""

from __future__ import annotations

import json

import pytest
import torch

from training.model import OmniLV
from training.model.export import META, MODULES, ExportError, check_files, export_model, load_network
from training.model.flow import FlowMatching


def tiny(seed: int) -> FlowMatching:
    torch.manual_seed(seed)
    flow = FlowMatching(OmniLV.from_preset("tiny"))
    with torch.no_grad():  # the adapter starts at zero: give every tensor a value of this seed
        for p in flow.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    return flow


def weights(net) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in net.state_dict().items()}


def test_reexport_replaces_the_whole_model_and_leaves_nothing_behind(tmp_path):
    out = tmp_path / "export"
    (tmp_path / "notes.txt").write_text("mine")
    export_model(tiny(1), "tiny", "pixel", out)
    second = tiny(2)
    export_model(second, "tiny", "pixel", out)
    loaded = load_network(out)
    for k, v in weights(second.net).items():
        torch.testing.assert_close(loaded.state_dict()[k], v, rtol=0, atol=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "notes.txt"]  # no .tmp- or .old- folders
    files = json.loads((out / META).read_text())["files"]
    assert MODULES in files and all(v["bytes"] > 0 and len(v["sha256"]) == 64 for v in files.values())


def test_a_crash_midway_leaves_the_old_export_whole(tmp_path, monkeypatch):
    out = tmp_path / "export"
    first = tiny(1)
    export_model(first, "tiny", "pixel", out)
    import training.model.export as export

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(export, "save_file", boom)  # dies after the backbone of the new export was written
    with pytest.raises(OSError, match="disk full"):
        export_model(tiny(2), "tiny", "pixel", out)
    loaded = load_network(out)
    for k, v in weights(first.net).items():
        torch.testing.assert_close(loaded.state_dict()[k], v, rtol=0, atol=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


def test_files_of_two_exports_mixed_are_refused(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    export_model(tiny(1), "tiny", "pixel", a)
    export_model(tiny(2), "tiny", "pixel", b)
    (a / MODULES).write_bytes((b / MODULES).read_bytes())  # same size, other weights
    # What a download (an s3:// export) is checked with; a local load checks sizes (the swap keeps it whole).
    with pytest.raises(ExportError, match="does not match"):
        check_files(a, json.loads((a / META).read_text()), hashes=True)
    (a / MODULES).write_bytes(b"short")
    with pytest.raises(ExportError, match="does not match"):
        load_network(a)


def test_a_folder_of_other_files_is_not_exported_over(tmp_path):
    out = tmp_path / "photos"
    out.mkdir()
    (out / "holiday.jpg").write_bytes(b"jpeg")
    with pytest.raises(ExportError, match="not an omnilv export"):
        export_model(tiny(1), "tiny", "pixel", out)
    assert [p.name for p in out.iterdir()] == ["holiday.jpg"]


def test_the_text_layer_a_run_trained_with_travels_with_its_export(tmp_path):
    from training.model.export import load_exported

    export_model(tiny(1), "tiny", "pixel", tmp_path / "e", extra={"text_layer": -2})
    _, text, _, meta = load_exported(tmp_path / "e")
    assert meta["text_layer"] == -2 and text.layer == -2
    export_model(tiny(1), "tiny", "pixel", tmp_path / "old")  # exports before the field: the last layer
    assert load_exported(tmp_path / "old")[1].layer == -1
