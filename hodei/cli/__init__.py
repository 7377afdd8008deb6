"""``hodei-jobs-cli``: submit, watch and debug jobs from a terminal or a script."""
