"""Querying stored results: filters, formats, jobs, stats, compare, and index use shown by the plan.

Rows are written through the same query functions the workers use, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from sqlalchemy import text

from conftest import assert_one_line_error, imgbatch_env, run_cli
from imgbatch.db.engine import ensure_schema, make_engine, session_factory
from imgbatch.db.images import iter_image_batches
from imgbatch.db.results import ResultFilter, results_query
from imgbatch.db.writes import add_images, create_job, finish_job_if_complete, mark_scanned, save_results

LABELS = ["tabby", "espresso", "missile", "moped"]


def _fill(db_url: str, job_id: str, n: int, flip_every: int = 0, root: str = "/photos") -> None:
    """n images: image i gets LABELS[i % 4] (the next one when flip_every divides i); every 10th fails."""
    engine = make_engine(db_url)
    ensure_schema(engine)
    sessions = session_factory(engine)
    with sessions.begin() as s:
        create_job(s, job_id, [root], "/m.onnx", "a" * 64, 64)
        add_images(s, job_id, (f"{root}/{'sub/' if i % 3 == 0 else ''}img_{i:06d}.jpg" for i in range(n)))
        mark_scanned(s, job_id)
    with sessions.begin() as s:
        rows = []
        for batch in iter_image_batches(s, job_id, 5000):
            for image_id, path in batch:
                i = int(Path(path).stem.split("_")[1])
                label = LABELS[(i + (1 if flip_every and i % flip_every == 0 else 0)) % 4]
                failed = i % 10 == 9
                rows.append(
                    {
                        "job_id": job_id,
                        "image_id": image_id,
                        "status": "error" if failed else "ok",
                        "label": None if failed else label,
                        "class_index": None if failed else LABELS.index(label),
                        "score": None if failed else (i % 100) / 100,
                        "top5": None,
                        "error": "not a decodable image: x" if failed else None,
                        "queue_ms": 1.0 + i % 7,
                        "decode_ms": 2.0,
                        "infer_ms": 3.0,
                        "persist_ms": 0.5,
                        "batch_size": 8,
                        "worker": f"host:{100 + i % 2}",
                        "model_sha256": "a" * 64,
                    }
                )
            save_results(s, rows)
            rows = []
        finish_job_if_complete(s, job_id)
    engine.dispose()


def test_results_filters_and_formats(tmp_path: Path, db_url: str) -> None:
    _fill(db_url, "job_q", 400)
    env = imgbatch_env(tmp_path, IMGBATCH_DATABASE_URL=db_url)

    def rows(*args: str) -> list[dict]:
        proc = run_cli(["results", "job_q", "--format", "csv", *args], env)
        assert proc.returncode == 0, proc.stderr
        return list(csv.DictReader(io.StringIO(proc.stdout)))

    assert len(rows()) == 400
    espresso = rows("--label", "espresso")
    assert (
        len(espresso) == 80
    )  # i % 4 == 1, less the errors (i % 20 == 9) and {r["label"] for r in espresso} == {"espresso"}
    errors = rows("--status", "error")
    assert len(errors) == 40 and all(r["error"].startswith("not a decodable") for r in errors)
    confident = rows("--min-score", "0.9")
    assert confident and all(float(r["score"]) >= 0.9 for r in confident)
    in_sub = rows("--path-glob", "/photos/sub/*")
    assert len(in_sub) == 134 and all("/sub/" in r["path"] for r in in_sub)
    both = rows("--label", "tabby", "--path-glob", "*/sub/*", "--min-score", "0.5")
    assert both and all(
        r["label"] == "tabby" and "/sub/" in r["path"] and float(r["score"]) >= 0.5 for r in both
    )
    assert len(rows("--limit", "7")) == 7

    lines = run_cli(["results", "job_q", "--format", "jsonl", "--label", "moped"], env).stdout.splitlines()
    assert len(lines) == 80 and all(json.loads(line)["label"] == "moped" for line in lines)
    as_json = json.loads(run_cli(["results", "job_q", "--format", "json", "--status", "error"], env).stdout)
    assert len(as_json) == 40

    # A label the model does not have is a mistake worth saying, with the close ones (the job's model
    # file is gone here, so the job's own labels are what it knows).
    for typo, meant in (("Espresso", "espresso"), ("mopedd", "moped"), ("tabbby", "tabby")):
        wrong = run_cli(["results", "job_q", "--label", typo], env)
        assert_one_line_error(wrong, f"no label '{typo}'", f"did you mean '{meant}'")
    unknown = run_cli(["results", "job_q", "--label", "zebra"], env)
    assert_one_line_error(unknown, "no label 'zebra'")
    assert "did you mean" not in unknown.stderr


def test_jobs_stats_and_compare(tmp_path: Path, db_url: str) -> None:
    _fill(db_url, "job_a", 200)
    _fill(db_url, "job_b", 200, flip_every=20)  # every 20th image gets a different label
    env = imgbatch_env(tmp_path, IMGBATCH_DATABASE_URL=db_url)

    listed = [json.loads(line) for line in run_cli(["jobs", "--json"], env).stdout.splitlines()]
    assert {j["id"] for j in listed} == {"job_a", "job_b"}
    assert all(j["total"] == 200 and j["error"] == 20 and j["state"] == "done" for j in listed)

    stats = json.loads(run_cli(["stats", "job_a", "--json"], env).stdout)
    assert stats["images"] == 200 and stats["ok"] == 180 and stats["error"] == 20
    assert set(stats["stages_ms"]) == {"queue_ms", "decode_ms", "infer_ms", "persist_ms"}
    assert stats["stages_ms"]["decode_ms"]["p50"] == 2.0 and stats["stages_ms"]["queue_ms"]["p99"] <= 7.0
    assert stats["workers"] == {"host:100": 100, "host:101": 100}
    assert stats["errors"] == {"not a decodable image": 20}
    assert sum(stats["labels"].values()) == 180
    table = run_cli(["stats", "job_a"], env)
    assert table.returncode == 0 and "p95" in table.stdout and "host:100" in table.stdout

    compared = json.loads(run_cli(["compare", "job_a", "job_b", "--json"], env).stdout)
    flipped = [i for i in range(0, 200, 20) if i % 10 != 9]  # errors stay errors in both
    assert compared["common"] == 200 and compared["changed"] == len(flipped)
    assert abs(compared["agreement"] - (200 - len(flipped)) / 200) < 1e-9
    assert {Path(c["path"]).name for c in compared["changes"]} == {f"img_{i:06d}.jpg" for i in flipped}


def test_label_filter_uses_the_index(db_url: str) -> None:
    _fill(db_url, "job_plan", 20_000)
    engine = make_engine(db_url)
    stmt = results_query("job_plan", ResultFilter(label="espresso"), 0, 1000)
    sql = str(stmt.compile(engine, compile_kwargs={"literal_binds": True}))
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("ANALYZE"))
            plan = "\n".join(r[0] for r in conn.execute(text(f"EXPLAIN {sql}")))
        else:
            conn.execute(text("ANALYZE"))
            plan = "\n".join(str(r[-1]) for r in conn.execute(text(f"EXPLAIN QUERY PLAN {sql}")))
    engine.dispose()
    print(plan)
    assert "ix_results_job_label" in plan, plan
    assert "Seq Scan on results" not in plan and "SCAN results" not in plan, plan
