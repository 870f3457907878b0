"""The database stage: typed SQLAlchemy 2 models, engines, migrations, and every read and write.

The reads are split by what they answer, each returning typed results: `jobs` (finding a job; a
missing one raises `jobs.NotFound`), `images` (the dispatcher's batches), `results` (filtered rows,
pages, export columns), `stats` (labels, errors, latencies, throughput), `compare` (two jobs).
`writes` holds every change. Knows nothing of Celery, onnxruntime or the command line. Functions take
a Session and never commit: the caller owns the transaction.
"""
