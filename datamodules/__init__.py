"""LightningDataModules, one per data family, with their readers and featurizers.

Plain Lightning code: nothing here imports the platform, so each data module works with a bare
`lightning.Trainer`.
"""
