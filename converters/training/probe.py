"""Linear probes on frozen encoders: how good a starting point is, and a head to start from.

A frozen encoder read through its pooling plus a logistic-regression head is the floor a
fine-tuned or distilled classifier must beat (issue 10: on banking77 a frozen MiniLM-L6 with a
probe beat the fine-tuned MPNet teacher). The same fit gives the head its first weights, so
training starts from a classifier rather than from a random head that drags the encoder around
in its first steps (LP-FT, Kumar et al., ICLR 2022).

The fit is multinomial logistic regression with L2, solved by L-BFGS on standardised
features, in torch: scikit-learn would do the same but is not a dependency of the convert
stack, and the features are small (thousands × 384).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["LinearProbe", "fit_probe", "pooled_features"]


@torch.no_grad()
def pooled_features(model, tokenizer, texts: Sequence[str], *, max_length: int, batch_size: int = 128) -> np.ndarray:
    """Pooled encoder outputs of a :class:`~edgekit.converters.classifier.PooledClassifier` (eval mode)."""
    from edgekit.converters.training.loop import encode

    model.eval()
    order = np.argsort([len(t) for t in texts], kind="stable")  # similar lengths per batch: less padding
    out = np.zeros((len(texts), model.config.hidden_size), np.float32)
    for start in range(0, len(texts), batch_size):
        idx = order[start : start + batch_size]
        batch = encode(tokenizer, [texts[i] for i in idx], max_length)
        pooled, _ = model.pool(batch["input_ids"], batch["attention_mask"])
        out[idx] = pooled.float().numpy()
    return out


@dataclass
class LinearProbe:
    weight: np.ndarray  # [labels, hidden], in the raw (unstandardised) feature space
    bias: np.ndarray  # [labels]

    def logits(self, features: np.ndarray) -> np.ndarray:
        return features @ self.weight.T + self.bias

    def accuracy(self, features: np.ndarray, y: np.ndarray) -> float:
        return float((self.logits(features).argmax(-1) == y).mean()) if len(y) else 0.0

    def to_linear(self) -> torch.nn.Linear:
        head = torch.nn.Linear(self.weight.shape[1], self.weight.shape[0])
        with torch.no_grad():
            head.weight.copy_(torch.from_numpy(self.weight))
            head.bias.copy_(torch.from_numpy(self.bias))
        return head


def fit_probe(features: np.ndarray, y: np.ndarray, num_labels: int, *, l2: float = 1e-3,
              max_iter: int = 200, scale: float = 1.0) -> LinearProbe:
    """Logistic regression on ``features``; returned in raw feature space (mean/std folded in).

    ``scale`` multiplies the final weights: a probe fitted to convergence is very confident, and
    a head that starts at a softer scale leaves the encoder room to learn (0.5 is a common
    compromise); accuracy is unchanged by it.
    """
    x = torch.from_numpy(np.asarray(features, np.float32))
    # Centre each feature, but scale all of them by ONE number: per-feature standardisation
    # divides by each feature's own spread, and pooled sentence embeddings have near-constant
    # ("rogue") dimensions whose weight then comes back multiplied by 1/std. The head still
    # computes the same logits in fp32, but a weight of 3e4 among weights of 0.5 leaves nothing
    # for int8 per-tensor quantization to represent (every quantized model of such a head
    # answered one constant label). With one scale the L2 penalty bounds every raw weight alike.
    mean = x.mean(0)
    std = (x - mean).std().clamp(min=1e-6)
    xs = (x - mean) / std
    target = torch.from_numpy(np.asarray(y, np.int64))
    w = torch.zeros(num_labels, x.shape[1], requires_grad=True)
    b = torch.zeros(num_labels, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(xs @ w.T + b, target) + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        weight = w / std  # (x - mean) / std @ w.T + b  ==  x @ (w / std).T + (b - (w / std) @ mean)
        bias = b - weight @ mean
    return LinearProbe((weight * scale).numpy(), (bias * scale).numpy())
