"""Fault tests: hostile input, crashes and outages; the node must refuse or recover, never lose an instance."""
