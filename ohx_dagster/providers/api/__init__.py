"""What every provider API shares, one module each: the facts of a provider (app.py), the source
that reads its API (source.py), the HTTP client with retries (http.py) within the provider's
request budget (budget.py), the OAuth connect flow (connect.py), the encrypted tokens
(tokens.py), webhook subscriptions (subscription.py) and reading its JSON (payload.py)."""
