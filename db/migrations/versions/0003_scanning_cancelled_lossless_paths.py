"""job states scanning/cancelled; paths stored losslessly and uniquely (raw_path dropped)

Job states are text: 'scanning' and 'cancelled' join 'running' and 'done' with no schema change.
Image paths were stored as printable text (a name that is not UTF-8 with its odd bytes written
\\xNN, backslashreplace) next to the exact bytes in raw_path, so `x\\xe9.jpg` (one odd byte) and a file
literally named `x\\xe9.jpg` collided on (job, path). From now on the text itself is lossless and
injective: every backslash doubled and every byte that is not UTF-8 written \\xNN (as `ls -b` does).
Existing rows are rewritten that way (from raw_path when it is set), job roots too, and raw_path goes.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-09
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

CHUNK = 1000


def _encode(raw: bytes) -> str:
    # Frozen copy of imgbatch.core.names.encode_path as of this revision.
    return raw.replace(b"\\", b"\\\\").decode("utf-8", "backslashreplace")


JOBS = sa.table("jobs", sa.column("id", sa.String), sa.column("roots", sa.JSON))


def upgrade() -> None:
    conn = op.get_bind()
    # Only names with a backslash or odd bytes change: usually none, and never most of a table.
    rows = conn.execute(
        sa.text(
            "SELECT id, path, raw_path FROM images WHERE raw_path IS NOT NULL OR path LIKE :bs ESCAPE '!'"
        ),
        {"bs": "%\\%"},
    ).all()
    for start in range(0, len(rows), CHUNK):
        updates = [
            {"id": r.id, "path": _encode(bytes(r.raw_path) if r.raw_path is not None else r.path.encode())}
            for r in rows[start : start + CHUNK]
        ]
        conn.execute(sa.text("UPDATE images SET path = :path WHERE id = :id"), updates)
    for job_id, roots in conn.execute(sa.select(JOBS.c.id, JOBS.c.roots)).all():
        new = [_encode(str(r).encode("utf-8", "surrogateescape")) for r in roots]
        if new != roots:
            conn.execute(sa.update(JOBS).where(JOBS.c.id == job_id).values(roots=new))
    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.drop_column("raw_path")


def downgrade() -> None:
    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.add_column(sa.Column("raw_path", sa.LargeBinary(), nullable=True))
