"""Spoken digits: log-mel features, the mel filterbank, noise, resampling and the split by voice."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import torch

from distill.core.errors import DataError
from distill.data.config import DataConfig
from distill.data.datasets import load_data
from distill.data.speech import (
    DIGITS,
    add_noise,
    log_mel,
    mel_edges,
    mel_filterbank,
    resample,
    save_clips,
    synthesize,
    voice_split,
)


def sine(freq: float, seconds: float = 1.0, rate: int = 16000) -> torch.Tensor:
    t = torch.arange(int(seconds * rate)) / rate
    return 0.5 * torch.sin(2 * math.pi * freq * t)


@pytest.mark.parametrize("freq", [440.0, 1000.0, 3150.0, 6000.0])
def test_a_sine_peaks_in_the_mel_bin_centred_nearest_it(freq):
    feats = log_mel(sine(freq)[None])  # (1, 40, frames)
    centres = mel_edges()[1:-1]
    assert int(feats[0].mean(dim=1).argmax()) == int((centres - freq).abs().argmin())


def test_one_second_gives_40_mels_by_101_frames():
    assert log_mel(torch.zeros(3, 16000)).shape == (3, 40, 101)  # 1 + 16000 // 160 centred frames


def test_silence_is_log_of_the_floor():
    assert torch.allclose(log_mel(torch.zeros(1, 1600)), torch.tensor(math.log(1e-6)))


def test_filterbank_is_non_negative_triangles_covering_the_band():
    fb = mel_filterbank(201, 16000, 40)  # (n_mels, n_freqs), bins every 40 Hz up to 8 kHz
    assert fb.shape == (40, 201)
    assert (fb >= 0).all() and (fb <= 1).all()
    assert (fb.sum(dim=1) > 0).all()  # no empty filter
    centres = mel_edges()[1:-1]
    freqs = torch.linspace(0, 8000, 201)
    inside = (freqs >= centres[0]) & (freqs <= centres[-1])
    assert (fb[:, inside].sum(dim=0) > 0).all()  # every bin between the outer centres is heard
    assert (fb.argmax(dim=0)[inside].diff() >= 0).all()  # filters are ordered by frequency


def test_noise_has_the_requested_snr():
    x = sine(1000.0)
    noisy = add_noise(x, 10.0, torch.Generator().manual_seed(0))
    snr = 10 * math.log10(float(x.pow(2).mean() / (noisy - x).pow(2).mean()))
    assert snr == pytest.approx(10.0, abs=0.2)


def test_resampling_keeps_duration_and_pitch():
    t = torch.arange(22050) / 22050
    y = resample(torch.sin(2 * math.pi * 1000 * t), 22050, 16000)
    assert len(y) == 16000
    spectrum = torch.fft.rfft(y).abs()  # 1 Hz per bin for a 1 s clip
    assert int(spectrum.argmax()) == 1000


def test_voice_split_puts_each_voice_in_exactly_one_split():
    voices = torch.arange(20).repeat_interleave(7)
    parts = voice_split(voices, 0.1, 0.2, seed=3)
    heard = [set(voices[p].tolist()) for p in parts]
    assert [len(h) for h in heard] == [14, 2, 4]
    assert not (heard[0] & heard[1] or heard[0] & heard[2] or heard[1] & heard[2])
    assert sorted(torch.cat(parts).tolist()) == list(range(len(voices)))


def fake_cache(root: Path, n_voices: int = 10, per_voice: int = 6) -> torch.Tensor:
    """Voice v speaks a sine at mel centre 4v + 2, so a clip's peak mel bin names its voice."""
    centres = mel_edges()[1:-1]
    g = torch.Generator().manual_seed(0)
    waves, labels, voices = [], [], []
    for v in range(n_voices):
        for i in range(per_voice):
            tone = sine(float(centres[4 * v + 2]), 0.1) * (0.2 + 0.1 * i)
            waves.append(tone + 0.001 * torch.randn(1600, generator=g))
            labels.append(i % 10)
            voices.append(v)
    save_clips(root, torch.stack(waves), torch.tensor(labels), torch.tensor(voices), {"clips": len(labels)})
    return torch.tensor(voices)


def test_load_splits_by_voice_and_standardises(tmp_path: Path):
    fake_cache(tmp_path)
    d = load_data(DataConfig(name="spoken_digits", path=tmp_path, val_fraction=0.1, test_fraction=0.2))
    assert d.input_shape == (1, 40, 11) and d.num_classes == 10 and d.class_names == DIGITS
    assert (len(d.train), len(d.val), len(d.test)) == (42, 6, 12)  # 7, 1 and 2 whole voices
    x = d.train.inputs
    assert abs(float(x.mean())) < 1e-4 and float(x.std()) == pytest.approx(1.0, abs=1e-3)

    def voices_in(split) -> set[int]:
        return {int(b) // 4 for b in split.inputs[:, 0].mean(dim=2).argmax(dim=1)}

    train, val, test = voices_in(d.train), voices_in(d.val), voices_in(d.test)
    assert (len(train), len(val), len(test)) == (7, 1, 2)
    assert not (train & test or train & val or val & test)


def test_missing_cache_names_the_path_and_the_command(tmp_path: Path):
    with pytest.raises(DataError) as exc:
        load_data(DataConfig(name="spoken_digits", path=tmp_path / "nowhere"))
    msg = str(exc.value)
    assert str(tmp_path / "nowhere") in msg and "bash scripts/get-spoken-digits.sh" in msg


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs the espeak-ng binary")
def test_synthesize_with_espeak_ng_then_skip_when_complete(tmp_path: Path):
    out = synthesize(tmp_path, accents=["en-us", "en-gb"], variants=["m1", "f2"], speeds=[170],
                     pitches=[50])
    data = out / "spoken_digits.safetensors"
    stamp = data.stat().st_mtime_ns
    d = load_data(DataConfig(name="spoken_digits", path=out, val_fraction=0.25, test_fraction=0.25))
    assert len(d.train) + len(d.val) + len(d.test) == 40 and d.input_shape == (1, 40, 101)
    synthesize(tmp_path, accents=["en-us"])  # complete: nothing is regenerated
    assert data.stat().st_mtime_ns == stamp
