"""The ground floor every other package stands on: user errors, atomic writes, checkpoint
reading, content digests and the ImageNet normalisation. It imports nothing of this project."""
