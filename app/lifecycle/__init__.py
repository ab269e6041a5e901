"""GPU lifecycle automation (issue 5): placement, readiness, cost guards, reconciliation, webhooks, spot recovery.

Each module takes its collaborators (Novita client, Valkey client, clock, settings values) as constructor arguments,
so it can be tested alone against the fake Novita server and a real redis-server, and wired into the app in one place.
Novita, not Valkey, is the truth about what exists and costs money: Valkey only remembers what we decided.
"""
