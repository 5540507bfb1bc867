"""Unit tests: one module or command at a time, in process, on real data files; no peer programs."""
