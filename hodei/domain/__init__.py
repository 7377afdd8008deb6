"""The domain: aggregates, their events and state machines. No I/O happens here.

Every state change of a job, worker, saga or provider is a method on its aggregate
in this package; the store persists the events these methods trigger.
"""
