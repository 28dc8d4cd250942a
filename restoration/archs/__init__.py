"""Pure ``nn.Module`` networks: no Lightning, Hydra, logging or file I/O."""
