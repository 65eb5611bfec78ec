"""Fleet monitoring: collect drift summaries into a Parquet dataset, compact it, query it with
SQL, evaluate alert rules and render a self-contained report (docs/monitoring.md)."""
