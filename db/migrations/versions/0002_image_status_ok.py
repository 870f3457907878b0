"""image status: a classified image is 'ok', as its result row is (it was 'done')

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Data only: the column stays VARCHAR(16). One statement, so a large table is one UPDATE.
    op.execute(sa.text("UPDATE images SET state = 'ok' WHERE state = 'done'"))


def downgrade() -> None:
    op.execute(sa.text("UPDATE images SET state = 'done' WHERE state = 'ok'"))
