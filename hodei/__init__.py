"""Hodei Jobs: a job execution platform with one ephemeral worker per job."""
