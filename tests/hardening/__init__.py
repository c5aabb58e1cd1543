"""
Hardening tests: the tracker under failures (database restarts, a dead
smarthost, a full disk), hostile input (fuzzing) and relay probes.
"""
