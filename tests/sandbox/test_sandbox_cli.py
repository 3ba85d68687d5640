"""`conch sandbox list` tells the truth about this machine; `check` self-tests a backend."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from conch import sandbox
from conch.cli import app
from tests._required import require_backend

runner = CliRunner()


def test_list_reports_every_backend_as_the_registry_sees_it():
    result = runner.invoke(app, ["sandbox", "list", "--json"])
    assert result.exit_code == 0
    listed = {row["name"]: row for row in json.loads(result.stdout)}
    assert set(listed) == set(sandbox.backend_names())
    for status in sandbox.backend_statuses():
        assert listed[status.name]["available"] == status.available
        assert listed[status.name]["reason"] == status.reason


@pytest.mark.parametrize("name", ["local", "bwrap", "gvisor"])
def test_check_passes_every_probe_on_a_working_backend(name):
    require_backend(name)
    result = runner.invoke(app, ["sandbox", "check", name, "--json"])
    report = json.loads(result.stdout)
    assert result.exit_code == 0, report
    names = {probe["name"] for probe in report["probes"]}
    assert {"start and execute", "bash", "host callback", "snapshot round trip"} <= names
    if name in ("bwrap", "gvisor"):
        assert {"no network", "system is read-only", "no capabilities"} <= names


def test_check_of_an_unknown_backend_is_bad_input():
    result = runner.invoke(app, ["sandbox", "check", "no-such-backend"])
    assert result.exit_code == 2
    assert "unknown sandbox backend" in result.stderr
