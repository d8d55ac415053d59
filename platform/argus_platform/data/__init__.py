"""Event logs → validated canonical Parquet → vocabularies → per-user sequences and splits."""
