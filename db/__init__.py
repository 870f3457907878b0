"""The database stage: typed SQLAlchemy 2 models, engines, migrations, and every read and write.

`db.reads` holds every query (typed results; a missing job raises `db.reads.NotFound`), `db.writes`
every change. Knows nothing of Celery, onnxruntime or the command line. Functions take a Session and
never commit: the caller owns the transaction.
"""
