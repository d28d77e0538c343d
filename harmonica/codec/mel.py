"""Log-mel analysis and Griffin-Lim synthesis in plain torch (no torchaudio/librosa).

Conventions:
- STFT: periodic Hann window of length ``n_fft``, ``center=True`` with zero ("constant") padding
  so any input length works; magnitude (not power) spectrum.
- Mel filterbank: Slaney mel scale (linear below 1 kHz, log above) with Slaney area
  normalisation, 0 Hz .. Nyquist -- the same as librosa's default ``htk=False, norm="slaney"``.
- Log-mel: ``log(clamp(mel, 1e-5))``.
- Framing: the waveform is zero-padded to ``T_frames * hop`` samples; a centred STFT of that
  yields ``T_frames + 1`` frames and the last one (centred on the padding end) is dropped.
"""

from __future__ import annotations

import math

import torch

LOG_FLOOR = 1e-5

_F_SP = 200.0 / 3.0  # Slaney: Hz per mel below the 1 kHz break
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP
_LOGSTEP = math.log(6.4) / 27.0


def hz_to_mel(hz: torch.Tensor) -> torch.Tensor:
    lin = hz / _F_SP
    log = _MIN_LOG_MEL + torch.log(hz.clamp_min(_MIN_LOG_HZ) / _MIN_LOG_HZ) / _LOGSTEP
    return torch.where(hz >= _MIN_LOG_HZ, log, lin)


def mel_to_hz(mel: torch.Tensor) -> torch.Tensor:
    lin = mel * _F_SP
    log = _MIN_LOG_HZ * torch.exp(_LOGSTEP * (mel - _MIN_LOG_MEL))
    return torch.where(mel >= _MIN_LOG_MEL, log, lin)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int) -> torch.Tensor:
    """Slaney-normalised triangular filters ``[n_mels, n_fft // 2 + 1]`` (float64)."""
    fft_hz = torch.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1, dtype=torch.float64)
    edges = torch.linspace(0.0, 1.0, n_mels + 2, dtype=torch.float64)
    mel_hz = mel_to_hz(edges * hz_to_mel(torch.tensor(sample_rate / 2.0, dtype=torch.float64)))
    width = mel_hz.diff()  # [n_mels + 1]
    ramps = mel_hz[:, None] - fft_hz[None, :]  # [n_mels + 2, n_freq]
    lower = -ramps[:-2] / width[:-1, None]
    upper = ramps[2:] / width[1:, None]
    fb = torch.clamp(torch.minimum(lower, upper), min=0.0)  # [n_mels, n_freq]
    fb *= (2.0 / (mel_hz[2:] - mel_hz[:-2]))[:, None]  # area normalisation
    if (fb.max(dim=1).values <= 0).any():
        raise ValueError(f"n_mels={n_mels} too large for n_fft={n_fft}: some mel filters are empty")
    return fb


class MelAnalyzer:
    """Waveform -> log-mel frames and back (Griffin-Lim), for one fixed set of settings."""

    def __init__(self, sample_rate: int, n_fft: int, hop_length: int, n_mels: int) -> None:
        if hop_length > n_fft // 2:
            raise ValueError(
                f"hop_length={hop_length} > n_fft//2={n_fft // 2}: Griffin-Lim needs >= 2x overlap"
            )
        self.sample_rate, self.n_fft, self.hop, self.n_mels = sample_rate, n_fft, hop_length, n_mels
        self.window = torch.hann_window(n_fft, periodic=True)  # [n_fft]
        fb64 = mel_filterbank(sample_rate, n_fft, n_mels)  # [n_mels, n_freq]
        self.fb = fb64.float()
        # minimum-norm least-squares inverse, computed once in float64 for stability
        self.fb_pinv = torch.linalg.pinv(fb64).float()  # [n_freq, n_mels]

    def _stft(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stft(
            x, self.n_fft, self.hop, window=self.window, center=True, pad_mode="constant",
            return_complex=True,
        )

    def _istft(self, spec: torch.Tensor, length: int) -> torch.Tensor:
        return torch.istft(spec, self.n_fft, self.hop, window=self.window, center=True, length=length)

    def log_mel(self, wav: torch.Tensor) -> torch.Tensor:
        """``[T_samples]`` -> ``[ceil(T/hop), n_mels]`` log-mel frames."""
        n = -(-wav.shape[-1] // self.hop)
        x = torch.nn.functional.pad(wav, (0, n * self.hop - wav.shape[-1]))  # [n*hop]
        mag = self._stft(x)[:, :n].abs()  # [n_freq, n]; drop the frame centred on the pad end
        mel = self.fb @ mag  # [n_mels, n]
        return torch.log(mel.clamp_min(LOG_FLOOR)).t().contiguous()  # [n, n_mels]

    def magnitude(self, log_mel: torch.Tensor, nnls_iters: int = 0) -> torch.Tensor:
        """Log-mel ``[T, n_mels]`` -> linear magnitude ``[n_freq, T]`` (pinv, clamped >= 0).

        ``nnls_iters`` > 0 refines with projected gradient on ``||fb @ S - mel||^2, S >= 0``.
        """
        mel = torch.exp(log_mel).t()  # [n_mels, T]
        mag = (self.fb_pinv @ mel).clamp_min(0.0)  # [n_freq, T]
        if nnls_iters:
            step = 1.0 / torch.linalg.matrix_norm(self.fb, ord=2).pow(2)
            for _ in range(nnls_iters):
                grad = self.fb.t() @ (self.fb @ mag - mel)  # [n_freq, T]
                mag = (mag - step * grad).clamp_min(0.0)
        return mag

    def griffin_lim(
        self, mag: torch.Tensor, iters: int, seed: int, momentum: float = 0.99
    ) -> torch.Tensor:
        """Fast Griffin-Lim (Perraudin et al. 2013): ``[n_freq, T]`` -> waveform ``[T * hop]``."""
        n = mag.shape[1]
        length = n * self.hop
        # one extra frame (a copy of the last) is centred on the end sample, mirroring analysis
        spec = torch.cat([mag, mag[:, -1:]], dim=1)  # [n_freq, T + 1]
        gen = torch.Generator().manual_seed(int(seed))
        phase = torch.rand(spec.shape, generator=gen) * (2 * math.pi)
        angles = torch.polar(torch.ones_like(spec), phase)  # [n_freq, T + 1] complex
        prev = torch.zeros_like(angles)
        for _ in range(iters):
            rebuilt = self._stft(self._istft(spec * angles, length))  # [n_freq, T + 1]
            angles = rebuilt - prev * (momentum / (1.0 + momentum))
            angles = angles / angles.abs().clamp_min(1e-16)
            prev = rebuilt
        return self._istft(spec * angles, length)  # [T * hop]
