"""Costs and budgets: reports over the cost meter (`app.fleet.meter`), per-team budgets and their GPU reservations."""
