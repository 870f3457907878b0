"""results.runtime (which inference runtime produced the row); images.size_bytes (from the listing)

A result row now records the runtime that produced it ('onnxruntime' or 'openvino'); rows written
before this revision were all onnxruntime's, and say so. An image row may carry the size its
listing reported (object stores list sizes for free), so a worker refuses an object over the size
limit before downloading any of it; NULL means "stat it when reading", as for every existing row.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("results", schema=None) as batch_op:
        batch_op.add_column(sa.Column("runtime", sa.String(32), nullable=True))
    op.execute("UPDATE results SET runtime = 'onnxruntime'")
    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.add_column(sa.Column("size_bytes", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.drop_column("size_bytes")
    with op.batch_alter_table("results", schema=None) as batch_op:
        batch_op.drop_column("runtime")
