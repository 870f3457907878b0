"""The one settings object. Every other module reads configuration from here, never os.environ."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from imgbatch.core.files import DEFAULT_MAX_FILE_BYTES

DEFAULT_MODEL_NAME = "efficientnet_lite0.int8.onnx"


def _default_data_dir() -> Path:
    # XDG data dir so that the embedded database and the built model survive across runs.
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "imgbatch"


def _default_cache_dir() -> Path:
    # Machine-specific derived data (which runtime is faster here, compiled models): shared by every
    # data dir of this user, so that a fresh data dir does not measure again.
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "imgbatch"


class Settings(BaseSettings):
    """Configuration from ``IMGBATCH_*`` environment variables; defaults run the embedded mode."""

    model_config = SettingsConfigDict(env_prefix="IMGBATCH_", extra="ignore")

    data_dir: Path = Field(default_factory=_default_data_dir)
    # Measured runtime choices and OpenVINO's compiled models (imgbatch.core.runtimes).
    cache_dir: Path = Field(default_factory=_default_cache_dir)
    # None means embedded: a private redis-server started by `imgbatch run`.
    redis_url: str | None = None
    # None means SQLite at <data_dir>/imgbatch.db.
    database_url: str | None = None
    # None means the model built by the set-up: <data_dir>/models/efficientnet_lite0.int8.onnx.
    model: Path | None = None
    # Paths per task message. Big messages amortize Celery's per-message cost (16 -> 32 measured
    # +10 % images/s); the model still runs at most 8 images per call, so memory does not grow.
    batch_size: int = Field(default=32, ge=1, le=1024)
    queue_name: str = "imgbatch"
    # Back-pressure: the dispatcher keeps at most this many batch messages waiting in Redis.
    max_in_flight: int = Field(default=64, ge=1)
    # A batch sent but started by no worker for this long while the queue is empty was lost on the
    # way (taken by a worker that died before starting it): the dispatcher sends it again.
    stall_seconds: float = Field(default=30.0, gt=0)
    # The dispatcher (one worker at a time holds its lease) reconciles the database with Redis this often.
    dispatch_interval_s: float = Field(default=0.5, gt=0)
    # A worker whose heartbeat is older than this is dead: its batches are sent again.
    heartbeat_ttl_s: float = Field(default=10.0, gt=0)
    # Another worker takes the dispatcher over at most this long after its holder died.
    lease_ttl_s: float = Field(default=10.0, gt=0)
    # Reading and decoding one image longer than this makes it an error row ("timed out after N s").
    image_timeout_s: float = Field(default=60.0, gt=0)
    # Celery's time limits of one batch message: the soft one stops the batch (what is done is
    # kept, the rest is sent again); the hard one kills the pool process, the backstop for a read
    # that no signal can interrupt (a dead network mount).
    task_soft_time_limit_s: float = Field(default=300.0, gt=0)
    task_time_limit_s: float = Field(default=360.0, gt=0)
    # A file whose decoding killed the pool process this many times becomes an error row.
    max_decode_kills: int = Field(default=3, ge=1)
    # Failures of the environment (I/O error of the mount, directory missing on a host, out of
    # memory) are retried this many times per image, with backoff, before the image gets an error row.
    max_attempts: int = Field(default=5, ge=1)
    retry_backoff_s: float = Field(default=2.0, ge=0)
    # How long a worker retries the database through an outage before giving the batch back.
    db_retry_s: float = Field(default=60.0, ge=0)
    # Image rows per transaction while a submit scans (SQLite's write lock is held that long).
    scan_chunk: int = Field(default=2000, ge=1, le=10_000)
    # Inference runtime: "auto" picks OpenVINO where it is installed and measured faster for the
    # model on this CPU, onnxruntime (the reference) otherwise.
    runtime: Literal["auto", "onnxruntime", "openvino"] = "auto"
    # "exact": tensors bit-identical to the reference preprocessing (full decode, Pillow's resize
    # and crop) below 4x the resize, DCT-scaled to >= 2x above; "fast": DCT-scaled decode and
    # OpenCV resize, approximate (imgbatch.core.preprocess).
    decode: Literal["exact", "fast"] = "exact"
    # Worker tuning; 0 means derive from the CPUs this process may use.
    worker_concurrency: int = Field(default=0, ge=0)
    ort_threads: int = Field(default=0, ge=0)
    # Serve Prometheus metrics of `imgbatch worker` on this port (0: off).
    metrics_port: int = Field(default=0, ge=0, le=65535)
    # Images with more pixels are refused before decoding (decompression bombs).
    max_pixels: int = Field(default=80_000_000, ge=1)
    # Files larger than this are refused from stat, before any read (see imgbatch.core.files).
    max_file_bytes: int = Field(default=DEFAULT_MAX_FILE_BYTES, ge=1)

    @field_validator("data_dir", "cache_dir", "model", mode="before")
    @classmethod
    def _expand_user(cls, value: object) -> object:
        return Path(value).expanduser() if isinstance(value, str) and value else value

    @property
    def model_path(self) -> Path:
        return self.model or self.data_dir / "models" / DEFAULT_MODEL_NAME

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'imgbatch.db'}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
