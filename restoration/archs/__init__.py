"""Pure ``nn.Module`` networks: no Lightning, Hydra, logging or file I/O (loading weights aside)."""

from restoration.archs.pretrained import load_pretrained, network_prefix, read_state_dict

__all__ = ["load_pretrained", "network_prefix", "read_state_dict"]
