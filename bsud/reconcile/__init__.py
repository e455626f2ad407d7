"""Reconciling drives toward their target: observe, plan (pure), execute one step."""
