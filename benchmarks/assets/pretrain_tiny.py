"""Make `benchmarks/assets/tiny-ssl`: a tiny wav2vec 2.0-shaped encoder with a self-supervised warm start.

LoRA adapts what pre-training learned; on a random-init encoder it has nothing
to adapt, so a quickstart on random weights would only show chance-level EERs.
This script gives the quickstart's encoder a cheap stand-in for SSL
pre-training: from the waveform, predict each frame's log power spectrum (a
target computed from the input itself, as in self-supervised learning), on
bona fide synthetic speech only, drawn with a corpus seed the experiments never
use. No spoofed audio and no detection labels are seen here.

    .venv/bin/python benchmarks/assets/pretrain_tiny.py   # ~2 min on 2 CPU cores, deterministic
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoModel

from metadg.models.backbones import PRESETS
from metadg.tasks.spoof import synthetic

CORPUS_SEED = 1000  # experiments use corpus seed 0; this keeps pre-training data disjoint
N_BANDS = 64
WIN, HOP = 400, 320  # the tiny encoder's receptive field and stride, so frames align


def log_spectrum(waves: torch.Tensor) -> torch.Tensor:
    """(B, T) → (B, frames, N_BANDS) log power in equal-width bands, frame-aligned with the encoder."""
    spec = torch.stft(waves, n_fft=512, hop_length=HOP, win_length=WIN, window=torch.hann_window(WIN),
                      center=False, return_complex=True).abs().pow(2)  # (B, 257, F)
    bands = spec[:, 1:257].reshape(spec.shape[0], N_BANDS, 4, -1).sum(2)
    return torch.log(bands + 1e-8).transpose(1, 2)


def main() -> None:
    """Pre-train and save the encoder as a Hugging Face checkpoint folder."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(Path(__file__).parent / "tiny-ssl"))
    p.add_argument("--steps", type=int, default=1200)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--n-utterances", type=int, default=1200)
    args = p.parse_args()

    torch.manual_seed(0)
    fields = dict(PRESETS["tiny"])
    cfg = AutoConfig.for_model(fields.pop("model_type"), **fields)
    encoder = AutoModel.from_config(cfg)
    data = synthetic.generate_split("train", seed=CORPUS_SEED, n_bonafide=args.n_utterances, n_per_attack=0, attacks=())
    waves = torch.from_numpy(data.waves)
    target = log_spectrum(waves)
    mean, std = target.mean((0, 1)), target.std((0, 1))
    target = (target - mean) / std
    head = nn.Linear(cfg.hidden_size, N_BANDS)
    params = list(encoder.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=args.steps)
    rng = np.random.default_rng(0)
    encoder.train()
    bar = tqdm(range(args.steps), desc="pre-train", unit="step")
    for _ in bar:
        idx = torch.from_numpy(rng.choice(len(waves), args.batch, replace=False))
        hidden = encoder(waves[idx]).last_hidden_state
        frames = min(hidden.shape[1], target.shape[1])
        loss = nn.functional.mse_loss(head(hidden[:, :frames]), target[idx, :frames])
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        bar.set_postfix(mse=f"{loss.item():.3f}")
    out = Path(args.out)
    encoder.save_pretrained(out)
    (out / "PRETRAINING.json").write_text(json.dumps({
        "objective": "frame-level regression of standardised 64-band log power spectra (MSE)",
        "data": f"synthetic bona fide, corpus seed {CORPUS_SEED}, {args.n_utterances} x 1 s",
        "steps": args.steps, "batch": args.batch, "final_mse": round(loss.item(), 4),
    }, indent=2))
    print(f"saved {out} (final MSE {loss.item():.3f}; 1.0 = predicting the band means)")


if __name__ == "__main__":
    main()
