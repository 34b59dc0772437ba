"""Running experiments: the command line (`cli`), presets of stages (`stages`, `reproduce`) and
their report (`report`). Import the submodule you need; this package imports nothing heavy."""
