"""flowtarget web: the operator console (see service.py)."""
