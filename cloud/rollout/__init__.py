"""Staged rollouts: rings chosen stably, health gates from what edges report,
automatic promotion and rollback, operator actions, state in Redis."""
