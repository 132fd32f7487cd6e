"""Sources of health records: provider APIs (a folder each: client, parsing, webhook route,
subscriptions, the sources of their shapes), data exports and the simulator."""
