"""An embedding-free LSTM sequence classifier: a Linear input projection, ``nn.LSTM``
(batch first), the last time step's output, and a Linear head.

The LSTM's recurrence has no integer kernel, so it stays in float (a PyTorch region of
the compiled model); the projections around it are ordinary ``nn.Linear`` layers.
Input ``[B, S, in_features]`` -> logits ``[B, num_classes]``.
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["LSTMClassifier", "lstm_classifier"]


class LSTMClassifier(nn.Module):
    def __init__(self, in_features: int = 32, proj_features: int = 64, hidden_size: int = 128,
                 num_layers: int = 2, num_classes: int = 10) -> None:
        super().__init__()
        self.input_proj = nn.Linear(in_features, proj_features)
        self.act = nn.ReLU()
        self.lstm = nn.LSTM(proj_features, hidden_size, num_layers=num_layers, batch_first=True)
        self.head = nn.Linear(hidden_size, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.lstm(self.act(self.input_proj(x)))
        return self.head(out[:, -1])


def lstm_classifier(**kwargs) -> LSTMClassifier:
    return LSTMClassifier(**kwargs)
