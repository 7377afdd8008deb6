"""Sagas: the engine that runs them step by step, and the three definitions
(provisioning, execution, recovery) that take a job from queued to finished."""
