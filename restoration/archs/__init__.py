"""Pure ``nn.Module`` networks: no Lightning, Hydra, logging or file I/O (loading weights aside)."""

from restoration.archs.pretrained import load_pretrained, read_state_dict

__all__ = ["load_pretrained", "read_state_dict"]
