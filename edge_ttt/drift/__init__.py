"""Drift summaries: mergeable statistics per (device, stream) and interval, written as Parquet
into an on-disk spool and shipped home over MQTT without loss (docs/drift-summaries.md)."""
