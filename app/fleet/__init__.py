"""The instance model at the bottom of the domain: records and their states, the list index, the store on Valkey,
and how an instance looks in the API. Everything above (lifecycle policy, the instances API) builds on it."""
