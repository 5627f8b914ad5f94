"""`restore` and `eval` run where the user says (--device), CUDA by default when present; a device this machine
lacks is one clear line, not a traceback."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from omnilv.cli import app
from omnilv.errors import OmniLVError
from training.eval.restore import DeviceError, Restorer, resolve_device, save_image

runner = CliRunner()


@pytest.fixture
def two_gpus(monkeypatch):
    """What torch reports on a node with two CUDA devices."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


def test_default_is_cuda_when_present_else_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device() == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device() == torch.device("cuda")


def test_named_devices_are_checked_against_the_machine(two_gpus):
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(DeviceError, match=r"cuda:7: this machine has 2 CUDA device\(s\), cuda:0 to cuda:1"):
        resolve_device("cuda:7")


@pytest.mark.parametrize(("name", "needle"), [("cuda:7", "no CUDA device"), ("gpu", "not a device name"),
                                               ("meta", "not a device this machine")])
def test_unusable_devices_are_project_errors(monkeypatch, name, needle):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceError, match=needle) as err:
        resolve_device(name)
    assert isinstance(err.value, OmniLVError) and "\n" not in str(err.value)


def test_restorer_loads_onto_the_resolved_device(eval_inputs, monkeypatch):
    model, _ = eval_inputs
    restorer = Restorer.from_export(model, "cpu")
    assert restorer.device == torch.device("cpu")
    assert all(p.device.type == "cpu" for p in [*restorer.flow.parameters(), *restorer.text.parameters()])
    seen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU node: the default goes to CUDA
    monkeypatch.setattr("training.eval.restore.load_exported", lambda folder, device: seen.append(device) or 1 / 0)
    with pytest.raises(ZeroDivisionError):
        Restorer.from_export(model)
    assert seen == [torch.device("cuda")]


def test_restore_cli_device(eval_inputs, tmp_path, small_image):
    model, _ = eval_inputs
    src = save_image(small_image[:20, :24], tmp_path / "in.png")
    args = ["restore", "--checkpoint", str(model), "--instruction", "Remove the noise.", str(src)]
    res = runner.invoke(app, [*args, str(tmp_path / "out.png"), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, [*args, str(tmp_path / "never.png"), "--device", "cuda:7"])
    assert res.exit_code == 2 and "error: cuda:7:" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "never.png").exists()


def test_eval_cli_device(eval_inputs, tmp_path):
    model, corpus = eval_inputs
    res = runner.invoke(app, ["eval", "--checkpoint", str(model), str(corpus), "--out", str(tmp_path / "ev"),
                              "--limit", "1", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "ev" / "results.json").read_text())["device"] == "cpu"
    res = runner.invoke(app, ["eval", "--checkpoint", str(model), str(corpus), "--out", str(tmp_path / "no"),
                              "--device", "cuda:7"])
    assert res.exit_code == 2 and "error: cuda:7:" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "no").exists()
    assert np.isfinite(json.loads((tmp_path / "ev" / "results.json").read_text())["overall"]["psnr"])
