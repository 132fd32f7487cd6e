"""The realtime worker: webhooks answered in batches by one long-lived process (worker.py the
loop, free of Dagster; process.py the process, which reports each step to Dagster)."""
