"""IPT, the Image Processing Transformer, with one network shared by several restoration tasks.

H. Chen, Y. Wang, T. Guo, C. Xu, Y. Deng, Z. Liu, S. Ma, C. Xu, C. Xu and W. Gao, "Pre-Trained Image
Processing Transformer", CVPR 2021. Official PyTorch code: huawei-noah/Pretrained-IPT (``model/ipt.py``).

Per task a CNN head maps the image to 64 feature maps and a tail maps them back (upscaling for super-
resolution); a shared transformer body in between sees the 48×48 feature map as 256 tokens of 3×3×64
values: 12 pre-norm encoder layers, then 12 DETR-style decoder layers whose queries and self-attention
keys carry a learned per-task embedding. The body only takes 48×48 inputs; whole images go through
:func:`restoration.tiling.ipt_tiled_forward`.

Parameter names and shapes are those of the official state dict, so the released checkpoints
(``IPT_pretrain.pt`` with its six task rows, and the single-task fine-tuned models) load strictly with
:func:`restoration.archs.load_pretrained`. Unlike the official code, every task has its own head, tail and
task-embedding row: the official indexing by the scale list sends all ×1 tasks to entry 0.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

__all__ = ["IPT", "IPT_TASKS", "TASK_SCALES", "ipt_tasks_from_state_dict"]

# The MindSpore training code's task ids 0..5, which are also the rows of IPT_pretrain.pt's task embedding.
IPT_TASKS: tuple[str, ...] = ("sr_x2", "sr_x3", "sr_x4", "derain", "denoise_30", "denoise_50")
TASK_SCALES: dict[str, int] = {
    "sr_x2": 2,
    "sr_x3": 3,
    "sr_x4": 4,
    "derain": 1,
    "denoise_30": 1,
    "denoise_50": 1,
}
# The DIV2K RGB mean that the EDSR-derived official code subtracts, times rgb_range, before the head.
DIV2K_RGB_MEAN = (0.4488, 0.4371, 0.4040)


def ipt_tasks_from_state_dict(state: Mapping[str, Tensor]) -> int:
    """The number of tasks an official IPT state dict was built for.

    That is the number of task-embedding rows (``body.query_embed.weight``, ``--num_queries`` of the
    official code: 6 for ``IPT_pretrain.pt``, 1 for the fine-tuned models), or of heads when the model
    was built with ``no_mlp`` and has no task embedding.
    """
    if "body.query_embed.weight" in state:
        return int(state["body.query_embed.weight"].shape[0])
    heads = {name.split(".")[1] for name in state if name.startswith("head.")}
    if not heads:
        raise ValueError("not an IPT state dict: it has neither body.query_embed.weight nor head.* keys")
    return len(heads)


def _conv(in_channels: int, out_channels: int, kernel_size: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)


def _mean_shift(rgb_range: float, *, sign: int) -> nn.Conv2d:
    """A frozen 1×1 conv adding ``sign`` × ``rgb_range`` × the DIV2K mean (official ``MeanShift``, std 1)."""
    shift = nn.Conv2d(3, 3, kernel_size=1)
    with torch.no_grad():
        shift.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
        shift.bias.copy_(sign * rgb_range * torch.tensor(DIV2K_RGB_MEAN))
    shift.requires_grad_(False)
    return shift


class _ResBlock(nn.Module):
    """EDSR residual block: conv → ReLU → conv plus the input (res_scale 1)."""

    def __init__(self, *, channels: int, kernel_size: int) -> None:
        super().__init__()
        self.body = nn.Sequential(  # `body.{0,2}`: official key names
            _conv(channels, channels, kernel_size),
            nn.ReLU(inplace=True),
            _conv(channels, channels, kernel_size),
        )

    def forward(self, features: Tensor) -> Tensor:
        return self.body(features) + features


def _head(*, n_feats: int) -> nn.Sequential:
    """conv3×3 (3 → ``n_feats``) and two EDSR blocks with the 5×5 kernels of the official code."""
    # Here and in the tail, the Sequential indices are the official key names.
    return nn.Sequential(
        _conv(3, n_feats, 3),
        _ResBlock(channels=n_feats, kernel_size=5),
        _ResBlock(channels=n_feats, kernel_size=5),
    )


def _tail(*, n_feats: int, scale: int) -> nn.Sequential:
    """EDSR upsampler (conv + PixelShuffle per factor 2, or one for ×3; nothing at ×1), then conv3×3 → RGB."""
    if scale == 3:
        upsampler = [_conv(n_feats, 9 * n_feats, 3), nn.PixelShuffle(3)]
    elif scale >= 1 and scale & (scale - 1) == 0:
        upsampler = [
            layer
            for _ in range(scale.bit_length() - 1)
            for layer in (_conv(n_feats, 4 * n_feats, 3), nn.PixelShuffle(2))
        ]
    else:
        raise ValueError(f"IPT's tail upscales by 1, 3 or a power of two; got scale {scale}")
    return nn.Sequential(nn.Sequential(*upsampler), _conv(n_feats, 3, 3))


# oneDNN's fp32 matrix product with a fused ReLU or addition: the operator torch.compile's CPU backend
# (Inductor) fuses linear layers into. It has no autograd formula, so it only serves inference.
_ONEDNN_LINEAR = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _linear(
    inputs: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    *,
    relu: bool = False,
    residual: Tensor | None = None,
    dropout: float = 0.0,
) -> Tensor:
    """``residual + dropout(relu(inputs @ weight.T + bias))``, the ReLU and the residual each optional.

    Without autograd on the CPU this is one oneDNN call: on the 2-core AMD EPYC of experiments/bench/ipt.py
    its fp32 product runs about 25% faster than MKL's (which F.linear uses), and the fused ReLU and addition
    save a pass over the activations each. Everywhere else, and with active dropout, it is F.linear.
    """
    needs_grad = torch.is_grad_enabled() and (inputs.requires_grad or weight.requires_grad)
    fused = _ONEDNN_LINEAR and not dropout and not needs_grad and inputs.device.type == "cpu"
    if fused and inputs.dtype == weight.dtype == torch.float32:
        if residual is not None:
            return torch.ops.mkldnn._linear_pointwise.binary(inputs, residual, weight, bias, "add")
        return torch.ops.mkldnn._linear_pointwise(inputs, weight, bias, "relu" if relu else "none", [], "")
    outputs = F.linear(inputs, weight, bias)
    if relu:
        outputs = F.relu(outputs, inplace=True)
    if dropout:
        outputs = F.dropout(outputs, dropout)
    return outputs if residual is None else residual + outputs


class _Attention(nn.Module):
    """Multi-head attention with no biases, stored like ``nn.MultiheadAttention(bias=False)``.

    Batch-first and computed by ``F.scaled_dot_product_attention``. When two of query, key and value are
    the same tensor their in-projections run as one matrix product.
    """

    def __init__(self, *, dim: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        # `in_proj_weight` (q, k, v stacked), `out_proj`: the official keys of nn.MultiheadAttention
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.out_proj = nn.Linear(dim, dim, bias=False)
        self.num_heads = num_heads
        self.dropout = dropout
        nn.init.xavier_uniform_(self.in_proj_weight)  # nn.MultiheadAttention's initialisation

    def forward(self, query: Tensor, key: Tensor, value: Tensor, *, residual: Tensor) -> Tensor:
        """``residual`` + the attention output, dropped out with the layer's rate while training."""
        dim = query.shape[-1]
        weight = self.in_proj_weight
        if query is key and key is value:
            q, k, v = _linear(query, weight).chunk(3, dim=-1)
        elif query is key:
            q, k = _linear(query, weight[: 2 * dim]).chunk(2, dim=-1)
            v = _linear(value, weight[2 * dim :])
        elif key is value:
            q = _linear(query, weight[:dim])
            k, v = _linear(key, weight[dim:]).chunk(2, dim=-1)
        else:
            q, k, v = (_linear(x, w) for x, w in zip((query, key, value), weight.chunk(3), strict=True))
        q, k, v = (rearrange(x, "n l (h d) -> n h l d", h=self.num_heads) for x in (q, k, v))
        dropout = self.dropout if self.training else 0.0
        attended = rearrange(
            F.scaled_dot_product_attention(q, k, v, dropout_p=dropout), "n h l d -> n l (h d)"
        )
        return _linear(attended, self.out_proj.weight, residual=residual, dropout=dropout)


