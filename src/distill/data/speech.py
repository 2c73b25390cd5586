"""Spoken digits, offline: clips synthesised with espeak-ng, and log-mel features in plain torch.

Make the data once (about a minute), then train on it like any other dataset::

    bash scripts/get-spoken-digits.sh                  # or: python -m distill.data.speech --out DIR
    distill run configs/spoken_digits.yaml

A *voice* is one espeak-ng accent with one voice variant (e.g. ``en-gb-x-rp+croak``). Splits are
by voice, so no test voice is ever heard in training: held-out speakers are the honest test.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import tempfile
import wave
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from distill.core.errors import DataError
from distill.core.files import atomic_save_tensors, atomic_write_text, cache_home
from distill.data.arrays import (  # make_splits: the one place features are standardised
    DataSplits,
    make_splits,
)
from distill.data.config import DataConfig

DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
ACCENTS = ["en-gb", "en-us", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-rp", "en-gb-x-gbcwmd",
           "en-029", "en-us-nyc"]
VARIANTS = ["m1", "m3", "m5", "f1", "f2", "f4", "croak", "klatt3"]
SPEEDS = [130, 170, 210]  # espeak-ng -s, words per minute
PITCHES = [30, 70]        # espeak-ng -p, 0-99
SAMPLE_RATE = 16000
GET_IT = "bash scripts/get-spoken-digits.sh"
DATA_FILE, MANIFEST = "spoken_digits.safetensors", "manifest.json"


def default_dir() -> Path:
    """$DISTILL_CACHE/spoken_digits, else ~/.cache/distill/spoken_digits (honours $XDG_CACHE_HOME)."""
    return cache_home() / "spoken_digits"


def synthesize(out_dir: Path, accents: list[str] = ACCENTS, variants: list[str] = VARIANTS,
               speeds: list[int] = SPEEDS, pitches: list[int] = PITCHES,
               snr_db: tuple[float, float] = (0.0, 20.0), seed: int = 0, words: list[str] = DIGITS) -> Path:
    """Speak every word (the digits by default; label = its index in `words`) in every voice, speed and
    pitch; add noise; save once to `out_dir`.

    Skips the work when `out_dir` already holds a complete cache (its manifest is written last).
    """
    if (Path(out_dir) / MANIFEST).is_file() and (Path(out_dir) / DATA_FILE).is_file():
        return Path(out_dir)
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise DataError(f"espeak-ng is not installed; run `{GET_IT}` or `apt-get install espeak-ng`.")
    voices = [f"{a}+{v}" for a in accents for v in variants]
    g = torch.Generator().manual_seed(seed)
    waves, labels, voice_ids = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "clip.wav"
        for vi, voice in enumerate(voices):
            for speed in speeds:
                for pitch in pitches:
                    for digit, word in enumerate(words):
                        cmd = [exe, "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(wav), word]
                        done = subprocess.run(cmd, capture_output=True, text=True)
                        if done.returncode != 0:
                            raise DataError(f"espeak-ng failed for voice `{voice}`: {done.stderr.strip()} "
                                            "(list voices with `espeak-ng --voices=en`).")
                        clean = fit_to_length(trim_silence(read_wav(wav)), SAMPLE_RATE, g)
                        snr = float(torch.empty(1).uniform_(*snr_db, generator=g))
                        waves.append(add_noise(clean, snr, g))
                        labels.append(digit)
                        voice_ids.append(vi)
    settings = {"voices": voices, "words": words, "speeds": speeds, "pitches": pitches, "snr_db": list(snr_db),
                "seed": seed, "sample_rate": SAMPLE_RATE, "clips": len(labels)}
    save_clips(Path(out_dir), torch.stack(waves), torch.tensor(labels), torch.tensor(voice_ids), settings)
    return Path(out_dir)


def read_wav(path: Path) -> torch.Tensor:
    """A mono 16-bit wav as float in [-1, 1], resampled to 16 kHz, shape (T,)."""
    with wave.open(str(path), "rb") as w:
        if w.getsampwidth() != 2 or w.getnchannels() != 1:
            raise DataError(f"{path}: expected mono 16-bit PCM, got {w.getnchannels()} channels, "
                            f"{8 * w.getsampwidth()} bits.")
        rate, raw = w.getframerate(), w.readframes(w.getnframes())
    x = torch.frombuffer(bytearray(raw), dtype=torch.int16).float() / 32768.0
    return resample(x, rate, SAMPLE_RATE)


def resample(x: torch.Tensor, rate: int, new_rate: int) -> torch.Tensor:
    """Linear-interpolation resampling of (T,) to round(T·new_rate/rate) samples.

    Downsampling uses torch's antialiased (widened triangle) kernel, so content above the new
    Nyquist frequency new_rate/2 is attenuated instead of folding back into the band.
    """
    if rate == new_rate:
        return x
    n = round(len(x) * new_rate / rate)
    return F.interpolate(x.view(1, 1, 1, -1), size=(1, n), mode="bilinear", antialias=True).flatten()


def trim_silence(x: torch.Tensor, threshold: float = 0.01) -> torch.Tensor:
    """Drop leading and trailing samples with |x| below `threshold` × max|x|."""
    loud = torch.nonzero(x.abs() > threshold * x.abs().max().clamp_min(1e-8)).flatten()
    return x[loud[0]:loud[-1] + 1] if len(loud) else x


def fit_to_length(x: torch.Tensor, length: int, g: torch.Generator) -> torch.Tensor:
    """Peak-normalise to 0.5, then crop the centre or zero-pad at a random offset to `length`."""
    x = 0.5 * x / x.abs().max().clamp_min(1e-8)
    if len(x) >= length:
        start = (len(x) - length) // 2
        return x[start:start + length]
    offset = int(torch.randint(0, length - len(x) + 1, (1,), generator=g))
    return F.pad(x, (offset, length - len(x) - offset))


def add_noise(x: torch.Tensor, snr_db: float, g: torch.Generator) -> torch.Tensor:
    """Add white Gaussian noise of power P_noise = P_speech / 10^(snr_db/10).

    P_speech is the mean square over the non-zero (spoken) samples, so padding does not lower it.
    """
    spoken = x[x != 0]
    p_speech = spoken.pow(2).mean() if len(spoken) else torch.tensor(0.0)
    sigma = math.sqrt(float(p_speech) / 10 ** (snr_db / 10))
    return x + sigma * torch.randn(x.shape, generator=g)


def save_clips(out_dir: Path, waves: torch.Tensor, labels: torch.Tensor, voices: torch.Tensor,
               settings: dict) -> None:
    """Write waves (N, T) as int16, labels and voice ids (N,), then the manifest last."""
    pcm = (waves.clamp(-1, 1) * 32767).round().to(torch.int16)
    tensors = {"waves": pcm, "labels": labels.long(), "voices": voices.long()}
    atomic_save_tensors(out_dir / DATA_FILE, tensors,
                        {"sample_rate": str(settings.get("sample_rate", SAMPLE_RATE))})
    atomic_write_text(out_dir / MANIFEST, json.dumps(settings, indent=2) + "\n")


def mel_edges(sample_rate: int = SAMPLE_RATE, n_mels: int = 40) -> torch.Tensor:
    """The n_mels + 2 filter edges (Hz), evenly spaced in HTK mel between 0 and sample_rate/2.

    mel(f) = 2595·log10(1 + f/700), so f(m) = 700·(10^(m/2595) − 1). Entries 1 … n_mels are the
    filters' centres; entries 0 and n_mels + 1 are the outer feet of the first and last filter.
    """
    top = 2595.0 * math.log10(1.0 + sample_rate / 2.0 / 700.0)
    return 700.0 * (10 ** (torch.linspace(0.0, top, n_mels + 2) / 2595.0) - 1.0)


def mel_filterbank(n_freqs: int, sample_rate: int, n_mels: int) -> torch.Tensor:
    """Triangular HTK mel filters, shape (n_mels, n_freqs), over FFT bins 0 … sample_rate/2.

    Filter m rises linearly from 0 at edge m−1 to 1 at its centre m and falls to 0 at edge m+1
    (edges from `mel_edges`); unnormalised, as in HTK.
    """
    edges = mel_edges(sample_rate, n_mels)
    freqs = torch.linspace(0.0, sample_rate / 2.0, n_freqs)
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rise = (freqs - lo) / (mid - lo)
    fall = (hi - freqs) / (hi - mid)
    return torch.minimum(rise, fall).clamp_min(0.0)


def log_mel(waves: torch.Tensor, sample_rate: int = SAMPLE_RATE, n_fft: int = 400, hop: int = 160,
            n_mels: int = 40) -> torch.Tensor:
    """log(mel · |STFT|² + 1e-6) of waves (N, T), shape (N, n_mels, 1 + T // hop).

    Hann-windowed STFT with centred frames (25 ms windows every 10 ms at 16 kHz); power spectrum;
    HTK mel filterbank.
    """
    fb = mel_filterbank(n_fft // 2 + 1, sample_rate, n_mels)
    window = torch.hann_window(n_fft)
    out = []
    for chunk in waves.float().split(512):  # bounds the complex STFT's memory
        spec = torch.stft(chunk, n_fft, hop_length=hop, window=window, center=True, return_complex=True)
        out.append(torch.log(fb @ spec.abs().pow(2) + 1e-6))  # (B, n_mels, frames)
    return torch.cat(out)


def load_spoken_digits(cfg: DataConfig) -> DataSplits:
    """Log-mel features (N, 1, 40, 101) split by voice, standardised with training statistics."""
    root = Path(cfg.path) if cfg.path else default_dir()
    if not (root / MANIFEST).is_file() or not (root / DATA_FILE).is_file():
        raise DataError(f"spoken digits not found in {root} (no complete {DATA_FILE} + {MANIFEST}); "
                        f"make them with `{GET_IT}` (or `python -m distill.data.speech --out {root}`), "
                        "or set data.path=DIR.")
    t = load_file(root / DATA_FILE)
    waves = t["waves"].float() / 32767.0
    x = log_mel(waves).unsqueeze(1)  # (N, 1, n_mels, frames)
    train_i, val_i, test_i = voice_split(t["voices"], cfg.val_fraction, cfg.test_fraction, cfg.seed)
    splits = make_splits(x, t["labels"].long(), train_i, val_i, test_i, DIGITS)
    splits.num_classes = len(DIGITS)  # ten words, even in a cache that lacks the last ones
    splits.prepare = WavesToInputs(splits.prepare)  # type: ignore[arg-type]
    splits.modality = "audio"
    return splits


class WavesToInputs:
    """16 kHz int16 waves (N, samples) to standardised log-mel inputs, as the dataset's own clips."""

    def __init__(self, standardise: Any):
        self.standardise = standardise

    def __call__(self, raw: Any) -> torch.Tensor:
        waves = torch.as_tensor(raw).float() / 32767.0
        if waves.dim() != 2:
            raise ValueError(f"waves must be (N, samples) at {SAMPLE_RATE} Hz, not {tuple(waves.shape)}")
        return self.standardise(log_mel(waves).unsqueeze(1))


def voice_split(voices: torch.Tensor, val_fraction: float, test_fraction: float, seed: int
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Clip indices (train, val, test) such that each voice falls in exactly one split."""
    ids = torch.unique(voices)
    if len(ids) < 3:
        raise DataError(f"spoken digits: {len(ids)} voice(s); a split by voice needs at least 3.")
    ids = ids[torch.randperm(len(ids), generator=torch.Generator().manual_seed(seed))]
    n_val = max(1, round(len(ids) * val_fraction))
    n_test = max(1, round(len(ids) * test_fraction))
    if n_val + n_test >= len(ids):
        raise DataError(f"spoken digits: val/test fractions leave no training voice of {len(ids)}.")
    groups = ids[n_val + n_test:], ids[:n_val], ids[n_val:n_val + n_test]
    train_i, val_i, test_i = (torch.nonzero(torch.isin(voices, grp)).flatten() for grp in groups)
    return train_i, val_i, test_i


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Synthesise the spoken-digit clips with espeak-ng (once).")
    p.add_argument("--out", type=Path, default=default_dir(),
                   help=f"cache directory (default {default_dir()})")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        out = synthesize(args.out, seed=args.seed)
    except DataError as exc:
        raise SystemExit(f"error: {exc}") from None
    print(f"spoken digits: {json.loads((out / MANIFEST).read_text())['clips']} clips in {out}")


if __name__ == "__main__":
    main()
