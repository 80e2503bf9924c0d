"""Live fuzzing of a running node (`make fuzz`, `python -m tests.fuzz.live`)."""
