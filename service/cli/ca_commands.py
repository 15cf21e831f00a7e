"""CA commands: init, ca, profile, issue, revoke, list, show, crl (being filled in)."""
