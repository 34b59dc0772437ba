"""Running experiments: `main.py`'s dispatcher (`entry`), LightningCLI (`cli`), the trust policy
(`trust`), presets of stages (`stages`, `reproduce`, `grid`) and their report (`report`). Import
the submodule you need; this package imports nothing heavy."""
