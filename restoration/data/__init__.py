"""Image sources, batched on-device degradation synthesis, datasets and the datamodule."""
