"""Sources of health records: provider APIs, data exports and the simulator, one module each."""
