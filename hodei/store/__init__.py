"""Persistence: the event recorder, read-model projections, migrations, replay."""
