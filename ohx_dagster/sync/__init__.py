"""Syncing: plan windows from coverage, fetch from a source, commit; strategies, the webhook inbox,
waiting for a provider, run requests, shards, sync status and quality rules."""
