"""The planner engine as it was before the fast paths (commit 4c39e74), frozen for comparison.

`engine`, `capacity`, `interruptible` and `scoring` here are verbatim copies of
`ecoq.scheduler.*` at that commit (only their imports point here). `test_engine_reference.py`
checks that the current engine places every job exactly as this one does. Do not edit them.
"""
