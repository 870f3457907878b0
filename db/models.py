"""Schema: a job has images; each image has at most one result, enforced by the database."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class JobState(StrEnum):
    """A job is SCANNING until its directories are walked, RUNNING until no image is pending, then DONE;
    CANCELLED stops sending its pending images. A job is never finished while its scan goes on."""

    SCANNING = "scanning"
    RUNNING = "running"
    DONE = "done"
    CANCELLED = "cancelled"


ACTIVE_STATES = (JobState.SCANNING, JobState.RUNNING)


class ImageStatus(StrEnum):
    """An image's outcome; a result row is OK or ERROR, an image without one is PENDING."""

    PENDING = "pending"
    OK = "ok"
    ERROR = "error"


def _stored_as_text(enum: type[StrEnum], length: int) -> Enum:
    # VARCHAR holding the enum's values (not its member names), no CHECK constraint: adding a member
    # later needs no table rebuild on SQLite.
    return Enum(
        enum,
        native_enum=False,
        create_constraint=False,
        length=length,
        values_callable=lambda members: [m.value for m in members],
    )


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    state: Mapped[JobState] = mapped_column(_stored_as_text(JobState, 16), default=JobState.SCANNING)
    # The resolved directories the job was submitted with (stored as imgbatch.core.names encodes
    # paths); workers read nothing outside them.
    roots: Mapped[list[Any]] = mapped_column(JSON)
    model_path: Mapped[str] = mapped_column(Text)
    # sha256 of the model file, computed from its bytes: workers run only a file with this hash.
    model_sha256: Mapped[str] = mapped_column(String(64))
    batch_size: Mapped[int] = mapped_column(Integer)
    total_images: Mapped[int] = mapped_column(Integer, default=0)

    images: Mapped[list[Image]] = relationship(back_populates="job", cascade="all, delete-orphan")


class Image(Base):
    __tablename__ = "images"
    __table_args__ = (
        UniqueConstraint("job_id", "path", name="uq_images_job_path"),
        Index("ix_images_job_state", "job_id", "state"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    # The file's exact bytes as text, losslessly and uniquely (imgbatch.core.names.encode_path: as
    # `ls -b` shows it, a backslash doubled, a byte that is not UTF-8 as \xNN).
    path: Mapped[str] = mapped_column(Text)
    state: Mapped[ImageStatus] = mapped_column(_stored_as_text(ImageStatus, 16), default=ImageStatus.PENDING)
    # The size the listing reported (object stores list it for free); None: the worker stats the file.
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)

    job: Mapped[Job] = relationship(back_populates="images")
    result: Mapped[Result | None] = relationship(back_populates="image", uselist=False)


class Result(Base):
    __tablename__ = "results"
    __table_args__ = (
        # One row per (job, image): a redelivered batch cannot write twice.
        UniqueConstraint("job_id", "image_id", name="uq_results_job_image"),
        # Filters of `imgbatch results` within one job: by label, by status, by score.
        Index("ix_results_job_label", "job_id", "label", "image_id"),
        Index("ix_results_job_status", "job_id", "status"),
        Index("ix_results_job_score", "job_id", "score"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    status: Mapped[ImageStatus] = mapped_column(_stored_as_text(ImageStatus, 8))  # OK or ERROR
    label: Mapped[str | None] = mapped_column(Text)
    class_index: Mapped[int | None] = mapped_column(Integer)
    score: Mapped[float | None] = mapped_column(Float)
    # [[class_index, label, score], ...] best first, five entries.
    top5: Mapped[list[Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    queue_ms: Mapped[float] = mapped_column(Float, default=0.0)
    decode_ms: Mapped[float] = mapped_column(Float, default=0.0)
    infer_ms: Mapped[float] = mapped_column(Float, default=0.0)
    persist_ms: Mapped[float] = mapped_column(Float, default=0.0)
    batch_size: Mapped[int] = mapped_column(Integer, default=1)
    worker: Mapped[str] = mapped_column(String(255))
    model_sha256: Mapped[str] = mapped_column(String(64))
    # The inference runtime that produced this row: "onnxruntime" or "openvino".
    runtime: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    image: Mapped[Image] = relationship(back_populates="result")