def _layer_norm(dim: int, *, no_norm: bool) -> nn.Module:
    return nn.Identity() if no_norm else nn.LayerNorm(dim)


def _add(tokens: Tensor, embedding: Tensor | None) -> Tensor:
    return tokens if embedding is None else tokens + embedding


class _EncoderLayer(nn.Module):
    """Pre-norm transformer encoder layer; ``positions`` (``pos_every``) go to the queries and keys only."""

    def __init__(self, *, dim: int, num_heads: int, hidden_dim: int, dropout: float, no_norm: bool) -> None:
        super().__init__()
        self.self_attn = _Attention(dim=dim, num_heads=num_heads, dropout=dropout)
        # the official encoder layer re-initialises its in-projection like an nn.Linear weight
        nn.init.kaiming_uniform_(self.self_attn.in_proj_weight, a=math.sqrt(5))
        self.linear1 = nn.Linear(dim, hidden_dim)
        self.linear2 = nn.Linear(hidden_dim, dim)
        self.norm1 = _layer_norm(dim, no_norm=no_norm)
        self.norm2 = _layer_norm(dim, no_norm=no_norm)
        self.dropout = dropout

    def forward(self, tokens: Tensor, positions: Tensor | None) -> Tensor:
        normed = self.norm1(tokens)
        query_key = _add(normed, positions)
        tokens = self.self_attn(query_key, query_key, normed, residual=tokens)
        return self._feed_forward(self.norm2(tokens), residual=tokens)

    def _feed_forward(self, normed: Tensor, *, residual: Tensor) -> Tensor:
        dropout = self.dropout if self.training else 0.0
        hidden = _linear(normed, self.linear1.weight, self.linear1.bias, relu=True, dropout=dropout)
        return _linear(hidden, self.linear2.weight, self.linear2.bias, residual=residual, dropout=dropout)


