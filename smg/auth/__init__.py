"""Control-plane authentication: who is calling (an API key's or a bearer token's identity) and
what their role lets them do, with an audit line per call."""
