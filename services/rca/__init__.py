"""RCLAgent: root cause localisation by recursive per-span agents over an incident's traces."""