class _DecoderLayer(_EncoderLayer):
    """DETR decoder layer, pre-norm: self-attention, cross-attention to the encoder output, feed-forward.

    The task embedding is added to the self-attention queries and keys and to the cross-attention queries;
    ``positions`` (``pos_every``) to the cross-attention keys.
    """

    def __init__(self, *, dim: int, num_heads: int, hidden_dim: int, dropout: float, no_norm: bool) -> None:
        super().__init__(
            dim=dim, num_heads=num_heads, hidden_dim=hidden_dim, dropout=dropout, no_norm=no_norm
        )
        nn.init.xavier_uniform_(self.self_attn.in_proj_weight)  # the decoder keeps nn.MultiheadAttention's
        self.multihead_attn = _Attention(dim=dim, num_heads=num_heads, dropout=dropout)
        self.norm3 = _layer_norm(dim, no_norm=no_norm)

    def forward(  # type: ignore[override]
        self, tokens: Tensor, memory: Tensor, *, positions: Tensor | None, task_embedding: Tensor | None
    ) -> Tensor:
        normed = self.norm1(tokens)
        query_key = _add(normed, task_embedding)
        tokens = self.self_attn(query_key, query_key, normed, residual=tokens)
        query = _add(self.norm2(tokens), task_embedding)
        tokens = self.multihead_attn(query, _add(memory, positions), memory, residual=tokens)
        return self._feed_forward(self.norm3(tokens), residual=tokens)


