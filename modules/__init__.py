"""LightningModules, one per research model, and the nn building blocks they share.

Plain Lightning code: nothing here imports the platform, so each module works with a bare `lightning.Trainer`.
"""
