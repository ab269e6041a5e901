"""Who is asking: API keys as principals with a name, a team and scopes (issue 13)."""
