"""The `sluice` command line: serve, demo, and the admin, monitor and label commands."""
