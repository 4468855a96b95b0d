"""The DuckDB store, the media store, dataset versions and exchange formats. Imports nothing of ours."""
