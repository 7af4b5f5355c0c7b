"""The Show and Tell model (im2txt's `show_and_tell_model.py`), top to bottom:

    image (B, 3, H, W) -> encoder -> features (B, D) -> [standardise] ->
    image_embedding (no bias) -> (B, E) -> LSTM step from the zero state -> state
    words (B, T) -> seq_embedding -> (B, T, E) -> LSTM from that state -> (B, T, H)
    -> logits (B, T, V)

D is the encoder's pooled features, led by its earlier stages' outputs max- or
mean-pooled over space (`stage_pooling`) when `multiscale_features` is set.

The image enters the LSTM once, as the input of a first step whose output is
discarded. In training, dropout (keep 0.7) acts on the LSTM's inputs, the image step
included, and on its outputs.

The LSTM is PyTorch's (gate order i, f, g, o), with TensorFlow's single bias: the
hidden-to-hidden bias `bias_hh_l0` is held at zero and frozen, so `bias_ih_l0` is the
bias of TF's BasicLSTMCell and the trainable count matches im2txt's 2,099,200 (for
512 units). BasicLSTMCell added a constant forget bias of 1.0 at every step; here the
forget-gate bias starts 1.0 higher instead, which under plain SGD without weight
decay on it trains identically.

For generation the model offers `encode(images) -> state` and
`step(tokens, state) -> (log_probs, state)`; beam search lives elsewhere.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from showtell.config import ModelConfig, ModelRequest
from showtell.config.merge import Layer, given_keys, resolve
from showtell.encoders import Encoder, build_encoder, encoder_entry

State = tuple[torch.Tensor, torch.Tensor]  # (h, c), each (N, H)


class ShowAndTell(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder: Encoder = build_encoder(
            config.encoder,
            batch_norm_decay=config.encoder_batch_norm_decay,
            dropout=1.0 - config.encoder_dropout_keep_prob,
            multiscale=config.multiscale_features,
            stage_pooling=config.stage_pooling,
        )
        d, e, h, v = (
            self.encoder.output_dim,
            config.embedding_size,
            config.num_lstm_units,
            config.vocab_size,
        )
        # Per-dimension standardisation of encoder features (identity unless measured).
        self.register_buffer("feature_mean", torch.zeros(d))
        self.register_buffer("feature_std", torch.ones(d))
        self.image_embedding = nn.Linear(d, e, bias=False)
        self.seq_embedding = nn.Embedding(v, e)
        self.lstm = nn.LSTM(e, h, batch_first=True)
        self.lstm_dropout = nn.Dropout(1.0 - config.lstm_dropout_keep_prob)
        self.logits = nn.Linear(h, v)
        self.train_encoder = False
        self.freeze_batch_norm = False
        self.init_weights()

    def init_weights(self) -> None:
        """im2txt's initialisation of everything but the encoder:
        - image_embedding, seq_embedding, LSTM kernels and bias, logits: uniform(-s, s),
          s = initializer_scale (0.08);
        - LSTM forget-gate bias: + 1.0 (TensorFlow BasicLSTMCell forget_bias);
        - LSTM hidden-to-hidden bias: 0 and frozen (TF has one bias per gate).
        The encoder keeps its own initialisation or pretrained weights."""
        s = self.config.initializer_scale
        for module in (self.image_embedding, self.seq_embedding, self.lstm, self.logits):
            for p in module.parameters():
                nn.init.uniform_(p, -s, s)
        h = self.config.num_lstm_units
        with torch.no_grad():
            self.lstm.bias_ih_l0[h : 2 * h] += 1.0  # gates i, f, g, o: f is the 2nd block
            self.lstm.bias_hh_l0.zero_()
        self.lstm.bias_hh_l0.requires_grad_(False)

    # --- phases -------------------------------------------------------------------------

    def set_train_encoder(self, train_encoder: bool, freeze_batch_norm: bool = False) -> None:
        """Phase 1 (False): encoder frozen, in eval mode, no gradients. Phase 2: trained;
        with `freeze_batch_norm` its batch-norm layers stay in inference mode (their
        running statistics normalise and stay as they are; their scales and shifts
        train), so that phase 2 starts from the very features phase 1 learnt on."""
        self.train_encoder = train_encoder
        self.freeze_batch_norm = freeze_batch_norm
        self.encoder.requires_grad_(train_encoder)
        self.train(self.training)

    def train(self, mode: bool = True) -> ShowAndTell:
        super().train(mode)
        if not self.train_encoder:
            self.encoder.eval()  # batch-norm keeps its running statistics, no dropout
        elif self.freeze_batch_norm:
            for module in self.encoder.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    def encoder_l2_loss(self) -> torch.Tensor:
        """TensorFlow's l2_regularizer on encoder weights: scale * sum(w^2) / 2."""
        weights = [p for p in self.encoder.parameters() if p.ndim > 1]
        return self.config.encoder_weight_decay * 0.5 * sum(w.pow(2).sum() for w in weights)

    # --- the model, top to bottom -------------------------------------------------------

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, D) raw encoder features."""
        if self.train_encoder:
            return self.encoder(images)
        with torch.no_grad():
            return self.encoder(images)

    def initial_state(self, features: torch.Tensor) -> State:
        """Raw features (B, D) -> the LSTM state after the image step."""
        x = (features.float() - self.feature_mean) / self.feature_std  # (B, D)
        x = self.image_embedding(x).unsqueeze(1)  # (B, 1, E)
        _, (h, c) = self.lstm(self.lstm_dropout(x))  # from the zero state; output discarded
        return h[0], c[0]  # (B, H) each

    def hidden_states(self, features: torch.Tensor, input_seqs: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: (B, D) features and (B, T) input words -> (B, T, H) outputs."""
        h, c = self.initial_state(features)
        x = self.lstm_dropout(self.seq_embedding(input_seqs))  # (B, T, E)
        out, _ = self.lstm(x, (h.unsqueeze(0), c.unsqueeze(0)))  # (B, T, H)
        return self.lstm_dropout(out)

    def hidden_states_sampled(
        self, features: torch.Tensor, input_seqs: torch.Tensor, probability: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Scheduled sampling (training/scheduled_sampling.py): as `hidden_states`, but
        one LSTM step at a time, because each input word after the start word is, with
        `probability` (a coin per word), replaced by a word sampled from the model's own
        next-word distribution at the step before (no gradient flows through the
        choice). Returns the (B, T, H) outputs and the (B, T) words that were fed."""
        state = tuple(s.unsqueeze(0) for s in self.initial_state(features))  # (1, B, H) each
        coins = torch.rand(input_seqs.shape, device=input_seqs.device) < probability  # (B, T)
        word = input_seqs[:, 0]  # the start word is always given
        outputs, fed = [], [word]
        for t in range(input_seqs.shape[1]):
            x = self.lstm_dropout(self.seq_embedding(word)).unsqueeze(1)  # (B, 1, E)
            out, state = self.lstm(x, state)
            outputs.append(self.lstm_dropout(out[:, 0]))  # (B, H)
            if t + 1 == input_seqs.shape[1]:
                break
            word = input_seqs[:, t + 1].clone()
            rows = coins[:, t + 1].nonzero()[:, 0]  # logits only where a word is sampled
            if len(rows):
                with torch.no_grad():
                    probs = F.softmax(self.logits(outputs[-1][rows]).float(), dim=-1)
                word[rows] = torch.multinomial(probs, 1)[:, 0]
            fed.append(word)
        return torch.stack(outputs, 1), torch.stack(fed, 1)

    def forward(
        self,
        input_seqs: torch.Tensor,
        target_seqs: torch.Tensor,
        mask: torch.Tensor,
        *,
        images: torch.Tensor | None = None,
        features: torch.Tensor | None = None,
        reduction: str = "mean",
        sampling_probability: float = 0.0,
    ) -> torch.Tensor:
        """The training loss: cross-entropy per target word, averaged over the mask's
        ones (im2txt's batch_loss; `reduction="sum"` for the sum). Give `images`
        (B, 3, H, W) or cached `features` (B, D). Logits are computed only where the
        mask is 1: padding costs nothing. `sampling_probability` > 0: scheduled
        sampling (`hidden_states_sampled`); 0 is teacher forcing, the fused LSTM."""
        if features is None:
            assert images is not None, "give images or features"
            features = self.image_features(images)
        if sampling_probability > 0:
            hidden, _ = self.hidden_states_sampled(features, input_seqs, sampling_probability)
        else:
            hidden = self.hidden_states(features, input_seqs)  # (B, T, H)
        real = mask.bool()  # (B, T)
        logits = self.logits(hidden[real])  # (N, V), N = real target words
        return F.cross_entropy(logits.float(), target_seqs[real], reduction=reduction)

    def log_probs(self, features: torch.Tensor, input_seqs: torch.Tensor) -> torch.Tensor:
        """Teacher-forced next-word log-probabilities, (B, T, V)."""
        return F.log_softmax(self.logits(self.hidden_states(features, input_seqs)).float(), -1)

    # --- generation ---------------------------------------------------------------------

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> State:
        """(B, 3, H, W) in [-1, 1] -> the initial state for generation."""
        return self.initial_state(self.encoder(images))

    @torch.no_grad()
    def step(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """One word for each of N partial captions: (N,) ids, state -> (N, V), state."""
        h, c = state
        x = self.seq_embedding(tokens).unsqueeze(1)  # (N, 1, E)
        out, (h, c) = self.lstm(x, (h.unsqueeze(0), c.unsqueeze(0)))  # (N, 1, H)
        # W @ h^T rather than F.linear: the same numbers, several times faster on CPUs
        # for the few rows of a beam (measured in benchmarks/generation.py).
        weight, bias = self.logits.weight, self.logits.bias
        logits = torch.addmm(bias.unsqueeze(1), weight, out[:, 0].T).T  # (N, V)
        return F.log_softmax(logits.float(), dim=-1), (h[0], c[0])


def count_parameters(module: nn.Module, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def model_request(*layers: Layer) -> ModelRequest:
    """The one way in for the model configuration a preset and flags ask for (layers,
    lowest first): im2txt's defaults, the chosen encoder's input sizes, then the layers
    key by key. Typed from here on; a checkpoint's config wins where the layers are
    silent (`ModelRequest.differences`), and the vocabulary sets `vocab_size`."""
    encoder = ModelConfig().encoder
    for _source, values in layers:
        encoder = values.get("encoder", encoder)
    base = ModelConfig(encoder=encoder, image=encoder_entry(str(encoder)).image)
    return ModelRequest(resolve(ModelConfig, *layers, base=base), given_keys(ModelConfig, *layers))
