"""The database stage: typed SQLAlchemy 2 models, engines and the queries every stage shares.

Knows nothing of Celery or onnxruntime. Query functions take a Session and never commit:
the caller owns the transaction.
"""
