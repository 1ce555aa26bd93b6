"""The admin, monitor and feedback HTTP APIs and their bearer-token auth."""
