"""A hospital's safety: identity of people and accounts, erasure that lasts, retention, the audit
log, staff credentials."""
