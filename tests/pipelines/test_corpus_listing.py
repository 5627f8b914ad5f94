"""`omnilv corpus ls` lists every sample with its task and exemplar; `corpus sample` writes one out as files."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from omnilv.cli import app
from pipelines.read import iter_samples

runner = CliRunner()


def test_ls_lists_every_sample_once_with_its_task(reference):
    root = reference.root
    res = runner.invoke(app, ["corpus", "ls", root, "--limit", "0", "--json"])
    assert res.exit_code == 0, res.output
    listed = [json.loads(line) for line in res.output.splitlines()]
    stored = list(iter_samples(root))
    assert [e["key"] for e in listed] == [s.key for s in stored]
    assert [e["task"] for e in listed] == [s.meta["task"] for s in stored]
    assert [e["exemplar"] for e in listed] == [s.ref_input is not None for s in stored]
    task = listed[0]["task"]
    res = runner.invoke(app, ["corpus", "ls", root, "--task", task, "--limit", "0"])
    lines = res.output.splitlines()
    assert lines[0].split()[:3] == ["key", "task", "domain"]
    assert len(lines) - 1 == sum(e["task"] == task for e in listed)
    assert all(line.split()[1] == task for line in lines[1:])


def test_sample_writes_the_stored_members(reference, tmp_path):
    root = reference.root
    first = next(iter(iter_samples(root)))
    res = runner.invoke(app, ["corpus", "sample", root, first.key, "--out", str(tmp_path / "s")])
    assert res.exit_code == 0, res.output
    from pipelines.schema import decode_png

    assert (decode_png((tmp_path / "s" / "input.png").read_bytes()) == first.input).all()
    assert (tmp_path / "s" / "instruction.txt").read_text() == first.instruction
    assert "omnilv restore" in res.output and str(tmp_path / "s" / "input.png") in res.output
    res = runner.invoke(app, ["corpus", "sample", root, "no_such_key", "--out", str(tmp_path / "t")])
    assert res.exit_code == 2 and "no_such_key" in res.output