class _LayerStack(nn.Module):
    """Holds ``layers`` only so that the keys read ``encoder.layers.{i}`` as in the official state dict."""

    def __init__(self, layers: list[nn.Module]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)


class _LearnedPositions(nn.Module):
    """One learned vector per token position (official ``LearnedPositionalEncoding``, same keys)."""

    def __init__(self, *, num_tokens: int, dim: int) -> None:
        super().__init__()
        self.pe = nn.Embedding(num_tokens, dim)
        self.register_buffer("position_ids", torch.arange(num_tokens).unsqueeze(0))

    def forward(self) -> Tensor:
        return self.pe(self.position_ids)


class _Body(nn.Module):
    """The transformer between head and tail (official ``VisionTransformer``): features in, features out."""

    def __init__(
        self,
        *,
        image_size: int,
        patch_dim: int,
        n_feats: int,
        num_heads: int,
        num_layers: int,
        hidden_dim: int,
        num_tasks: int,
        dropout: float,
        no_norm: bool,
        no_mlp: bool,
        pos_every: bool,
        no_pos: bool,
    ) -> None:
        super().__init__()
        self.image_size, self.patch_dim = image_size, patch_dim
        self.num_tokens = (image_size // patch_dim) ** 2
        dim = n_feats * patch_dim**2
        self.dim = dim
        self.pos_every, self.no_pos, self.dropout = pos_every, no_pos, dropout
        if not no_mlp:
            self.linear_encoding = nn.Linear(dim, dim)
            # keys "0" and "3": the linear layers of the official mlp_head, a Sequential of
            # (Linear, Dropout, ReLU, Linear, Dropout)
            self.mlp_head = nn.ModuleDict({"0": nn.Linear(dim, hidden_dim), "3": nn.Linear(hidden_dim, dim)})
            self.query_embed = nn.Embedding(num_tasks, self.num_tokens * dim)
        layer_options = {
            "dim": dim,
            "num_heads": num_heads,
            "hidden_dim": hidden_dim,
            "dropout": dropout,
            "no_norm": no_norm,
        }
        self.encoder = _LayerStack([_EncoderLayer(**layer_options) for _ in range(num_layers)])
        self.decoder = _LayerStack([_DecoderLayer(**layer_options) for _ in range(num_layers)])
        if not no_pos:
            self.position_encoding = _LearnedPositions(num_tokens=self.num_tokens, dim=dim)
        if no_norm:
            # the official re-initialisation of every linear weight (not the attention in-projections)
            # when there is no LayerNorm to keep the activations in range
            for module in self.modules():
                if isinstance(module, nn.Linear):
                    nn.init.normal_(module.weight, std=1 / module.weight.shape[1])

    @property
    def has_mlp(self) -> bool:
        return hasattr(self, "mlp_head")

    def forward(self, features: Tensor, task_index: int) -> tuple[Tensor, Tensor]:
        """Return the body's output features and its output tokens (N×tokens×dim, before the fold)."""
        grid = self.image_size // self.patch_dim
        tokens = rearrange(features, "n c (h p) (w q) -> n (h w) (c p q)", p=self.patch_dim, q=self.patch_dim)
        dropout = self.dropout if self.training else 0.0
        task_embedding = None
        if self.has_mlp:
            encoding = self.linear_encoding
            tokens = _linear(tokens, encoding.weight, encoding.bias, residual=tokens, dropout=dropout)
            task_embedding = self.query_embed.weight[task_index].view(self.num_tokens, self.dim)
        positions = None if self.no_pos else self.position_encoding()
        if positions is not None and not self.pos_every:
            tokens = tokens + positions
            positions = None
        for layer in self.encoder.layers:
            tokens = layer(tokens, positions)
        memory = tokens
        for layer in self.decoder.layers:
            tokens = layer(tokens, memory, positions=positions, task_embedding=task_embedding)
        if self.has_mlp:
            first, second = self.mlp_head["0"], self.mlp_head["3"]
            # ReLU after the dropout in the official order: the same, as the dropout only scales and zeroes
            hidden = _linear(tokens, first.weight, first.bias, relu=True, dropout=dropout)
            tokens = _linear(hidden, second.weight, second.bias, residual=tokens, dropout=dropout)
        features = rearrange(
            tokens, "n (h w) (c p q) -> n c (h p) (w q)", h=grid, w=grid, p=self.patch_dim, q=self.patch_dim
        )
        return features, tokens


class IPT(nn.Module):
    """IPT with one head, tail and task-embedding row per entry of ``tasks``.

    Takes N×3×48×48 images in [0, 1] (``patch_size``×``patch_size`` in general) and one task for the whole
    batch; returns the restored N×3×(48·s)×(48·s) image on the same scale, not clamped (``s`` the task's
    upscaling factor). Internally the image is multiplied by ``rgb_range`` as the official network expects,
    so ``ipt(x / 255, task) * 255`` equals the official model's output for ``x`` in 0..255.

    Args:
        tasks: task names from :data:`TASK_SCALES`, in the order of the checkpoint's heads, tails and
            task-embedding rows: :data:`IPT_TASKS` for ``IPT_pretrain.pt``, one task for a fine-tuned model.
        n_feats: channels of the head output (64).
        patch_size: the side of the input the body is built for (48; the official ``--patch_size``).
        patch_dim: side of the square patch that forms one token (3; 256 tokens of 3·3·64 = 576 values).
        num_heads: attention heads (12).
        num_layers: encoder layers, and as many decoder layers (12).
        mlp_ratio: feed-forward hidden size over the token size (4, fixed in the official code: 2304 units).
        dropout: dropout of the attention weights, residual branches and MLPs (0 in the official models).
        no_norm: replace every LayerNorm by the identity and re-initialise the linear weights from
            N(0, 1/fan_in) (official ``--no_norm``).
        no_mlp: drop the token-embedding linear, the MLP head and the task embedding (official ``--no_mlp``).
        pos_every: add the positional embedding to the attention queries and keys of every encoder layer and
            to the cross-attention keys of every decoder layer, instead of once to the encoder input.
        no_pos: no positional embedding at all.
        rgb_range: the pixel scale the weights were trained for (255 for all released weights).
    """

    def __init__(
        self,
        *,
        tasks: Sequence[str] = IPT_TASKS,
        n_feats: int = 64,
        patch_size: int = 48,
        patch_dim: int = 3,
        num_heads: int = 12,
        num_layers: int = 12,
        mlp_ratio: int = 4,
        dropout: float = 0.0,
        no_norm: bool = False,
        no_mlp: bool = False,
        pos_every: bool = False,
        no_pos: bool = False,
        rgb_range: float = 255.0,
    ) -> None:
        super().__init__()
        tasks = tuple(tasks)
        if not tasks:
            raise ValueError(f"IPT needs at least one task; known tasks are {list(TASK_SCALES)}")
        unknown = [task for task in tasks if task not in TASK_SCALES]
        if unknown or len(set(tasks)) != len(tasks):
            raise ValueError(f"IPT tasks must be distinct names from {list(TASK_SCALES)}; got {list(tasks)}")
        if patch_size % patch_dim:
            raise ValueError(f"patch_size {patch_size} is not a multiple of patch_dim {patch_dim}")
        if (n_feats * patch_dim**2) % num_heads:
            raise ValueError(
                f"the token size n_feats·patch_dim² = {n_feats * patch_dim**2} is not divisible by "
                f"num_heads {num_heads}"
            )
        if pos_every and no_pos:
            raise ValueError(
                "pos_every and no_pos exclude each other: pos_every needs the positional embedding"
            )
        self.tasks = tasks
        self.patch_size = patch_size
        self.rgb_range = rgb_range
        self.sub_mean = _mean_shift(rgb_range, sign=-1)
        self.add_mean = _mean_shift(rgb_range, sign=1)
        self.head = nn.ModuleList(_head(n_feats=n_feats) for _ in tasks)
        self.body = _Body(
            image_size=patch_size,
            patch_dim=patch_dim,
            n_feats=n_feats,
            num_heads=num_heads,
            num_layers=num_layers,
            hidden_dim=mlp_ratio * n_feats * patch_dim**2,
            num_tasks=len(tasks),
            dropout=dropout,
            no_norm=no_norm,
            no_mlp=no_mlp,
            pos_every=pos_every,
            no_pos=no_pos,
        )
        self.tail = nn.ModuleList(_tail(n_feats=n_feats, scale=TASK_SCALES[task]) for task in tasks)
        self._options = {
            "n_feats": n_feats,
            "patch_size": patch_size,
            "patch_dim": patch_dim,
            "num_heads": num_heads,
            "num_layers": num_layers,
            "mlp_ratio": mlp_ratio,
            "dropout": dropout,
            "no_norm": no_norm,
            "no_mlp": no_mlp,
            "pos_every": pos_every,
            "no_pos": no_pos,
            "rgb_range": rgb_range,
        }

    def task_index(self, task: str | int) -> int:
        """The position of ``task`` (a name, or already an index) among this model's tasks."""
        if isinstance(task, str):
            if task in self.tasks:
                return self.tasks.index(task)
        elif (
            not isinstance(task, bool) and isinstance(task, numbers.Integral) and 0 <= task < len(self.tasks)
        ):
            return int(task)
        raise ValueError(
            f"unknown task {task!r}: this IPT has the tasks {list(self.tasks)} (or their indices)"
        )

    def scale_of(self, task: str | int) -> int:
        """The upscaling factor of ``task``'s tail."""
        return TASK_SCALES[self.tasks[self.task_index(task)]]

    def forward(
        self, degraded: Tensor, task: str | int = 0, *, return_tokens: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Restore an N×3×48×48 batch in [0, 1] with ``task``'s head, tail and task embedding.

        With ``return_tokens`` also return the N×256×576 output tokens of the body: the decoder output after
        the residual MLP head, just before they are folded back into a feature map. These are the features
        the official ``con=True`` branch returns and the pre-training contrastive loss normalises.
        """
        index = self.task_index(task)
        if degraded.ndim != 4 or degraded.shape[1] != 3 or degraded.shape[-2:] != (self.patch_size,) * 2:
            raise ValueError(
                f"IPT's body takes {self.patch_size}×{self.patch_size} inputs, got {tuple(degraded.shape)} "
                "(expected N×3×H×W); tile with restoration.tiling.ipt_tiled_forward"
            )
        features = self.head[index](self.sub_mean(degraded * self.rgb_range))
        body_features, tokens = self.body(features, index)
        restored = self.add_mean(self.tail[index](body_features + features)) / self.rgb_range
        return (restored, tokens) if return_tokens else restored

    def single_task(self, task: str | int) -> IPT:
        """A new one-task IPT holding copies of exactly ``task``'s head, tail and task-embedding row.

        This is how the fine-tuning stage starts from the multi-task pre-trained model (the maintainers, #47).
        """
        index = self.task_index(task)
        with torch.device("meta"):
            single = IPT(tasks=(self.tasks[index],), **self._options)
        state = {}
        for name, tensor in self.state_dict().items():
            if name.startswith(("head.", "tail.")):
                group, entry, rest = name.split(".", 2)
                if int(entry) == index:
                    state[f"{group}.0.{rest}"] = tensor.clone()
            elif name == "body.query_embed.weight":
                state[name] = tensor[index : index + 1].clone()
            else:
                state[name] = tensor.clone()
        # assign=True takes over the copies (and keeps the meta model's requires_grad flags) instead of
        # initialising a second 115M-parameter model only to overwrite it
        single.load_state_dict(state, strict=True, assign=True)
        return single.train(self.training)
