"""Independent PyTorch reference of the unit HiFi-GAN (CodeHiFiGAN) for the vocoder tests.

Written here from the published architecture (jik876/hifi-gan's Generator and ResBlock1,
speech-resynthesis's CodeGenerator / VariancePredictor, SpiritLM's speech_tokenizer/hifigan), in
PyTorch's NCW layout with torch.nn.utils.weight_norm, reading the config as the plain dict of
config.json; it shares no code with tinywave_jax.vocoder. Its state_dict() carries SpiritLM's
generator.pt names and shapes (weight_g / weight_v on every generator conv).
"""

import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # weight_norm's deprecation note; SpiritLM still uses it
    from torch.nn.utils import weight_norm as _weight_norm


def weight_norm(module):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _weight_norm(module)


def _same(k, d=1):
    return (k * d - d) // 2


class ResBlock1(nn.Module):
    def __init__(self, ch, k, dilations):
        super().__init__()
        self.convs1 = nn.ModuleList(
            weight_norm(nn.Conv1d(ch, ch, k, dilation=d, padding=_same(k, d))) for d in dilations
        )
        self.convs2 = nn.ModuleList(
            weight_norm(nn.Conv1d(ch, ch, k, padding=_same(k))) for _ in dilations
        )

    def forward(self, x):
        for c1, c2 in zip(self.convs1, self.convs2):
            x = x + c2(F.leaky_relu(c1(F.leaky_relu(x, 0.1)), 0.1))
        return x


class VariancePredictor(nn.Module):
    def __init__(self, dim, hidden, k):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv1d(dim, hidden, k, padding=(k - 1) // 2), nn.ReLU())
        self.ln1 = nn.LayerNorm(hidden)
        self.conv2 = nn.Sequential(nn.Conv1d(hidden, hidden, k, padding=1), nn.ReLU())
        self.ln2 = nn.LayerNorm(hidden)
        self.proj = nn.Linear(hidden, 1)

    def forward(self, x):  # (B, T, C) -> (B, T)
        x = self.ln1(self.conv1(x.transpose(1, 2)).transpose(1, 2))
        x = self.ln2(self.conv2(x.transpose(1, 2)).transpose(1, 2))
        return self.proj(x).squeeze(2)


class TorchCodeHiFiGAN(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        self.cfg = cfg
        ch0, E = cfg["upsample_initial_channel"], cfg["embedding_dim"]
        self.conv_pre = weight_norm(nn.Conv1d(cfg.get("model_in_dim", 80), ch0, 7, padding=3))
        self.ups = nn.ModuleList()
        self.resblocks = nn.ModuleList()
        for i, (u, k) in enumerate(zip(cfg["upsample_rates"], cfg["upsample_kernel_sizes"])):
            cin, cout = ch0 // 2**i, ch0 // 2 ** (i + 1)
            self.ups.append(weight_norm(nn.ConvTranspose1d(cin, cout, k, u, padding=(k - u) // 2)))
            for rk, rd in zip(cfg["resblock_kernel_sizes"], cfg["resblock_dilation_sizes"]):
                self.resblocks.append(ResBlock1(cout, rk, rd))
        self.conv_post = weight_norm(nn.Conv1d(cout, 1, 7, padding=3))
        self.dict = nn.Embedding(cfg["num_embeddings"], E)
        if cfg.get("num_f0_tokens"):
            self.f0_dict = nn.Embedding(cfg["num_f0_tokens"], E)
            self.f0_ratio = round(cfg["f0_hop_size"] / cfg["code_hop_size"])
        if cfg.get("num_style_tokens"):
            self.style_dict = nn.Embedding(cfg["num_style_tokens"], E)
            self.style_ratio = round(cfg["style_hop_size"] / cfg["code_hop_size"])
        if cfg.get("multispkr"):
            self.spkr = nn.Embedding(cfg.get("num_speakers", 200), E)
        if cfg.get("multistyle"):
            self.style = nn.Embedding(cfg.get("num_styles", 100), E)
        dp = cfg.get("dur_predictor_params")
        self.dur_predictor = (
            VariancePredictor(
                dp["encoder_embed_dim"], dp["var_pred_hidden_dim"], dp["var_pred_kernel_size"]
            )
            if dp
            else None
        )

    def randomize(self, seed: int):
        """Weights that keep activations O(1) through the stack (HiFi-GAN's N(0, 0.01) init
        would make the output nearly constant, hiding errors)."""
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in self.named_parameters():
                if name.endswith("weight_g"):
                    p.copy_(0.6 + 0.8 * torch.rand(p.shape, generator=g))
                elif "ln" in name and name.endswith("weight"):
                    p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
                else:
                    p.copy_(
                        torch.randn(p.shape, generator=g) * (0.3 if name.endswith("bias") else 1)
                    )
            if self.dur_predictor is not None:  # log(1 + frames) near log(3.5): 1 to 5 frames
                self.dur_predictor.proj.weight.mul_(0.15)
                self.dur_predictor.proj.bias.fill_(1.25)
        return self.eval()

    @staticmethod
    def _upsample_codes(codes, low, ratio):
        # CodeHiFiGANVocoderModel.upsample: repeat, pad with the last code, cut to length
        n = codes.shape[1]
        up = torch.repeat_interleave(low, ratio, dim=1)
        if up.shape[1] < n:
            up = torch.cat([up, up[:, -1:].expand(-1, n - up.shape[1])], dim=1)
        return up[:, :n]

    @torch.no_grad()
    def forward(
        self, code, f0_code=None, style_code=None, spkr=None, style=None, dur_prediction=False
    ):
        """code (1, T); returns the waveform (1, T' * hop) as SpiritLM's HifiGANVocoder does."""
        if dur_prediction:
            code = torch.unique_consecutive(code).view(1, -1)
        elif f0_code is not None or style_code is not None:
            if f0_code is not None:
                f0_code = self._upsample_codes(code, f0_code, self.f0_ratio)
            if style_code is not None:
                style_code = self._upsample_codes(code, style_code, self.style_ratio)
        x = self.dict(code).transpose(1, 2)
        dur = None
        if dur_prediction:
            log_dur = self.dur_predictor(x.transpose(1, 2))
            dur = torch.clamp(torch.round(torch.exp(log_dur) - 1).long(), min=1).view(-1)
            x = torch.repeat_interleave(x, dur, dim=2)
        for table, ids in (
            (getattr(self, "f0_dict", None), f0_code),
            (getattr(self, "style_dict", None), style_code),
        ):
            if table is not None:
                e = table(ids).transpose(1, 2)
                x = torch.cat([x, e if dur is None else torch.repeat_interleave(e, dur, dim=2)], 1)
        for table, ident in (
            (getattr(self, "spkr", None), spkr),
            (getattr(self, "style", None), style),
        ):
            if table is not None:
                e = table(torch.tensor([[ident]])).transpose(1, 2)
                x = torch.cat([x, e.expand(-1, -1, x.shape[2])], 1)
        x = self.conv_pre(x)
        n = len(self.cfg["resblock_kernel_sizes"])
        for i, up in enumerate(self.ups):
            x = up(F.leaky_relu(x, 0.1))
            x = sum(self.resblocks[i * n + j](x) for j in range(n)) / n
        return torch.tanh(self.conv_post(F.leaky_relu(x))).squeeze(1)

    def hop(self):
        return math.prod(self.cfg["upsample_rates"])
