"""Job references: an empty, short or ambiguous id never resolves; `delete` asks for --yes at a terminal."""

from __future__ import annotations

import os
import pty
import subprocess
from pathlib import Path

from test_querying import _fill

from conftest import assert_one_line_error, imgbatch_env, run_cli


def _env(tmp_path: Path, *jobs: str) -> dict[str, str]:
    db_url = f"sqlite:///{tmp_path / 'refs.db'}"
    for job in jobs:
        _fill(db_url, job, 3)
    # retry needs a broker URL before it looks the job up; a refused reference never reaches it.
    return imgbatch_env(
        tmp_path, IMGBATCH_DATABASE_URL=db_url, IMGBATCH_REDIS_URL="redis://127.0.0.1:6379/15"
    )


def test_empty_short_and_ambiguous_refs_are_refused(tmp_path: Path) -> None:
    env = _env(tmp_path, "abcd1234", "abcd5678")
    for command in ("delete", "cancel", "retry", "status"):
        assert_one_line_error(run_cli([command, ""], env), "no job id given")
        assert_one_line_error(run_cli([command, "abc"], env), "too short")
        assert_one_line_error(run_cli([command, "abcd"], env), "ambiguous")
    assert_one_line_error(run_cli(["delete", "%"], env), "too short")
    assert_one_line_error(run_cli(["delete", "____"], env), "no job")
    # Both jobs are still there; a unique prefix of 4+ characters still works.
    assert run_cli(["status", "abcd1"], env).returncode == 0
    assert run_cli(["status", "abcd5678"], env).returncode == 0


def _at_terminal(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    primary, replica = pty.openpty()
    try:
        return run_cli(args, env, timeout=120, stdin=replica)
    finally:
        os.close(primary)
        os.close(replica)


def test_delete_with_results_needs_yes_at_a_terminal(tmp_path: Path) -> None:
    env = _env(tmp_path, "job_one", "job_two")
    assert_one_line_error(_at_terminal(["delete", "job_one"], env), "has 3 results", "--yes")
    assert run_cli(["status", "job_one"], env).returncode == 0
    yes = _at_terminal(["delete", "job_one", "-y"], env)
    assert yes.returncode == 0, yes.stderr
    assert_one_line_error(run_cli(["status", "job_one"], env), "no job")
    # With no terminal, delete proceeds without --yes, as before.
    assert run_cli(["delete", "job_two"], env, timeout=120).returncode == 0
    assert_one_line_error(run_cli(["status", "job_two"], env), "no job")
