"""The fault suite of issue 8: every way a sync can be interrupted, raced or misled, run against the
real code (RecordStore on SQLite and PostgreSQL, sync_partition, publish_partition, the webhook
receiver and sensor functions, the schedules' gap finder) with providers that hold known data:
the simulated provider, and local HTTP servers answering Oura's and Withings' documented shapes
(tests/support/provider_api_server.py, ohx_dagster/providers/*/fixtures).

Each scenario injects its fault, lets the product recover the way it does by itself (a Dagster
retry, the next scheduled run, the republish and new-user sensors), then compares what the
provider holds with what the store holds and what the published FHIR says: `scripts/faults`
prints the table, tests/fault_suite/test_faults.py asserts it. docs/sync.md explains each row.
"""

import sys
from pathlib import Path

# The local provider servers are the tests' (tests/support/provider_api_server.py): one copy of
# them.
_TESTS = str(Path(__file__).resolve().parents[1] / "tests" / "support")
if _TESTS not in sys.path:
    sys.path.append(_TESTS)
