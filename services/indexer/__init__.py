"""The catalog indexing job; run it with ``python -m services.indexer --help``."""
