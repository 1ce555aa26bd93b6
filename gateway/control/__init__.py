"""The control plane: the single writer of traffic policies, versions' desired states and rollouts.

It runs once per deployment (the holder of the leader lease), drives rollouts, the monitor scheduler,
triggers and webhooks, and publishes every change through the state store for the replicas to read.
"""
