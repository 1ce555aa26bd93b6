"""Monitors: prediction log, labels, drift, accuracy, shadow comparison and triggers.

Never imports `gateway`; the gateway composes monitors. (Filled in by the monitors work.)
"""
