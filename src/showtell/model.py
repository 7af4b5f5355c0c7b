"""The Show and Tell model (im2txt's `show_and_tell_model.py`), top to bottom:

    image (B, 3, H, W) -> encoder -> features (B, D) -> [standardise] ->
    image_embedding (no bias) -> (B, E) -> LSTM step from the zero state -> state
    words (B, T) -> seq_embedding -> (B, T, E) -> LSTM from that state -> (B, T, H)
    -> logits (B, T, V)

D is the encoder's pooled features, led by its earlier stages' outputs max- or
mean-pooled over space (`stage_pooling`) when `multiscale_features` is set.

With `attention_grid` N (not im2txt's), the features also carry the stages' N x N
maps, L = N * N positions of C channels, and every LSTM output attends over them
before the words are read (the spatial attention of Lu et al. 2017, "Knowing When
to Look", Section 2.1, with a scaled dot product for its additive score):

    map (B, L, C) -> memory: linear, + a learnt embedding of each position -> (B, L, H)
    LSTM output (B, T, H) -> query: linear -> . memory / sqrt(H) -> softmax over L
    -> weights (B, T, L) -> context = weights @ memory (B, T, H)
    -> attended: linear on [output, context] -> tanh -> (B, T, H) -> logits (B, T, V)

The LSTM itself is unchanged (the image still enters once, and teacher forcing still
runs the fused LSTM over the whole caption): the output asks where to look after
each word, so "a red" can read the shape where the red is.

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

State = tuple[torch.Tensor, ...]  # (h, c), each (N, H); then the memory (N, L, H), attending


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
            attention_grid=config.attention_grid,
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
        # Attending: the last L * C feature dimensions are the map, the rest are pooled.
        self.memory_shape = self.encoder.memory_shape  # (L, C) or None
        pooled = d - (self.memory_shape[0] * self.memory_shape[1] if self.memory_shape else 0)
        self.image_embedding = nn.Linear(pooled, e, bias=False)
        self.seq_embedding = nn.Embedding(v, e)
        self.lstm = nn.LSTM(e, h, batch_first=True)
        self.lstm_dropout = nn.Dropout(1.0 - config.lstm_dropout_keep_prob)
        if self.memory_shape:
            self.memory = nn.Linear(self.memory_shape[1], h)
            # where each position is (attention alone is blind to the order of positions)
            self.position = nn.Parameter(torch.empty(self.memory_shape[0], h))
            self.query = nn.Linear(h, h, bias=False)
            self.attended = nn.Linear(2 * h, h)
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
        The attention's layers start as the others, uniform(-s, s).
        The encoder keeps its own initialisation or pretrained weights."""
        s = self.config.initializer_scale
        modules = [self.image_embedding, self.seq_embedding, self.lstm, self.logits]
        if self.memory_shape:
            modules += [self.memory, self.query, self.attended]
            nn.init.uniform_(self.position, -s, s)
        for module in modules:
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

    @torch.no_grad()
    def set_feature_statistics(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Standardise features (B, D) with per-dimension statistics of the training
        images. The map's are pooled over its positions: one mean and std per channel,
        as batch norm has, so that every position is on one scale (per position, a
        corner where little is ever seen would have its noise magnified)."""
        mean, std = mean.clone().to(self.feature_mean), std.clone().to(self.feature_std)
        if self.memory_shape:
            positions, channels = self.memory_shape
            grid_mean = mean[-positions * channels :].view(positions, channels)
            grid_var = std[-positions * channels :].view(positions, channels) ** 2
            pooled_mean = grid_mean.mean(0)  # (C,): the mixture of the positions'
            pooled_var = (grid_var + grid_mean**2).mean(0) - pooled_mean**2
            mean[-positions * channels :] = pooled_mean.repeat(positions)
            std[-positions * channels :] = pooled_var.clamp_min(0).sqrt().repeat(positions)
        self.feature_mean.copy_(mean)
        self.feature_std.copy_(std.clamp_min(1e-6))

    # --- the model, top to bottom -------------------------------------------------------

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, D) raw encoder features."""
        if self.train_encoder:
            return self.encoder(images)
        with torch.no_grad():
            return self.encoder(images)

    def initial_state(self, features: torch.Tensor) -> State:
        """Raw features (B, D) -> the LSTM state (h, c) after the image step, and the
        memory (B, L, H) when attending."""
        x = (features.float() - self.feature_mean) / self.feature_std  # (B, D)
        memory = None
        if self.memory_shape:
            pooled = self.image_embedding.in_features
            x, grid = x[:, :pooled], x[:, pooled:]  # (B, D - L*C), (B, L*C)
            memory = self.memory(grid.view(-1, *self.memory_shape)) + self.position  # (B, L, H)
        x = self.image_embedding(x).unsqueeze(1)  # (B, 1, E)
        _, (h, c) = self.lstm(self.lstm_dropout(x))  # from the zero state; output discarded
        return (h[0], c[0]) if memory is None else (h[0], c[0], memory)  # (B, H) each

    def attend(self, outputs: torch.Tensor, state: State) -> torch.Tensor:
        """LSTM outputs (B, T, H) -> what the words are read from, (B, T, H): the
        outputs themselves (im2txt), or, attending, each output with what it finds in
        the state's memory (B, L, H)."""
        if not self.memory_shape:
            return outputs
        memory = state[2].unsqueeze(1)  # (B, 1, L, H): keys and values, one head
        # softmax(query . memory / sqrt(H)) @ memory: (B, 1, T, L) weights -> (B, T, H)
        query = self.query(outputs).unsqueeze(1)  # (B, 1, T, H)
        context = F.scaled_dot_product_attention(query, memory, memory)[:, 0]
        return torch.tanh(self.attended(torch.cat([outputs, context], -1)))  # (B, T, H)

    def hidden_states(self, features: torch.Tensor, input_seqs: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: (B, D) features and (B, T) input words -> (B, T, H), what
        the words are read from."""
        state = self.initial_state(features)
        h, c = state[0].unsqueeze(0), state[1].unsqueeze(0)  # (1, B, H) each
        x = self.lstm_dropout(self.seq_embedding(input_seqs))  # (B, T, E)
        out, _ = self.lstm(x, (h, c))  # (B, T, H)
        return self.attend(self.lstm_dropout(out), state)

    def hidden_states_sampled(
        self, features: torch.Tensor, input_seqs: torch.Tensor, probability: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Scheduled sampling (training/scheduled_sampling.py): as `hidden_states`, but
        one LSTM step at a time, because each input word after the start word is, with
        `probability` (a coin per word), replaced by a word sampled from the model's own
        next-word distribution at the step before (no gradient flows through the
        choice). Returns the (B, T, H) outputs and the (B, T) words that were fed."""
        image = self.initial_state(features)
        state = image[0].unsqueeze(0), image[1].unsqueeze(0)  # (1, B, H) each
        coins = torch.rand(input_seqs.shape, device=input_seqs.device) < probability  # (B, T)
        word = input_seqs[:, 0]  # the start word is always given
        outputs, fed = [], [word]
        for t in range(input_seqs.shape[1]):
            x = self.lstm_dropout(self.seq_embedding(word)).unsqueeze(1)  # (B, 1, E)
            out, state = self.lstm(x, state)
            outputs.append(self.attend(self.lstm_dropout(out), image)[:, 0])  # (B, H)
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
        h, c = state[0].unsqueeze(0), state[1].unsqueeze(0)  # (1, N, H) each
        x = self.seq_embedding(tokens).unsqueeze(1)  # (N, 1, E)
        out, (h, c) = self.lstm(x, (h, c))  # (N, 1, H)
        out = self.attend(out, state)[:, 0]  # (N, H)
        # W @ h^T rather than F.linear: the same numbers, several times faster on CPUs
        # for the few rows of a beam (measured in benchmarks/generation.py).
        weight, bias = self.logits.weight, self.logits.bias
        logits = torch.addmm(bias.unsqueeze(1), weight, out.T).T  # (N, V)
        return F.log_softmax(logits.float(), dim=-1), (h[0], c[0], *state[2:])


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
